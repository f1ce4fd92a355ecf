"""Transactions are all or nothing: any failing entry leaves the database as it was."""

from __future__ import annotations

import json
import re

import pytest

from integrations.fhir.models import ResourceRecord, ResourceVersion

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"
PATIENT_URN = "urn:uuid:3f1c2b9a-1111-4aaa-8bbb-000000000001"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def observation(subject: str, value: float = 1.0, **extra) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": value, "unit": "/min"},
        **extra,
    }


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_transaction_creates_everything_and_answers_each_entry(api_client):
    bundle = transaction(
        {
            "fullUrl": PATIENT_URN,
            "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": observation(PATIENT_URN, 70), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(PATIENT_URN, 71), "request": {"method": "POST", "url": "Observation"}},
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == 3
    for entry in body["entry"]:
        result = entry["response"]
        assert result["status"] == "201 Created"
        resource = entry["resource"]
        assert result["location"] == f"{resource['resourceType']}/{resource['id']}/_history/1"
        assert result["etag"] == 'W/"1"'
        assert result["lastModified"] == resource["meta"]["lastUpdated"]
        assert entry["fullUrl"] == f"http://testserver/fhir/{resource['resourceType']}/{resource['id']}"
    patient_id = body["entry"][0]["resource"]["id"]
    assert body["entry"][1]["resource"]["subject"] == {"reference": f"Patient/{patient_id}"}
    assert ResourceRecord.objects.count() == 3
    assert ResourceVersion.objects.count() == 3
    stored = api_client.get(f"/fhir/{body['entry'][2]['response']['location'].rsplit('/_history', 1)[0]}")
    assert stored.json() == body["entry"][2]["resource"]


def test_an_invalid_entry_rolls_back_the_whole_transaction(api_client):
    bundle = transaction(
        {
            "fullUrl": PATIENT_URN,
            "resource": {"resourceType": "Patient", "name": [{"family": "Gone"}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": observation(PATIENT_URN), "request": {"method": "POST", "url": "Observation"}},
        {
            "resource": observation(PATIENT_URN, effectiveDateTime="yesterday"),
            "request": {"method": "POST", "url": "Observation"},
        },
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["diagnostics"].startswith("Bundle.entry[2]: ")
    assert issue["expression"] == ["Bundle.entry[2].resource.effectiveDateTime"]
    assert ResourceRecord.objects.count() == 0
    assert ResourceVersion.objects.count() == 0


def test_a_failing_update_undoes_deletes_and_creates_already_done(api_client):
    keep = api_client.put(
        "/fhir/Patient/keep-me",
        json.dumps({"resourceType": "Patient", "id": "keep-me"}),
        content_type=FHIR_JSON,
    )
    other = api_client.put(
        "/fhir/Patient/other", json.dumps({"resourceType": "Patient", "id": "other"}), content_type=FHIR_JSON
    )
    assert (keep.status_code, other.status_code) == (201, 201)
    bundle = transaction(
        {"request": {"method": "DELETE", "url": "Patient/keep-me"}},
        {"resource": observation("Patient/other"), "request": {"method": "POST", "url": "Observation"}},
        {
            "resource": {"resourceType": "Patient", "id": "other", "gender": "male"},
            "request": {"method": "PUT", "url": "Patient/other", "ifMatch": 'W/"7"'},
        },
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 412
    issue = response.json()["issue"][0]
    assert issue["diagnostics"].startswith("Bundle.entry[2]: ")
    assert api_client.get("/fhir/Patient/keep-me").status_code == 200
    assert api_client.get("/fhir/Patient/other").json()["meta"]["versionId"] == "1"
    assert ResourceRecord.objects.filter(resource_type="Observation").count() == 0
    assert ResourceVersion.objects.count() == 2


def test_a_failing_read_fails_the_transaction(api_client):
    bundle = transaction(
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/not-there"}},
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 404
    issue = response.json()["issue"][0]
    assert re.match(r"^Bundle\.entry\[1\]: .*not-there", issue["diagnostics"])
    assert issue["expression"] == ["Bundle.entry[1]"]
    assert ResourceRecord.objects.count() == 0


def test_a_forbidden_entry_fails_the_transaction_before_anything_is_written(db):
    from btt_health.api_auth.services import create_api_client
    from tests.conftest import BearerClient

    _, token = create_api_client("bundle-reader", "reader")
    bundle = transaction(
        {"request": {"method": "GET", "url": "Patient?name=x"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
    )

    response = post_bundle(BearerClient(token), bundle)

    assert response.status_code == 403
    assert response.json()["issue"][0]["diagnostics"].startswith("Bundle.entry[1]: ")
    assert ResourceRecord.objects.count() == 0


def test_a_concurrent_create_of_the_same_id_answers_409_and_writes_nothing(api_client, monkeypatch):
    api_client.put(
        "/fhir/Patient/raced", json.dumps({"resourceType": "Patient", "id": "raced"}), content_type=FHIR_JSON
    )
    # As if another request created Patient/raced between our id check and our insert.
    monkeypatch.setattr("integrations.fhir.store.existing_ids", lambda resource_type, ids: set())
    bundle = transaction(
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {"resourceType": "Patient", "id": "raced"},
            "request": {"method": "PUT", "url": "Patient/raced"},
        },
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 409
    assert response.json()["issue"][0]["code"] == "conflict"
    assert ResourceRecord.objects.count() == 1
    assert ResourceVersion.objects.count() == 1
