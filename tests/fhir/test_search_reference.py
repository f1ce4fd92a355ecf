"""Reference search: id, Type/id, absolute URLs, :[type], :identifier, :missing, canonicals."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import BASE, create, ids, observation, patient, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def graph() -> None:
    create(patient("p1", "Chalmers"))
    create(patient("p2", "Other"))
    create({"resourceType": "Group", "id": "p1", "type": "person", "actual": True})
    create(observation("o1", subject="Patient/p1"))
    create(observation("o2", subject="Patient/p2"))
    create(observation("o3", subject="Group/p1"))
    create(
        observation("o4", subject=None) | {"subject": {"identifier": {"system": "urn:mrn", "value": "123"}}}
    )
    create(observation("o5", subject=f"{BASE}/Patient/p2"))
    create(observation("o6"))


def test_type_and_id(graph):
    assert ids("Observation", "subject=Patient/p1") == {"o1"}
    assert ids("Observation", "subject=Group/p1") == {"o3"}
    assert ids("Observation", "subject=Patient/p1/_history/1") == {"o1"}


def test_bare_id_matches_any_target_type(graph):
    assert ids("Observation", "subject=p1") == {"o1", "o3"}


def test_type_modifier(graph):
    assert ids("Observation", "subject:Patient=p1") == {"o1"}
    assert ids("Observation", "subject:Group=p1") == {"o3"}


def test_type_specific_parameter(graph):
    assert ids("Observation", "patient=p1") == {"o1"}


def test_absolute_url_of_this_server_matches_relative_references(graph):
    assert ids("Observation", f"subject={BASE}/Patient/p2") == {"o2", "o5"}
    assert ids("Observation", "subject=Patient/p2") == {"o2", "o5"}
    assert ids("Observation", "subject=http://elsewhere.org/fhir/Patient/p1") == set()


def test_identifier_modifier(graph):
    assert ids("Observation", "subject:identifier=urn:mrn|123") == {"o4"}
    assert ids("Observation", "subject:identifier=123") == {"o4"}
    assert ids("Observation", "subject:identifier=urn:other|123") == set()


def test_missing_and_or(graph):
    assert ids("Observation", "subject:missing=true") == {"o6"}
    assert ids("Observation", "subject=Patient/p1,Group/p1") == {"o1", "o3"}


def test_modifier_that_is_not_a_target_type_is_400(graph):
    with pytest.raises(FhirError) as error:
        run("Observation", "subject:Organization=1")
    assert error.value.status == 400
    with pytest.raises(FhirError):
        run("Observation", "subject:Patient=Group/p1")


def test_canonical_reference_ignores_version():
    create(
        {
            "resourceType": "QuestionnaireResponse",
            "id": "qr1",
            "status": "completed",
            "questionnaire": "http://acme.org/Questionnaire/phq9|2.0",
        }
    )
    assert ids("QuestionnaireResponse", "questionnaire=http://acme.org/Questionnaire/phq9") == {"qr1"}
    assert ids("QuestionnaireResponse", "questionnaire=http://acme.org/Questionnaire/phq9|2.0") == {"qr1"}
