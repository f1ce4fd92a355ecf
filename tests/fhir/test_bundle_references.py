"""Transaction references: urn:uuid and fullUrl rewriting, and referential integrity."""

from __future__ import annotations

import json

import pytest

from integrations.fhir.models import ResourceRecord

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"
PATIENT_URN = "urn:uuid:9b2a7f30-2222-4bbb-8ccc-000000000001"
PRACTITIONER_URN = "urn:uuid:9b2a7f30-2222-4bbb-8ccc-000000000002"
ORG_OID = "urn:oid:1.2.3.4.5.6"


def post_bundle(client, bundle: dict, **headers: str):
    return client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON, headers=headers)


def transaction(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def post(resource: dict, full_url: str | None = None) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def read(client, location: str) -> dict:
    response = client.get("/fhir/" + location.split("/_history", 1)[0])
    assert response.status_code == 200, response.content
    return response.json()


def test_urn_references_are_rewritten_everywhere_in_the_resource(api_client):
    observation = {
        "resourceType": "Observation",
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">For <a href="{PATIENT_URN}">the patient</a></div>',
        },
        "contained": [
            {"resourceType": "Specimen", "id": "sp1", "subject": {"reference": PATIENT_URN}},
        ],
        "extension": [
            {
                "url": "http://example.org/fhir/StructureDefinition/reviewer",
                "extension": [{"url": "who", "valueReference": {"reference": PRACTITIONER_URN}}],
            }
        ],
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": PATIENT_URN, "display": "The patient"},
        "performer": [{"reference": PRACTITIONER_URN}, {"reference": ORG_OID}],
        "specimen": {"reference": "#sp1"},
        "component": [
            {
                "code": {"text": "part"},
                "valueString": "x",
                "extension": [
                    {
                        "url": "http://example.org/fhir/StructureDefinition/src",
                        "valueReference": {"reference": PATIENT_URN},
                    }
                ],
            }
        ],
    }
    bundle = transaction(
        post(observation),  # Refers to entries that come after it: ids are assigned up front.
        post({"resourceType": "Patient", "name": [{"family": "Urn"}]}, PATIENT_URN),
        post({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}, PRACTITIONER_URN),
        post({"resourceType": "Organization", "name": "Oid Org"}, ORG_OID),
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    patient_ref = f"Patient/{entries[1]['resource']['id']}"
    practitioner_ref = f"Practitioner/{entries[2]['resource']['id']}"
    org_ref = f"Organization/{entries[3]['resource']['id']}"
    stored = read(api_client, entries[0]["response"]["location"])
    assert stored["subject"] == {"reference": patient_ref, "display": "The patient"}
    assert stored["performer"] == [{"reference": practitioner_ref}, {"reference": org_ref}]
    assert stored["contained"][0]["subject"] == {"reference": patient_ref}
    assert stored["specimen"] == {"reference": "#sp1"}
    assert stored["extension"][0]["extension"][0]["valueReference"] == {"reference": practitioner_ref}
    assert stored["component"][0]["extension"][0]["valueReference"] == {"reference": patient_ref}
    assert f'href="{patient_ref}"' in stored["text"]["div"]
    assert "urn:" not in json.dumps(stored)


def test_references_to_restful_full_urls_become_relative(api_client):
    ehr = "http://ehr.example.org/fhir"
    bundle = transaction(
        {
            "fullUrl": f"{ehr}/Patient/ehr-pat-77",
            "resource": {"resourceType": "Patient", "id": "ehr-pat-77"},
            "request": {"method": "PUT", "url": "Patient/ehr-pat-77"},
        },
        {
            # A create ignores the id in its fullUrl; `Practitioner/prac-1` in this Bundle means it.
            "fullUrl": f"{ehr}/Practitioner/prac-1",
            "resource": {"resourceType": "Practitioner", "id": "prac-1"},
            "request": {"method": "POST", "url": "Practitioner"},
        },
        post(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": {"reference": f"{ehr}/Patient/ehr-pat-77"},
                "participant": [
                    {"individual": {"reference": "Practitioner/prac-1"}},
                    {"individual": {"reference": f"{ehr}/Practitioner/prac-1"}},
                ],
            }
        ),
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200, response.content
    entries = response.json()["entry"]
    practitioner_id = entries[1]["resource"]["id"]
    assert practitioner_id != "prac-1"
    encounter = read(api_client, entries[2]["response"]["location"])
    assert encounter["subject"] == {"reference": "Patient/ehr-pat-77"}
    assert [p["individual"] for p in encounter["participant"]] == [
        {"reference": f"Practitioner/{practitioner_id}"}
    ] * 2


def test_a_reference_to_a_missing_resource_fails_naming_the_element(api_client):
    bundle = transaction(
        post({"resourceType": "Patient"}, PATIENT_URN),
        post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": PATIENT_URN},
                "performer": [{"reference": "Practitioner/no-such-practitioner"}],
            }
        ),
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["code"] == "not-found"
    assert issue["expression"] == ["Bundle.entry[1].resource.performer[0].reference"]
    assert issue["diagnostics"].startswith("Bundle.entry[1]: ")
    assert "Practitioner/no-such-practitioner" in issue["diagnostics"]
    assert ResourceRecord.objects.count() == 0


def test_a_urn_that_is_no_entry_of_the_bundle_fails_naming_the_element(api_client):
    bundle = transaction(
        post(
            {
                "resourceType": "Patient",
                "link": [
                    {
                        "other": {"reference": "urn:uuid:00000000-dead-4000-8000-000000000000"},
                        "type": "seealso",
                    }
                ],
            }
        ),
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[0].resource.link[0].other.reference"]
    assert "urn:uuid:00000000-dead-4000-8000-000000000000" in issue["diagnostics"]
    assert ResourceRecord.objects.count() == 0


def test_references_to_existing_resources_and_between_new_puts_are_accepted(api_client):
    api_client.put(
        "/fhir/Organization/org-1",
        json.dumps({"resourceType": "Organization", "id": "org-1"}),
        content_type=FHIR_JSON,
    )
    bundle = transaction(
        {
            # The two new patients refer to each other: both are checked as one set.
            "resource": {
                "resourceType": "Patient",
                "id": "twin-a",
                "managingOrganization": {"reference": "Organization/org-1"},
                "link": [{"other": {"reference": "Patient/twin-b"}, "type": "seealso"}],
            },
            "request": {"method": "PUT", "url": "Patient/twin-a"},
        },
        {
            "resource": {
                "resourceType": "Patient",
                "id": "twin-b",
                "link": [{"other": {"reference": "Patient/twin-a"}, "type": "seealso"}],
            },
            "request": {"method": "PUT", "url": "Patient/twin-b"},
        },
    )

    response = post_bundle(api_client, bundle)

    assert response.status_code == 200, response.content
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created", "201 Created"]
    assert read(api_client, "Patient/twin-b")["link"][0]["other"] == {"reference": "Patient/twin-a"}
