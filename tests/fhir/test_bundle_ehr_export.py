"""A transaction as EHRs export it: an encounter's resources, all linked by urn:uuid fullUrls."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from integrations.fhir.models import ResourceRecord
from integrations.fhir.store import iter_references

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"
FIXTURE = Path(__file__).parent / "fixtures" / "bundles" / "ehr-encounter-transaction.json"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def test_an_ehr_export_transaction_is_stored_with_every_link_resolved(api_client):
    bundle = json.loads(FIXTURE.read_text())

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert len(entries) == len(bundle["entry"])
    assert all(entry["response"]["status"] == "201 Created" for entry in entries)
    # fullUrl of the request entry -> Type/id the server gave it (answers are in request order).
    ids = {
        request["fullUrl"]: f"{answer['resource']['resourceType']}/{answer['resource']['id']}"
        for request, answer in zip(bundle["entry"], entries, strict=True)
    }
    assert Counter(ref.split("/")[0] for ref in ids.values()) == {
        "Organization": 1,
        "Practitioner": 1,
        "Patient": 1,
        "Encounter": 1,
        "Observation": 4,
        "Condition": 1,
    }
    stored = {ref: api_client.get(f"/fhir/{ref}").json() for ref in ids.values()}
    for request in bundle["entry"]:
        original = dict(iter_references(request["resource"]))
        rewritten = dict(iter_references(stored[ids[request["fullUrl"]]]))
        assert rewritten == {element: ids[urn] for element, urn in original.items()}
        for target in rewritten.values():
            assert target in stored, f"{target} was not created by this transaction"

    patient = stored[ids["urn:uuid:0c3a5f4e-8a2d-4f43-9a52-6d2f5a0e1a03"]]
    organization = ids["urn:uuid:0c3a5f4e-8a2d-4f43-9a52-6d2f5a0e1a01"]
    assert patient["managingOrganization"] == {
        "reference": organization,
        "display": "Riverside General Hospital",
    }
    assert f'href="{organization}"' in patient["text"]["div"]
    condition = stored[ids["urn:uuid:0c3a5f4e-8a2d-4f43-9a52-6d2f5a0e1a09"]]
    assert condition["evidence"][0]["detail"] == [
        {"reference": ids["urn:uuid:0c3a5f4e-8a2d-4f43-9a52-6d2f5a0e1a08"]}
    ]
    assert ResourceRecord.objects.count() == 9


def test_the_same_export_sent_twice_makes_a_second_copy(api_client):
    # Plain POSTs are not idempotent (that is what ifNoneExist is for): both copies stay linked
    # within themselves.
    bundle = json.loads(FIXTURE.read_text())

    first = post_bundle(api_client, bundle).json()
    second = post_bundle(api_client, bundle).json()

    first_ids = {e["resource"]["id"] for e in first["entry"]}
    second_ids = {e["resource"]["id"] for e in second["entry"]}
    assert not first_ids & second_ids
    assert ResourceRecord.objects.count() == 18
    encounter = next(e["resource"] for e in second["entry"] if e["resource"]["resourceType"] == "Encounter")
    patient = next(e["resource"] for e in second["entry"] if e["resource"]["resourceType"] == "Patient")
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
