"""Conditional references, ifNoneExist and conditional updates inside Bundles (these search)."""

from __future__ import annotations

import json

import pytest

from integrations.fhir.models import ResourceRecord

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"
MRN_SYSTEM = "http://hospital.example.org/mrn"
PATIENT_URN = "urn:uuid:51f0e6a2-3333-4ccc-8ddd-000000000001"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def patient(mrn: str, **extra) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}], **extra}


def create_patient(client, mrn: str) -> str:
    response = client.post("/fhir/Patient", json.dumps(patient(mrn)), content_type=FHIR_JSON)
    assert response.status_code == 201, response.content
    return response.json()["id"]


def observation(subject: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": subject},
    }


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post_entry(resource: dict, full_url: str | None = None, **request) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def stored(client, answer: dict) -> dict:
    return client.get("/fhir/" + answer["response"]["location"].split("/_history")[0]).json()


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_conditional_reference_is_resolved_to_the_one_match(api_client, kind):
    patient_id = create_patient(api_client, "MRN-1")
    create_patient(api_client, "MRN-2")

    response = post_bundle(
        api_client, bundle(kind, post_entry(observation(f"Patient?identifier={MRN_SYSTEM}|MRN-1")))
    )

    assert response.status_code == 200, response.content
    answer = response.json()["entry"][0]
    assert answer["response"]["status"] == "201 Created"
    assert stored(api_client, answer)["subject"] == {"reference": f"Patient/{patient_id}"}


def test_a_conditional_reference_without_a_match_fails_naming_the_element(api_client):
    response = post_bundle(
        api_client, bundle("transaction", post_entry(observation(f"Patient?identifier={MRN_SYSTEM}|nobody")))
    )

    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[0].resource.subject.reference"]
    assert "no Patient matches" in issue["diagnostics"]
    assert ResourceRecord.objects.count() == 0


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_conditional_reference_with_several_matches_is_412(api_client, kind):
    create_patient(api_client, "MRN-DUP")
    create_patient(api_client, "MRN-DUP")

    response = post_bundle(
        api_client, bundle(kind, post_entry(observation(f"Patient?identifier={MRN_SYSTEM}|MRN-DUP")))
    )

    if kind == "transaction":
        assert response.status_code == 412
        issue = response.json()["issue"][0]
    else:
        result = response.json()["entry"][0]["response"]
        assert result["status"] == "412 Precondition Failed"
        issue = result["outcome"]["issue"][0]
    assert issue["code"] == "multiple-matches"
    assert issue["expression"][0].endswith("subject.reference")
    assert ResourceRecord.objects.filter(resource_type="Observation").count() == 0


def test_a_conditional_reference_may_match_a_patient_created_in_the_same_transaction(api_client):
    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            post_entry(observation(f"Patient?identifier={MRN_SYSTEM}|MRN-NEW")),
            post_entry(patient("MRN-NEW")),
        ),
    )

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert entries[0]["resource"]["subject"] == {"reference": f"Patient/{entries[1]['resource']['id']}"}


def test_if_none_exist_that_matches_maps_the_full_url_to_the_existing_resource(api_client):
    existing = create_patient(api_client, "MRN-EXISTS")

    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            post_entry(patient("MRN-EXISTS"), PATIENT_URN, ifNoneExist=f"identifier={MRN_SYSTEM}|MRN-EXISTS"),
            post_entry(observation(PATIENT_URN)),
        ),
    )

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["resource"]["id"] == existing
    assert entries[0]["response"]["location"] == f"Patient/{existing}/_history/1"
    assert entries[1]["resource"]["subject"] == {"reference": f"Patient/{existing}"}
    assert ResourceRecord.objects.filter(resource_type="Patient").count() == 1


def test_if_none_exist_without_a_match_creates(api_client):
    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            post_entry(patient("MRN-FRESH"), PATIENT_URN, ifNoneExist=f"identifier={MRN_SYSTEM}|MRN-FRESH"),
            post_entry(observation(PATIENT_URN)),
        ),
    )

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["resource"]["subject"] == {"reference": f"Patient/{entries[0]['resource']['id']}"}
    assert ResourceRecord.objects.filter(resource_type="Patient").count() == 1


def test_if_none_exist_with_several_matches_fails_the_transaction(api_client):
    create_patient(api_client, "MRN-TWO")
    create_patient(api_client, "MRN-TWO")

    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            post_entry(observation("Patient?identifier=MRN-TWO")),
            post_entry(patient("MRN-TWO"), ifNoneExist=f"identifier={MRN_SYSTEM}|MRN-TWO"),
        ),
    )

    assert response.status_code == 412
    assert response.json()["issue"][0]["diagnostics"].startswith("Bundle.entry[1]: ")
    assert ResourceRecord.objects.count() == 2


def test_conditional_update_in_a_transaction_updates_the_match_and_links_to_it(api_client):
    existing = create_patient(api_client, "MRN-UPD")

    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            {
                "fullUrl": PATIENT_URN,
                "resource": patient("MRN-UPD", gender="female"),
                "request": {"method": "PUT", "url": f"Patient?identifier={MRN_SYSTEM}|MRN-UPD"},
            },
            post_entry(observation(PATIENT_URN)),
        ),
    )

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["resource"]["id"] == existing
    assert entries[0]["resource"]["gender"] == "female"
    assert entries[0]["resource"]["meta"]["versionId"] == "2"
    assert entries[1]["resource"]["subject"] == {"reference": f"Patient/{existing}"}


def test_conditional_update_without_a_match_creates(api_client):
    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            {
                "fullUrl": PATIENT_URN,
                "resource": patient("MRN-NONE"),
                "request": {"method": "PUT", "url": f"Patient?identifier={MRN_SYSTEM}|MRN-NONE"},
            },
            post_entry(observation(PATIENT_URN)),
        ),
    )

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    assert entries[0]["response"]["status"] == "201 Created"
    assert entries[1]["resource"]["subject"] == {"reference": f"Patient/{entries[0]['resource']['id']}"}


def test_conditional_delete_in_a_transaction(api_client):
    existing = create_patient(api_client, "MRN-DEL")

    response = post_bundle(
        api_client,
        bundle(
            "transaction",
            {"request": {"method": "DELETE", "url": f"Patient?identifier={MRN_SYSTEM}|MRN-DEL"}},
        ),
    )

    assert response.status_code == 200, response.content
    assert response.json()["entry"][0]["response"]["status"] == "200 OK"
    assert api_client.get(f"/fhir/Patient/{existing}").status_code == 410


def test_a_conditional_reference_with_an_unknown_parameter_fails_naming_the_element(api_client):
    response = post_bundle(
        api_client, bundle("transaction", post_entry(observation("Patient?no-such-param=1")))
    )

    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[0].resource.subject.reference"]
    assert "no-such-param" in issue["diagnostics"]
