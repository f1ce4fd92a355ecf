"""Quantity search: number|system|code, number||code (code or unit), prefixes, precision."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import UCUM, create, ids, observation, run

pytestmark = pytest.mark.django_db


def weight(oid: str, value, code: str = "kg", unit: str | None = None, system: str = UCUM) -> dict:
    quantity = {"value": value, "system": system, "code": code}
    if unit:
        quantity["unit"] = unit
    return observation(oid, code="29463-7", valueQuantity=quantity)


@pytest.fixture
def weights() -> None:
    create(weight("w-70", 70, unit="kilogram"))
    create(weight("w-70.4", 70.4))
    create(weight("w-80", 80))
    create(weight("w-70-lb", 70, code="[lb_av]", unit="lb"))
    create(weight("w-70-other", 70, system="http://example.org/units"))
    create(observation("w-none", code="29463-7"))


def test_number_only(weights):
    assert ids("Observation", "value-quantity=70") == {"w-70", "w-70.4", "w-70-lb", "w-70-other"}


def test_with_system_and_code(weights):
    assert ids("Observation", f"value-quantity=70|{UCUM}|kg") == {"w-70", "w-70.4"}
    assert ids("Observation", f"value-quantity=70.0|{UCUM}|kg") == {"w-70"}


def test_without_system_matches_code_or_unit(weights):
    assert ids("Observation", "value-quantity=70||kg") == {"w-70", "w-70.4", "w-70-other"}
    assert ids("Observation", "value-quantity=70||lb") == {"w-70-lb"}
    assert ids("Observation", "value-quantity=70||kilogram") == {"w-70"}


def test_prefixes(weights):
    assert ids("Observation", f"value-quantity=gt70|{UCUM}|kg") == {"w-70.4", "w-80"}
    assert ids("Observation", f"value-quantity=le70.4|{UCUM}|kg") == {"w-70", "w-70.4"}
    assert ids("Observation", f"value-quantity=lt75|{UCUM}|kg,ge80|{UCUM}|kg") == {"w-70", "w-70.4", "w-80"}


def test_missing(weights):
    assert ids("Observation", "value-quantity:missing=true") == {"w-none"}


@pytest.mark.parametrize("value", ["x|http://unitsofmeasure.org|kg", "70|kg", "gx70", "70|a|b|c"])
def test_bad_quantities_are_400(value, weights):
    with pytest.raises(FhirError) as error:
        run("Observation", f"value-quantity={value}")
    assert error.value.status == 400
    assert "value-quantity" in str(error.value)
