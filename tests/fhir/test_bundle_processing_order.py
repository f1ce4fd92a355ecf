"""Transaction processing order (DELETE, POST, PUT/PATCH, GET) and answers in request order."""

from __future__ import annotations

import base64
import json

import pytest

from integrations.fhir.models import ResourceVersion

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def put(client, resource: dict) -> None:
    response = client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", json.dumps(resource), content_type=FHIR_JSON
    )
    assert response.status_code in (200, 201), response.content


def version_row(resource_type: str, logical_id: str, version_id: int) -> int:
    return ResourceVersion.objects.get(
        resource_type=resource_type, logical_id=logical_id, version_id=version_id
    ).pk


def test_entries_run_in_spec_order_and_are_answered_in_request_order(api_client):
    put(api_client, {"resourceType": "Patient", "id": "to-delete"})
    put(api_client, {"resourceType": "Patient", "id": "to-update", "gender": "unknown"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/to-update"}},
            {
                "resource": {"resourceType": "Patient", "id": "to-update", "gender": "female"},
                "request": {"method": "PUT", "url": "Patient/to-update"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "Patient/to-update"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "DELETE", "url": "Patient/to-delete"}},
        ],
    }

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "200 OK", "201 Created", "200 OK"]
    # The GET, first in the request, ran after the PUT.
    assert entries[0]["resource"]["meta"]["versionId"] == "2"
    assert entries[0]["resource"]["gender"] == "female"
    assert entries[1]["response"]["location"] == "Patient/to-update/_history/2"
    assert entries[3]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[3]["response"]["etag"] == 'W/"2"'
    observation_id = entries[2]["resource"]["id"]
    # Version rows are numbered in write order: DELETE, then POST, then PUT.
    deleted = version_row("Patient", "to-delete", 2)
    created = version_row("Observation", observation_id, 1)
    updated = version_row("Patient", "to-update", 2)
    assert deleted < created < updated
    assert api_client.get("/fhir/Patient/to-delete").status_code == 410


def test_put_creates_with_the_client_id_or_updates(api_client):
    put(api_client, {"resourceType": "Patient", "id": "known", "active": False})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "known", "active": True},
                "request": {"method": "PUT", "url": "Patient/known"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "brand-new"},
                "request": {"method": "PUT", "url": "Patient/brand-new"},
            },
        ],
    }

    entries = post_bundle(api_client, bundle).json()["entry"]

    assert [e["response"]["status"] for e in entries] == ["200 OK", "201 Created"]
    assert entries[0]["resource"]["active"] is True
    assert entries[0]["response"]["etag"] == 'W/"2"'
    assert entries[1]["response"]["location"] == "Patient/brand-new/_history/1"


def test_patch_entries_apply_a_json_patch_sent_as_binary(api_client):
    put(api_client, {"resourceType": "Patient", "id": "patched", "active": False})
    patch = [{"op": "replace", "path": "/active", "value": True}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
                "request": {"method": "PATCH", "url": "Patient/patched"},
            }
        ],
    }

    entries = post_bundle(api_client, bundle).json()["entry"]

    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["resource"]["active"] is True
    assert entries[0]["resource"]["meta"]["versionId"] == "2"


def test_a_batch_is_answered_in_request_order(api_client):
    families = [f"Family{i:02d}" for i in range(12)]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": f}]},
                "request": {"method": "POST", "url": "Patient"},
            }
            for f in families
        ],
    }

    entries = post_bundle(api_client, bundle).json()["entry"]

    assert [e["resource"]["name"][0]["family"] for e in entries] == families


def test_a_transaction_may_act_on_each_resource_once(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "twice"},
                "request": {"method": "PUT", "url": "Patient/twice"},
            },
            {"request": {"method": "DELETE", "url": "Patient/twice"}},
        ],
    }

    response = post_bundle(api_client, bundle)

    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert "Bundle.entry[0]" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[1].request.url"]


def test_a_search_entry_finds_what_the_same_transaction_created(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient?identifier=http://example.org/mrn|ORDER-1"}},
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "http://example.org/mrn", "value": "ORDER-1"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }

    entries = post_bundle(api_client, bundle).json()["entry"]

    searchset = entries[0]["resource"]
    assert searchset["type"] == "searchset"
    assert [e["resource"]["id"] for e in searchset["entry"]] == [entries[1]["resource"]["id"]]
