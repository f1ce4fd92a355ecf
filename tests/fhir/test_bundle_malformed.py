"""Bundles the server refuses as a whole, each with an OperationOutcome naming what is wrong."""

from __future__ import annotations

import json

import pytest

from integrations.fhir.models import ResourceRecord

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def the_issue(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def new_patient() -> dict:
    return {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}


def test_the_body_must_be_a_bundle(api_client):
    issue = the_issue(post_bundle(api_client, {"resourceType": "Patient"}), 400)

    assert "Bundle" in issue["diagnostics"]


@pytest.mark.parametrize("bundle_type", ["collection", "document", "searchset", None])
def test_only_batch_and_transaction_are_processed(api_client, bundle_type):
    issue = the_issue(
        post_bundle(api_client, {"resourceType": "Bundle", "type": bundle_type, "entry": [new_patient()]}),
        400,
    )

    assert issue["expression"] == ["Bundle.type"]
    assert ResourceRecord.objects.count() == 0


@pytest.mark.parametrize("kind", ["batch", "transaction"])
@pytest.mark.parametrize(
    ("request_part", "expression"),
    [
        ({"method": "POST"}, "Bundle.entry[1].request.url"),
        ({"method": "POST", "url": ""}, "Bundle.entry[1].request.url"),
        ({"url": "Patient"}, "Bundle.entry[1].request.method"),
        ({"method": "FETCH", "url": "Patient"}, "Bundle.entry[1].request.method"),
        (None, "Bundle.entry[1].request"),
    ],
)
def test_every_entry_needs_request_method_and_url(api_client, kind, request_part, expression):
    broken = {"resource": {"resourceType": "Patient"}}
    if request_part is not None:
        broken["request"] = request_part
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [new_patient(), broken]}

    issue = the_issue(post_bundle(api_client, bundle), 400)

    assert issue["expression"] == [expression]
    assert ResourceRecord.objects.count() == 0


def test_full_urls_must_be_unique(api_client):
    urn = "urn:uuid:aa6b4c1e-4444-4ddd-8eee-000000000001"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{**new_patient(), "fullUrl": urn}, {**new_patient(), "fullUrl": urn}],
    }

    issue = the_issue(post_bundle(api_client, bundle), 400)

    assert issue["expression"] == ["Bundle.entry[1].fullUrl"]
    assert "Bundle.entry[0]" in issue["diagnostics"]


def test_the_resource_type_must_match_the_url(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            new_patient(),
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Observation"}},
        ],
    }

    issue = the_issue(post_bundle(api_client, bundle), 400)

    assert issue["expression"] == ["Bundle.entry[1].resource.resourceType"]
    assert "Observation" in issue["diagnostics"]
    assert ResourceRecord.objects.count() == 0


def test_a_put_needs_an_id_in_the_url(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "x"},
                "request": {"method": "PUT", "url": "Patient"},
            }
        ],
    }

    issue = the_issue(post_bundle(api_client, bundle), 400)

    assert issue["expression"] == ["Bundle.entry[0].request.url"]
    assert "PUT" in issue["diagnostics"]


def test_a_put_needs_the_id_in_the_resource(api_client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient/p-1"}}
        ],
    }

    issue = the_issue(post_bundle(api_client, bundle), 400)

    assert issue["expression"] == ["Bundle.entry[0].resource.id"]
    assert ResourceRecord.objects.count() == 0


@pytest.mark.parametrize(
    "entry",
    [
        {
            "resource": {"resourceType": "Bundle", "type": "transaction"},
            "request": {"method": "POST", "url": "/"},
        },
        {
            "resource": {"resourceType": "Bundle", "type": "batch"},
            "request": {"method": "POST", "url": "Bundle"},
        },
    ],
)
def test_nested_batches_and_transactions_are_refused(api_client, entry):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [new_patient(), entry]}

    issue = the_issue(post_bundle(api_client, bundle), 400)

    assert issue["code"] == "not-supported"
    assert issue["diagnostics"].startswith("Bundle.entry[1]: ")
    assert "nested" in issue["diagnostics"]
    assert ResourceRecord.objects.count() == 0


def test_a_bundle_over_the_entry_limit_is_refused(api_client, settings):
    settings.BTT_FHIR_MAX_BUNDLE_ENTRIES = 2
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [new_patient() for _ in range(3)]}

    issue = the_issue(post_bundle(api_client, bundle), 413)

    assert issue["expression"] == ["Bundle.entry"]
    assert "2" in issue["diagnostics"]
    assert ResourceRecord.objects.count() == 0


def test_an_empty_transaction_answers_an_empty_response(api_client):
    response = post_bundle(api_client, {"resourceType": "Bundle", "type": "transaction"})

    assert response.status_code == 200
    assert response.json()["type"] == "transaction-response"
    assert "entry" not in response.json()
