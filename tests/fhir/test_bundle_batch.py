"""Batch Bundles: every entry runs on its own; a failure is that entry's answer only."""

from __future__ import annotations

import json

import pytest

from integrations.fhir.models import ResourceRecord

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def patient(family: str, **extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


def test_batch_applies_the_good_entries_and_answers_each_failure(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient("Ok"), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "effectiveDateTime": "yesterday",
                    "code": {"text": "x"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": patient("Put", id="batch-put-1"),
                "request": {"method": "PUT", "url": "Patient/batch-put-1"},
            },
            {"request": {"method": "DELETE", "url": "Patient/also-unknown"}},
        ],
    }

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200
    body = response.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "batch-response"
    statuses = [entry["response"]["status"] for entry in body["entry"]]
    assert statuses == ["201 Created", "404 Not Found", "400 Bad Request", "201 Created", "404 Not Found"]
    created = body["entry"][0]
    assert created["resource"]["name"] == [{"family": "Ok"}]
    assert created["response"]["location"] == f"Patient/{created['resource']['id']}/_history/1"
    assert created["response"]["etag"] == 'W/"1"'
    assert created["response"]["lastModified"] == created["resource"]["meta"]["lastUpdated"]
    invalid = body["entry"][2]["response"]["outcome"]
    assert invalid["resourceType"] == "OperationOutcome"
    assert any(
        "Observation.effectiveDateTime" in issue.get("expression", []) for issue in invalid["issue"]
    ), invalid
    assert "does-not-exist" in body["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "resource" not in body["entry"][1]
    assert set(ResourceRecord.objects.values_list("resource_type", "logical_id")) == {
        ("Patient", created["resource"]["id"]),
        ("Patient", "batch-put-1"),
    }


def test_batch_reads_see_earlier_entries_and_return_the_resource(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": patient("Reader", id="batch-read"),
                "request": {"method": "PUT", "url": "Patient/batch-read"},
            },
            {"request": {"method": "GET", "url": "Patient/batch-read"}},
            {"request": {"method": "HEAD", "url": "Patient/batch-read"}},
        ],
    }

    body = post_bundle(api_client, bundle).json()

    read = body["entry"][1]
    assert read["response"]["status"] == "200 OK"
    assert read["response"]["etag"] == 'W/"1"'
    assert read["resource"]["name"] == [{"family": "Reader"}]
    assert read["fullUrl"] == "http://testserver/fhir/Patient/batch-read"
    assert body["entry"][2]["response"]["status"] == "200 OK"
    assert "resource" not in body["entry"][2]


def test_batch_entries_cannot_reference_each_other(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": "urn:uuid:7d6e3d4c-0000-4000-8000-000000000001",
                "resource": patient("Linked"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:7d6e3d4c-0000-4000-8000-000000000001"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }

    body = post_bundle(api_client, bundle).json()

    assert body["entry"][0]["response"]["status"] == "201 Created"
    failed = body["entry"][1]["response"]
    assert failed["status"] == "400 Bad Request"
    issue = failed["outcome"]["issue"][0]
    assert issue["expression"] == ["Observation.subject.reference"]
    assert "Bundle.entry[0]" in issue["diagnostics"]
    assert "transaction" in issue["diagnostics"]
    assert ResourceRecord.objects.filter(resource_type="Observation").count() == 0


def test_batch_entries_are_authorised_one_by_one(db):
    from btt_health.api_auth.services import create_api_client
    from tests.conftest import BearerClient

    _, token = create_api_client("bundle-reader", "reader")
    reader = BearerClient(token)
    ResourceRecord.objects.all().delete()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/nobody"}},
            {"resource": patient("Denied"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }

    body = post_bundle(reader, bundle).json()

    assert [entry["response"]["status"] for entry in body["entry"]] == ["404 Not Found", "403 Forbidden"]
    assert body["entry"][1]["response"]["outcome"]["issue"][0]["code"] == "forbidden"
    assert ResourceRecord.objects.count() == 0


def test_batch_entry_with_a_type_mismatch_fails_alone(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient("Mismatch"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": patient("Fine"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }

    body = post_bundle(api_client, bundle).json()

    first = body["entry"][0]["response"]
    assert first["status"] == "400 Bad Request"
    assert first["outcome"]["issue"][0]["expression"] == ["Bundle.entry[0].resource.resourceType"]
    assert body["entry"][1]["response"]["status"] == "201 Created"
