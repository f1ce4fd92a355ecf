"""Parameters with subsets: `name` holds `family` and `given`, `address` holds `address-city`,
`-state`, `-postalcode` and `-country` (`searchparams.SUBSET_PARAMS`).

Their index rows keep only the values no subset holds, and a search on them reads the subsets'
rows too. These tests check the subset claims against the definitions' own expressions, that the
repeats are not written, that every kind of string search on them (plain, :exact, :contains, OR,
:missing, _sort, phonetic through `name`) finds what it found when every value had a row of its
own, and the migration that removes repeats written before.
"""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from integrations.fhir.models.search_index import StringIndex
from integrations.fhir.searchparams import SUBSET_PARAMS, extract_search_values, search_params_for
from tests.fhir.test_search_support import create, ids, match_ids, run

pytestmark = pytest.mark.django_db

NAMES = [
    {"use": "official", "family": "Chalmers", "given": ["Peter", "James"], "prefix": ["Mr."]},
    {"text": "Jimmy Chémers", "suffix": ["Jr"], "given": ["Jim"]},
]
ADDRESS = {
    "line": ["534 Erewhon St", "Flat 2"],
    "city": "PleasantVille",
    "district": "Rainbow",
    "state": "Vic",
    "postalCode": "3999",
    "country": "AUS",
    "text": "534 Erewhon St, PleasantVille",
}


def sample(resource_type: str, logical_id: str, **content) -> dict:
    resource = {"resourceType": resource_type, "id": logical_id, **content}
    if resource_type == "RelatedPerson":  # required: whose related person
        resource["patient"] = {"reference": "Patient/patient-full"}  # created first
    return resource


def samples() -> list[dict]:
    out = []
    for resource_type, subsets in SUBSET_PARAMS.items():
        if resource_type == "Location":  # one address
            content: dict = {"address": ADDRESS}
        elif resource_type == "InsurancePlan":  # its contacts' addresses
            content = {"contact": [{"address": ADDRESS}]}
        else:
            content = {"address": [ADDRESS]}
        if "name" in subsets:
            content["name"] = NAMES
        out.append(sample(resource_type, f"{resource_type.lower()}-full", **content))
    return out


def test_subsets_hold_only_values_of_the_parameter_they_belong_to():
    """Against the R4 definitions: every value of a subset is a value of its parameter, and
    every parameter named is a string parameter of that type."""
    for resource in samples():
        resource_type = resource["resourceType"]
        params = search_params_for(resource_type)
        values = extract_search_values(resource)
        for code, subsets in SUBSET_PARAMS[resource_type].items():
            assert params[code].type == "string", (resource_type, code)
            for subset in subsets:
                assert params[subset].type == "string", (resource_type, subset)
                assert values.get(subset), (resource_type, subset)  # the sample exercises it
                assert set(values[subset]) <= set(values[code]), (resource_type, code, subset)


def test_indexed_values_leave_out_what_the_subsets_hold():
    patient = sample("Patient", "p", name=NAMES, address=[ADDRESS])
    indexed = extract_search_values(patient, indexed=True)
    assert sorted(v.value for v in indexed["name"]) == ["Jimmy Chémers", "Jr", "Mr."]
    assert sorted(v.value for v in indexed["address"]) == [
        "534 Erewhon St",
        "534 Erewhon St, PleasantVille",
        "Flat 2",
        "Rainbow",
    ]
    everything = extract_search_values(patient)
    held = {v for code in ("family", "given", "name") for v in indexed.get(code, [])}
    assert held == set(everything["name"])
    # Without any value of its own, the parameter has no rows at all.
    bare = extract_search_values(sample("Patient", "q", name=[{"family": "Doe"}]), indexed=True)
    assert "name" not in bare
    assert [v.value for v in bare["family"]] == ["Doe"]


@pytest.fixture
def people() -> None:
    for resource in samples():
        create(resource)
    for resource_type in ("Patient", "Practitioner"):
        create(sample(resource_type, f"{resource_type.lower()}-bare"))
        create(sample(resource_type, f"{resource_type.lower()}-family", name=[{"family": "Chalfont"}]))


def test_no_row_repeats_a_subset_value(people):
    rows = StringIndex.objects.filter(resource_type="Patient", record__logical_id="patient-full")
    by_param = {}
    for param, exact in rows.values_list("param", "exact"):
        by_param.setdefault(param, set()).add(exact)
    assert by_param["name"] == {"Jimmy Chémers", "Jr", "Mr."}
    assert by_param["given"] == {"Peter", "James", "Jim"}
    assert by_param["address-city"] == {"PleasantVille"}
    assert "PleasantVille" not in by_param["address"]


@pytest.mark.parametrize("resource_type", ["Patient", "Practitioner"])
def test_name_searches_find_every_part(people, resource_type):
    full, family = f"{resource_type.lower()}-full", f"{resource_type.lower()}-family"
    assert ids(resource_type, "name=chal") == {full, family}
    assert ids(resource_type, "name=peter") == {full}  # a given name: only in `given` rows
    assert ids(resource_type, "name=jimmy%20chem") == {full}  # the text: only in `name` rows
    assert ids(resource_type, "name=mr") == {full}  # a prefix
    assert ids(resource_type, "name:exact=Chalfont") == {family}
    assert ids(resource_type, "name:exact=chalfont") == set()
    assert ids(resource_type, "name:contains=alfo") == {family}
    assert ids(resource_type, "name=nobody,james") == {full}
    assert ids(resource_type, "phonetic=chalf") == {family}
    assert ids(resource_type, "name:missing=true") == {f"{resource_type.lower()}-bare"}
    assert ids(resource_type, "name:missing=false") == {full, family}
    # The lowest of each: "Chalfont" < "Chalmers"; then the one without a name.
    assert match_ids(run(resource_type, "_sort=name")) == [family, full, f"{resource_type.lower()}-bare"]


@pytest.mark.parametrize("resource_type", sorted(SUBSET_PARAMS))
def test_address_searches_find_every_part(people, resource_type):
    full = f"{resource_type.lower()}-full"
    for query in ("=pleasant", "=3999", "=aus", "=vic", "=534%20erew", "=rainbow", ":exact=Flat%202"):
        assert ids(resource_type, f"address{query}") == {full}, query
    assert ids(resource_type, "address-city=pleasant") == {full}
    assert ids(resource_type, "address=nowhere") == set()


def test_the_migration_removes_repeats_written_before(people):
    """Rows as earlier versions wrote them (`name` repeating `family`) go; others stay."""
    record_id = StringIndex.objects.filter(record__logical_id="patient-family").values_list(
        "record_id", flat=True
    )[0]
    StringIndex.objects.create(
        record_id=record_id,
        resource_type="Patient",
        param="name",
        group_no=0,
        value="chalfont",
        exact="Chalfont",
    )
    kept = StringIndex.objects.filter(param="name", exact="Jimmy Chémers").count()
    migration = importlib.import_module("integrations.fhir.migrations.0010_subset_param_rows")
    with connection.cursor() as cursor:
        for statement in migration._statements():
            cursor.execute(statement)
    assert not StringIndex.objects.filter(record_id=record_id, param="name").exists()
    assert StringIndex.objects.filter(record_id=record_id, param="family").exists()
    assert StringIndex.objects.filter(param="name", exact="Jimmy Chémers").count() == kept
