"""Search with `_include` and `_revinclude` through fhirpy against a running stack.

A fresh Patient with a handful of Observations is made for each test, so the searches only see
what the test wrote whatever else the server holds.
"""

from __future__ import annotations

import uuid

import pytest
from fhirpy import SyncFHIRClient

pytestmark = pytest.mark.e2e

LOINC = "http://loinc.org"
VITALS = [
    ("8867-4", "Heart rate", 64, "/min"),
    ("9279-1", "Respiratory rate", 16, "/min"),
    ("8310-5", "Body temperature", 36.8, "Cel"),
    ("29463-7", "Body weight", 71.2, "kg"),
    ("8302-2", "Body height", 176.5, "cm"),
]


@pytest.fixture
def patient_with_observations(fhir_client: SyncFHIRClient) -> tuple[str, set[str]]:
    """A new Patient and the ids of the Observations written about them."""
    patient = fhir_client.resource(
        "Patient",
        identifier=[{"system": "urn:btt:e2e:mrn", "value": uuid.uuid4().hex}],
        name=[{"family": "Lindqvist", "given": ["Astrid"]}],
        gender="female",
        birthDate="1957-11-02",
    )
    patient.save()
    observation_ids = set()
    for day, (code, display, value, unit) in enumerate(VITALS, start=1):
        observation = fhir_client.resource(
            "Observation",
            status="final",
            code={"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            subject={"reference": f"Patient/{patient.id}"},
            effectiveDateTime=f"2023-06-{day:02d}T10:00:00Z",
            valueQuantity={"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        )
        observation.save()
        observation_ids.add(observation.id)
    return patient.id, observation_ids


def _entries_by_mode(bundle: dict) -> dict[str, list[dict]]:
    modes: dict[str, list[dict]] = {}
    for entry in bundle.get("entry", []):
        mode = entry.get("search", {}).get("mode", "match")
        modes.setdefault(mode, []).append(entry["resource"])
    return modes


def test_observations_of_a_patient_include_the_patient(
    fhir_client: SyncFHIRClient, patient_with_observations: tuple[str, set[str]]
) -> None:
    patient_id, observation_ids = patient_with_observations

    bundle = (
        fhir_client.resources("Observation")
        .search(subject=f"Patient/{patient_id}")
        .include("Observation", "subject")
        .limit(50)
        .fetch_raw()
    )

    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    modes = _entries_by_mode(bundle)
    assert {r["id"] for r in modes.get("match", [])} == observation_ids
    assert all(r["resourceType"] == "Observation" for r in modes["match"])
    included = modes.get("include", [])
    assert [(r["resourceType"], r["id"]) for r in included] == [("Patient", patient_id)]
    if "total" in bundle:
        assert bundle["total"] == len(observation_ids), "total counts matches only, not includes"

    # fhirpy's fetch() keeps the searched type only.
    fetched = (
        fhir_client.resources("Observation")
        .search(patient=patient_id)
        .include("Observation", "patient")
        .limit(50)
        .fetch()
    )
    assert {o.id for o in fetched} == observation_ids


def test_include_with_a_target_type_and_paging_keeps_the_patient_on_each_page(
    fhir_client: SyncFHIRClient, patient_with_observations: tuple[str, set[str]]
) -> None:
    patient_id, observation_ids = patient_with_observations

    seen: set[str] = set()
    pages = 0
    bundle: dict | None = (
        fhir_client.resources("Observation")
        .search(subject=f"Patient/{patient_id}")
        .include("Observation", "subject", "Patient")
        .limit(2)
        .fetch_raw()
    )
    while bundle is not None:
        pages += 1
        assert pages <= len(observation_ids), "paging does not end"
        modes = _entries_by_mode(bundle)
        seen |= {r["id"] for r in modes.get("match", [])}
        assert [r["id"] for r in modes.get("include", [])] == [patient_id]
        next_url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
        bundle = fhir_client.execute(next_url, method="get") if next_url else None
    assert seen == observation_ids
    assert pages == 3


def test_patient_revinclude_brings_its_observations(
    fhir_client: SyncFHIRClient, patient_with_observations: tuple[str, set[str]]
) -> None:
    patient_id, observation_ids = patient_with_observations

    bundle = (
        fhir_client.resources("Patient")
        .search(_id=patient_id)
        .revinclude("Observation", "subject")
        .limit(50)
        .fetch_raw()
    )

    modes = _entries_by_mode(bundle)
    assert [(r["resourceType"], r["id"]) for r in modes.get("match", [])] == [("Patient", patient_id)]
    included = modes.get("include", [])
    assert {r["id"] for r in included} == observation_ids
    assert all(r["resourceType"] == "Observation" for r in included)
    assert all(r["subject"]["reference"] == f"Patient/{patient_id}" for r in included)
    if "total" in bundle:
        assert bundle["total"] == 1


def test_search_without_matches_includes_nothing(fhir_client: SyncFHIRClient) -> None:
    bundle = (
        fhir_client.resources("Observation")
        .search(subject=f"Patient/no-such-{uuid.uuid4().hex[:16]}")
        .include("Observation", "subject")
        .fetch_raw()
    )
    assert bundle["resourceType"] == "Bundle"
    assert bundle.get("entry", []) == []
