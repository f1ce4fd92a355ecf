"""Number search: implicit precision for eq/ne, exact comparisons for gt/lt/ge/le, ap, errors."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, ids, patient, run

pytestmark = pytest.mark.django_db


def risk(rid: str, probability) -> dict:
    body = {
        "resourceType": "RiskAssessment",
        "id": rid,
        "status": "final",
        "subject": {"reference": "Patient/p"},
    }
    if probability is not None:
        body["prediction"] = [{"probabilityDecimal": probability}]
    return body


@pytest.fixture
def risks() -> None:
    create(patient("p"))
    create(risk("r-100", 100))
    create(risk("r-100.4", 100.4))
    create(risk("r-99.4", 99.4))
    create(risk("r-0.25", 0.25))
    create(risk("r-120", 120))
    create(risk("r-none", None))


def test_eq_uses_the_precision_of_the_search_value(risks):
    assert ids("RiskAssessment", "probability=100") == {"r-100", "r-100.4"}
    assert ids("RiskAssessment", "probability=100.0") == {"r-100"}
    assert ids("RiskAssessment", "probability=1e2") == {"r-100", "r-100.4", "r-99.4", "r-120"}
    assert ids("RiskAssessment", "probability=0.25") == {"r-0.25"}


def test_comparisons_are_exact(risks):
    assert ids("RiskAssessment", "probability=gt100") == {"r-100.4", "r-120"}
    assert ids("RiskAssessment", "probability=ge100") == {"r-100", "r-100.4", "r-120"}
    assert ids("RiskAssessment", "probability=lt100") == {"r-99.4", "r-0.25"}
    assert ids("RiskAssessment", "probability=le100") == {"r-100", "r-99.4", "r-0.25"}
    assert ids("RiskAssessment", "probability=gt99&probability=lt101") == {"r-100", "r-100.4", "r-99.4"}


def test_ne_and_ap(risks):
    assert ids("RiskAssessment", "probability=ne100") == {"r-99.4", "r-0.25", "r-120"}
    # ap: within 10% of the value.
    assert ids("RiskAssessment", "probability=ap115") == {"r-120"}
    assert ids("RiskAssessment", "probability=ap105") == {"r-100", "r-100.4", "r-99.4"}


def test_missing(risks):
    assert ids("RiskAssessment", "probability:missing=true") == {"r-none"}


@pytest.mark.parametrize("value", ["abc", "gt", "1,2.x", "zz100", "10e"])
def test_bad_numbers_are_400(value, risks):
    with pytest.raises(FhirError) as error:
        run("RiskAssessment", f"probability={value}")
    assert error.value.status == 400
    assert "probability" in str(error.value)


def test_range_values_with_an_open_end():
    create(patient("p"))
    body = risk("r-range", None)
    body["prediction"] = [{"probabilityRange": {"low": {"value": 10}}}]
    create(body)
    create(risk("r-5", 5))
    # A Range compares by its low value (its `value` in the index); the open end is stored as infinity.
    assert ids("RiskAssessment", "probability=gt7") == {"r-range"}
    assert ids("RiskAssessment", "probability=lt7") == {"r-5"}
