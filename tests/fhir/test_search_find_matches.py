"""find_matches: the strict matcher behind conditional create, update and delete."""

from __future__ import annotations

import pytest

from integrations.fhir import search, store
from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, patient

pytestmark = pytest.mark.django_db


@pytest.fixture
def patients() -> None:
    create(patient("p1", "Smith", identifier=[{"system": "urn:mrn", "value": "1"}]))
    create(patient("p2", "Smith", identifier=[{"system": "urn:mrn", "value": "2"}]))
    create(patient("p3", "Gone", identifier=[{"system": "urn:mrn", "value": "3"}]))
    store.delete_resource("Patient", "p3")


def found(query: list[tuple[str, str]]) -> set[str]:
    return set(search.find_matches("Patient", query).values_list("logical_id", flat=True))


def test_matches_without_deleted_resources(patients):
    assert found([("identifier", "urn:mrn|1")]) == {"p1"}
    assert found([("family", "smith")]) == {"p1", "p2"}
    assert found([("identifier", "urn:mrn|3")]) == set()


def test_result_parameters_have_no_effect(patients):
    assert found([("family", "smith"), ("_count", "1"), ("_sort", "-_id")]) == {"p1", "p2"}


def test_unknown_parameters_are_400(patients):
    with pytest.raises(FhirError) as error:
        search.find_matches("Patient", [("nonsense", "1")])
    assert error.value.status == 400


def test_conditional_create_uses_the_index(patients):
    result = store.create_resource(
        {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}]},
        if_none_exist="identifier=urn:mrn|1",
    )
    assert result.existing
    assert result.stored.logical_id == "p1"
    result = store.create_resource(
        {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "9"}]},
        if_none_exist="identifier=urn:mrn|9",
    )
    assert result.created
    assert found([("identifier", "urn:mrn|9")]) == {result.stored.logical_id}
