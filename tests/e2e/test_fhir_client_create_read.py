"""Create and read resources with fhirpy, a FHIR client from PyPI, against a running stack.

Only the `e2e_base_url` and `e2e_token` fixtures are used (through the fhirpy fixtures of
`conftest.py` built on them), and only over HTTP, so these tests run the same against the stack of
the test harness and against one started the README's way.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

pytestmark = pytest.mark.e2e

MRN_SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"


def _new_patient(client: SyncFHIRClient, mrn: str):
    return client.resource(
        "Patient",
        identifier=[{"system": MRN_SYSTEM, "value": mrn}],
        name=[{"use": "official", "family": "Okonkwo", "given": ["Chiamaka", "Ada"]}],
        gender="female",
        birthDate="1984-02-29",
        active=True,
        telecom=[{"system": "phone", "value": "+44 20 7946 0018", "use": "mobile"}],
    )


def test_create_assigns_id_and_version_then_read_returns_the_same_resource(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    mrn = uuid.uuid4().hex
    patient = _new_patient(fhir_client, mrn)
    before = datetime.now(UTC) - timedelta(seconds=5)

    patient.save()

    created = responses[-1]
    assert created.status_code == 201, created.text
    assert created.headers["Content-Type"].startswith("application/fhir+json")
    assert patient.id, "the server assigns an id"
    assert patient["meta"]["versionId"] == "1"
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/Patient/{patient.id}/_history/1")
    last_updated = datetime.fromisoformat(patient["meta"]["lastUpdated"].replace("Z", "+00:00"))
    assert before <= last_updated <= datetime.now(UTC) + timedelta(seconds=5)

    read = fhir_client.reference("Patient", patient.id).to_resource()
    assert responses[-1].status_code == 200
    assert responses[-1].headers["ETag"] == 'W/"1"'
    assert read.serialize() == patient.serialize()
    assert read["identifier"] == [{"system": MRN_SYSTEM, "value": mrn}]
    assert read["birthDate"] == "1984-02-29"

    as_dict = fhir_client.get("Patient", patient.id)
    assert as_dict["name"][0]["given"] == ["Chiamaka", "Ada"]


def test_update_makes_a_new_version_and_the_old_one_stays_readable(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    patient = _new_patient(fhir_client, uuid.uuid4().hex)
    patient.save()

    patient["name"][0]["family"] = "Okonkwo-Adeyemi"
    patient.save()
    assert responses[-1].status_code == 200
    assert patient["meta"]["versionId"] == "2"

    current = fhir_client.reference("Patient", patient.id).to_resource()
    assert current["name"][0]["family"] == "Okonkwo-Adeyemi"
    first = fhir_client.execute(f"Patient/{patient.id}/_history/1", method="get")
    assert first["meta"]["versionId"] == "1"
    assert first["name"][0]["family"] == "Okonkwo"


def test_observation_referencing_the_patient_reads_back_with_its_reference(
    fhir_client: SyncFHIRClient,
) -> None:
    patient = _new_patient(fhir_client, uuid.uuid4().hex)
    patient.save()
    observation = fhir_client.resource(
        "Observation",
        status="final",
        category=[
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        subject=patient.to_reference(),
        effectiveDateTime="2024-05-01T08:30:00+02:00",
        valueQuantity={
            "value": 72,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    )
    observation.save()

    read = fhir_client.reference("Observation", observation.id).to_resource()
    assert read["subject"]["reference"] == f"Patient/{patient.id}"
    assert read["valueQuantity"]["value"] == 72
    assert read["effectiveDateTime"] == "2024-05-01T08:30:00+02:00"
    # fhirpy resolves the reference with a second read.
    assert read["subject"].to_resource()["id"] == patient.id


def test_unknown_and_deleted_resources_are_not_found_with_an_operation_outcome(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    with pytest.raises(ResourceNotFound):
        fhir_client.get("Patient", f"no-such-{uuid.uuid4().hex[:20]}")
    assert responses[-1].status_code == 404
    assert responses[-1].json()["resourceType"] == "OperationOutcome"

    patient = _new_patient(fhir_client, uuid.uuid4().hex)
    patient.save()
    patient.delete()
    with pytest.raises(ResourceNotFound):
        fhir_client.get("Patient", patient.id)
    assert responses[-1].status_code == 410
    assert responses[-1].json()["resourceType"] == "OperationOutcome"


def test_async_client_creates_and_reads_too(
    fhir_base_url: str, e2e_token: str, fhir_client: SyncFHIRClient
) -> None:
    async def create_and_read() -> tuple[str, str]:
        async_client = AsyncFHIRClient(fhir_base_url, authorization=f"Bearer {e2e_token}")
        patient = async_client.resource(
            "Patient", name=[{"family": "Nakamura", "given": ["Haruto"]}], gender="male"
        )
        await patient.save()
        read = await async_client.reference("Patient", patient.id).to_resource()
        return patient.id, read["name"][0]["family"]

    patient_id, family = asyncio.run(create_and_read())
    assert family == "Nakamura"
    # What the async client wrote, the sync client reads.
    assert fhir_client.get("Patient", patient_id)["gender"] == "male"
