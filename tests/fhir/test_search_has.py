"""Reverse chaining with _has, nested _has, and its errors."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import LOINC, create, ids, observation, patient, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def graph() -> None:
    for pid in ("p1", "p2", "p3"):
        create(patient(pid))
    create(observation("o1", code="1234-5", subject="Patient/p1"))
    create(observation("o2", code="9999-9", subject="Patient/p2"))
    create(observation("o3", code="1234-5", subject="Patient/p3", status="cancelled"))
    create(
        {
            "resourceType": "DiagnosticReport",
            "id": "dr",
            "status": "final",
            "code": {"text": "panel"},
            "result": [{"reference": "Observation/o2"}],
        }
    )


def test_has(graph):
    assert ids("Patient", "_has:Observation:patient:code=1234-5") == {"p1", "p3"}
    assert ids("Patient", f"_has:Observation:subject:code={LOINC}|9999-9") == {"p2"}


def test_has_and_has(graph):
    assert ids("Patient", "_has:Observation:patient:code=1234-5&_has:Observation:patient:status=final") == {
        "p1"
    }


def test_has_or_values(graph):
    assert ids("Patient", "_has:Observation:patient:code=1234-5,9999-9") == {"p1", "p2", "p3"}


def test_nested_has(graph):
    assert ids("Patient", "_has:Observation:patient:_has:DiagnosticReport:result:status=final") == {"p2"}


def test_has_with_modifier(graph):
    assert ids("Patient", "_has:Observation:patient:status:not=final") == {"p3"}


@pytest.mark.parametrize(
    "name",
    [
        "_has:Observation:patient",
        "_has:Nope:patient:code",
        "_has:Observation:code:code",
        "_has:Observation:foo:code",
    ],
)
def test_bad_has_is_400(name, graph):
    with pytest.raises(FhirError) as error:
        run("Patient", f"{name}=1")
    assert error.value.status == 400
