"""The request's Prefer header applies to every entry of a Bundle."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def mixed(kind: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "id": "pref-1"},
                "request": {"method": "PUT", "url": "Patient/pref-1"},
            },
        ],
    }


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_return_minimal_leaves_out_the_resources(api_client, kind):
    response = post_bundle(api_client, mixed(kind), Prefer="return=minimal")

    assert response.status_code == 200, response.content
    for entry in response.json()["entry"]:
        assert "resource" not in entry
        assert entry["response"]["status"] == "201 Created"
        assert entry["response"]["location"].endswith("/_history/1")
        assert entry["response"]["etag"] == 'W/"1"'


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_return_operation_outcome_answers_an_outcome_per_entry(api_client, kind):
    response = post_bundle(api_client, mixed(kind), Prefer="return=OperationOutcome")

    for entry in response.json()["entry"]:
        assert "resource" not in entry
        assert entry["response"]["outcome"]["issue"][0]["severity"] == "information"


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_by_default_the_resources_are_returned(api_client, kind):
    entries = post_bundle(api_client, mixed(kind)).json()["entry"]

    assert [e["resource"]["resourceType"] for e in entries] == ["Patient", "Patient"]
    assert entries[1]["resource"]["id"] == "pref-1"
