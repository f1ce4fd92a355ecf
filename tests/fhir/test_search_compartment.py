"""Compartment search (`Patient/123/Observation?...`): search_bundle(..., compartment=...)."""

from __future__ import annotations

import pytest

from integrations.fhir import search
from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import BASE, create, link, match_ids, observation, params_of, patient

pytestmark = pytest.mark.django_db


@pytest.fixture
def chart() -> None:
    create(patient("p1"))
    create(patient("p2"))
    create({"resourceType": "Practitioner", "id": "doc"})
    create(observation("o1", subject="Patient/p1"))
    create(observation("o2", subject="Patient/p2"))
    create(observation("o3", code="other", subject="Patient/p1"))
    create(observation("o4", subject="Patient/p2", performer=[{"reference": "Patient/p1"}]))


def compartment_search(resource_type: str, query: str, pid: str = "p1") -> dict:
    return search.search_bundle(
        resource_type, params_of(query), base_url=BASE, strict=False, compartment=("Patient", pid)
    )


def test_members_of_the_compartment_only(chart):
    assert set(match_ids(compartment_search("Observation", ""))) == {"o1", "o3", "o4"}
    assert set(match_ids(compartment_search("Observation", "code=8867-4"))) == {"o1", "o4"}
    assert set(match_ids(compartment_search("Observation", "", pid="p2"))) == {"o2", "o4"}


def test_types_outside_the_compartment_match_nothing(chart):
    assert match_ids(compartment_search("Practitioner", "")) == []


def test_self_link_names_the_compartment(chart):
    bundle = compartment_search("Observation", "code=8867-4")
    assert link(bundle, "self") == f"{BASE}/Patient/p1/Observation?code=8867-4"


def test_other_compartments_are_not_supported(chart):
    with pytest.raises(FhirError) as error:
        search.search_bundle("Observation", [], base_url=BASE, strict=False, compartment=("Encounter", "e1"))
    assert error.value.status == 400
