"""The store's writes on PostgreSQL: record, version and index rows in one statement; `savepoint=False`.

The ORM path (SQLite) writes the same rows; these check what the one-statement path could get wrong:
index rows written earlier in the same transaction replaced by a later version, the version row a
copy of the record's columns, a deletion clearing the rows, and a write without a savepoint.
"""

from __future__ import annotations

import pytest
from django.db import transaction
from django.db.transaction import TransactionManagementError

from integrations.fhir import lookup, store
from integrations.fhir.models import ResourceRecord, ResourceVersion
from integrations.fhir.models.search_index import StringIndex, TokenIndex
from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import ids

pytestmark = pytest.mark.django_db


def _patient(family: str, mrn: str) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": mrn}],
        "name": [{"family": family, "given": ["Ann"]}],
        "birthDate": "1970-01-01",
    }


def test_create_then_update_in_one_transaction_replaces_the_index_rows() -> None:
    with transaction.atomic():
        created = store.create_resource(_patient("Alpha", "A-1")).stored
        updated = store.update_resource(
            "Patient", created.logical_id, {**_patient("Beta", "B-1"), "id": created.logical_id}
        ).stored

    assert updated.version_id == 2
    assert ids("Patient", "family=alpha") == set()
    assert ids("Patient", "identifier=urn:mrn|A-1") == set()
    assert ids("Patient", "family=beta") == {created.logical_id}
    assert ids("Patient", "identifier=urn:mrn|B-1") == {created.logical_id}
    record = ResourceRecord.objects.get(resource_type="Patient", logical_id=created.logical_id)
    # Only the current version's rows: one identifier, one family (as written once, not twice).
    assert TokenIndex.objects.filter(record=record, param="identifier").count() == 1
    assert list(
        StringIndex.objects.filter(record=record, param="family").values_list("exact", flat=True)
    ) == ["Beta"]
    versions = list(ResourceVersion.objects.filter(record=record).order_by("version_id"))
    assert [(v.version_id, v.method) for v in versions] == [(1, "POST"), (2, "PUT")]
    assert versions[1].text == record.text == updated.text
    assert (versions[1].resource_type, versions[1].logical_id, versions[1].last_updated) == (
        "Patient",
        created.logical_id,
        record.last_updated,
    )
    assert store.vread_resource("Patient", created.logical_id, "1").as_dict()["name"][0]["family"] == "Alpha"


def test_delete_clears_the_index_rows_and_keeps_the_versions() -> None:
    created = store.create_resource(_patient("Gamma", "G-1")).stored
    store.delete_resource("Patient", created.logical_id)

    record = ResourceRecord.objects.get(resource_type="Patient", logical_id=created.logical_id)
    assert (record.deleted, record.version_id, record.text) == (True, 2, "")
    assert not TokenIndex.objects.filter(record=record).exists()
    assert not StringIndex.objects.filter(record=record).exists()
    assert lookup.find_by_identifiers("Patient", [("urn:mrn", "G-1")]) == []
    versions = ResourceVersion.objects.filter(record=record).order_by("version_id")
    assert list(versions.values_list("version_id", "method", "text")) == [
        (1, "POST", created.text),
        (2, "DELETE", ""),
    ]


def test_a_write_with_a_savepoint_lets_the_caller_go_on_after_an_error() -> None:
    with transaction.atomic():
        with pytest.raises(FhirError):
            store.create_resource({"resourceType": "Patient", "gender": 12})
        kept = store.create_resource(_patient("Delta", "D-1")).stored

    assert ids("Patient", "family=delta") == {kept.logical_id}


def test_a_write_without_a_savepoint_spoils_the_callers_transaction_on_an_error() -> None:
    with transaction.atomic():
        with pytest.raises(FhirError):
            store.create_resource({"resourceType": "Patient", "gender": 12}, savepoint=False)
        # Nothing more may be done in the transaction: it can only be rolled back (which leaving
        # the block does).
        assert transaction.get_rollback()
        with pytest.raises(TransactionManagementError):
            store.create_resource(_patient("Epsilon", "E-1"), savepoint=False)

    assert ids("Patient", "family=epsilon") == set()


def test_lookup_with_locks_finds_what_the_search_finds() -> None:
    first = store.create_resource(_patient("Zeta", "Z-1")).stored.logical_id
    second = store.create_resource(
        {
            **_patient("Zeta", "Z-2"),
            "identifier": [{"system": "urn:other", "value": "Z-1"}, {"system": "urn:mrn", "value": "Z-2"}],
        }
    ).stored.logical_id

    with transaction.atomic():
        rows = lookup.find_by_identifiers(
            "Patient", [("urn:mrn", "Z-1"), (None, "Z-2")], locks=[[("identifier", "urn:mrn|Z-1")]]
        )

    assert rows == [(first, "urn:mrn", "Z-1"), (second, "urn:mrn", "Z-2")]
    assert ids("Patient", "identifier=urn:mrn|Z-1") == {first}
    assert ids("Patient", "identifier=Z-1") == {first, second}
