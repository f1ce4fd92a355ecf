"""Composite search: components must match within the same element."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import LOINC, UCUM, create, ids, observation, run

pytestmark = pytest.mark.django_db


def mmhg(value: float) -> dict:
    return {"value": value, "system": UCUM, "code": "mm[Hg]", "unit": "mmHg"}


def bp(oid: str, systolic: float, diastolic: float) -> dict:
    return observation(
        oid,
        code="85354-9",
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": mmhg(systolic)},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": mmhg(diastolic)},
        ],
    )


@pytest.fixture
def observations() -> None:
    create(bp("bp-high-sys", 150, 80))
    create(bp("bp-high-dia", 110, 95))
    create(observation("sys-120", code="8480-6", valueQuantity=mmhg(120)))
    create(observation("hr-120", code="8867-4", valueQuantity={"value": 120, "system": UCUM, "code": "/min"}))
    create(
        observation(
            "smoker",
            code="72166-2",
            valueCodeableConcept={"coding": [{"system": "http://snomed.info/sct", "code": "449868002"}]},
        )
    )


def test_code_value_quantity_on_the_observation(observations):
    assert ids("Observation", f"code-value-quantity={LOINC}|8480-6$gt100") == {"sys-120"}
    assert ids("Observation", f"code-value-quantity={LOINC}|8867-4$lt100") == set()
    assert ids("Observation", f"code-value-quantity=8867-4$120|{UCUM}|/min") == {"hr-120"}


def test_components_must_come_from_the_same_component(observations):
    assert ids("Observation", f"component-code-value-quantity={LOINC}|8480-6$gt140") == {"bp-high-sys"}
    assert ids("Observation", f"component-code-value-quantity={LOINC}|8462-4$gt90") == {"bp-high-dia"}
    # bp-high-sys has a component above 100 (systolic 150), but its diastolic is 80.
    assert ids("Observation", f"component-code-value-quantity={LOINC}|8462-4$gt100") == set()
    assert ids("Observation", f"component-code-value-quantity={LOINC}|8480-6$gt90") == {
        "bp-high-sys",
        "bp-high-dia",
    }


def test_or_and_and(observations):
    assert ids("Observation", f"code-value-quantity={LOINC}|8480-6$gt100,{LOINC}|8867-4$gt100") == {
        "sys-120",
        "hr-120",
    }
    assert ids(
        "Observation",
        f"component-code-value-quantity={LOINC}|8480-6$gt140&component-code-value-quantity={LOINC}|8462-4$lt90",
    ) == {"bp-high-sys"}


def test_token_token_composite(observations):
    assert ids("Observation", "code-value-concept=72166-2$http://snomed.info/sct|449868002") == {"smoker"}
    assert ids("Observation", "code-value-concept=8480-6$449868002") == set()


def test_missing(observations):
    assert ids("Observation", "code-value-quantity:missing=false") == {"sys-120", "hr-120"}


def test_wrong_number_of_components_is_400(observations):
    with pytest.raises(FhirError) as error:
        run("Observation", "code-value-quantity=8480-6")
    assert error.value.status == 400
    assert "code-value-quantity" in str(error.value)
