"""Chained parameters: subject:Patient.name, subject.name across target types, multi-level."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, ids, observation, outcome_issues, patient, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def graph() -> None:
    create({"resourceType": "Organization", "id": "acme", "name": "Acme Health"})
    create({"resourceType": "Organization", "id": "other", "name": "Other Clinic"})
    create(patient("peter", "Peterson", managingOrganization={"reference": "Organization/acme"}))
    create(patient("paul", "Paulson", managingOrganization={"reference": "Organization/other"}))
    create({"resourceType": "Location", "id": "ward", "name": "Peter Ward"})
    create(observation("o-peter", subject="Patient/peter"))
    create(observation("o-paul", subject="Patient/paul"))
    create(observation("o-ward", subject="Location/ward"))


def test_chain_with_type(graph):
    assert ids("Observation", "subject:Patient.name=peter") == {"o-peter"}
    assert ids("Observation", "subject:Patient.family=PAUL") == {"o-paul"}


def test_chain_without_type_tries_every_target_type_defining_the_parameter(graph):
    assert ids("Observation", "subject.name=peter") == {"o-peter", "o-ward"}


def test_chain_on_type_specific_reference(graph):
    assert ids("Observation", "patient.name=peter,paul") == {"o-peter", "o-paul"}


def test_multi_level_chain(graph):
    assert ids("Observation", "subject:Patient.organization.name=acme") == {"o-peter"}
    assert ids("Observation", "subject:Patient.organization.name=other") == {"o-paul"}
    assert ids("Observation", "subject:Patient.organization._id=acme") == {"o-peter"}


def test_chain_ending_in_token_with_modifier(graph):
    assert ids("Observation", "subject:Patient._id:not=peter") == {"o-paul"}
    assert ids("Observation", "patient.name:exact=Peterson") == {"o-peter"}


def test_unknown_chained_parameter_is_ignored_or_400(graph):
    bundle = run("Observation", "subject:Patient.nonsense=1")
    assert {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"} == {
        "o-peter",
        "o-paul",
        "o-ward",
    }
    assert "subject:Patient.nonsense" in outcome_issues(bundle)[0]["diagnostics"]
    with pytest.raises(FhirError) as error:
        run("Observation", "subject:Patient.nonsense=1", strict=True)
    assert error.value.status == 400


def test_chaining_a_non_reference_parameter_is_400(graph):
    with pytest.raises(FhirError) as error:
        run("Observation", "code.name=x")
    assert error.value.status == 400
