"""Token search: code, system|code, |code, system|, :not, :text, :missing, _id, OR and AND."""

from __future__ import annotations

import pytest

from tests.fhir.test_search_support import LOINC, create, ids, observation

pytestmark = pytest.mark.django_db

SCT = "http://snomed.info/sct"


@pytest.fixture
def observations() -> None:
    create(observation("o-loinc", code="1234-5"))
    create(observation("o-sct", code="1234-5", system=SCT))
    create(
        {
            "resourceType": "Observation",
            "id": "o-nosys",
            "status": "final",
            "code": {"coding": [{"code": "1234-5"}], "text": "Systolic blood pressure"},
        }
    )
    create(observation("o-other", code="9999-9", status="preliminary"))
    create(
        {
            "resourceType": "Observation",
            "id": "o-text",
            "status": "amended",
            "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Blood Pressure Systolic"}]},
        }
    )


def test_code_alone_matches_any_system(observations):
    assert ids("Observation", "code=1234-5") == {"o-loinc", "o-sct", "o-nosys"}


def test_system_and_code(observations):
    assert ids("Observation", f"code={LOINC}|1234-5") == {"o-loinc"}


def test_empty_system_means_no_system(observations):
    assert ids("Observation", "code=|1234-5") == {"o-nosys"}


def test_system_only(observations):
    assert ids("Observation", f"code={SCT}|") == {"o-sct"}


def test_comma_is_or(observations):
    assert ids("Observation", f"code={SCT}|1234-5,9999-9") == {"o-sct", "o-other"}


def test_repeated_parameter_is_and(observations):
    assert ids("Observation", "code=1234-5&status=final") == {"o-loinc", "o-sct", "o-nosys"}
    assert ids("Observation", "code=9999-9&code=1234-5") == set()


def test_not_excludes_resources_with_a_matching_token(observations):
    assert ids("Observation", "status:not=final") == {"o-other", "o-text"}
    assert ids("Observation", "code:not=1234-5") == {"o-other", "o-text"}


def test_text_matches_display_and_concept_text_case_insensitively(observations):
    assert ids("Observation", "code:text=blood") == {"o-text", "o-nosys"}
    assert ids("Observation", "code:text=SYSTOLIC") == {"o-text", "o-nosys"}
    assert ids("Observation", "code:text=pressure systolic") == {"o-text"}


def test_missing(observations):
    create({"resourceType": "Observation", "id": "o-nocat", "status": "final", "code": {"text": "x"}})
    create(observation("o-cat", category=[{"coding": [{"code": "vital-signs"}]}]))
    assert ids("Observation", "category:missing=false") == {"o-cat"}
    assert ids("Observation", "category:missing=true") == {
        "o-loinc",
        "o-sct",
        "o-nosys",
        "o-other",
        "o-text",
        "o-nocat",
    }


def test_id_parameter(observations):
    assert ids("Observation", "_id=o-sct,o-other") == {"o-sct", "o-other"}
    assert ids("Observation", "_id=o-sct&code=9999-9") == set()


def test_identifier_and_boolean_tokens():
    create(
        {
            "resourceType": "Patient",
            "id": "p1",
            "active": True,
            "identifier": [{"system": "urn:mrn", "value": "A1"}],
        }
    )
    create(
        {
            "resourceType": "Patient",
            "id": "p2",
            "active": False,
            "identifier": [{"system": "urn:x", "value": "A1"}],
        }
    )
    assert ids("Patient", "identifier=urn:mrn|A1") == {"p1"}
    assert ids("Patient", "identifier=A1") == {"p1", "p2"}
    assert ids("Patient", "active=true") == {"p1"}


def test_escaped_separators_are_literal():
    create({"resourceType": "Patient", "id": "p-esc", "identifier": [{"system": "urn:x", "value": "a|b,c"}]})
    assert ids("Patient", r"identifier=urn:x|a\|b\,c") == {"p-esc"}


def test_deleted_and_updated_resources_are_searched_as_they_are_now(observations):
    from integrations.fhir import store

    store.delete_resource("Observation", "o-sct")
    create(observation("o-loinc", code="7777-7"))
    assert ids("Observation", "code=1234-5") == {"o-nosys"}
    assert ids("Observation", "code=7777-7") == {"o-loinc"}
