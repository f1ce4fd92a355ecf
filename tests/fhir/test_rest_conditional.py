"""Conditional create (If-None-Exist), conditional update and conditional delete."""

import pytest

from integrations.fhir.models import ResourceRecord

pytestmark = pytest.mark.django_db

IDENTIFIER = "urn:oid:1.2.36.146.595.217.0.1|12345"


def test_if_none_exist_creates_once_then_returns_the_match(fhir, patient_body):
    headers = {"If-None-Exist": f"identifier={IDENTIFIER}"}

    first = fhir.post("/Patient", patient_body, headers=headers)
    second = fhir.post("/Patient", patient_body, headers=headers)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert ResourceRecord.objects.filter(resource_type="Patient").count() == 1


def test_if_none_exist_with_several_matches_is_412(fhir, patient_body):
    fhir.post("/Patient", patient_body)
    fhir.post("/Patient", patient_body)

    response = fhir.post("/Patient", patient_body, headers={"If-None-Exist": f"identifier={IDENTIFIER}"})

    assert response.status_code == 412


def test_conditional_update_updates_the_match_or_creates(fhir, patient_body):
    created = fhir.put(f"/Patient?identifier={IDENTIFIER}", patient_body)
    updated = fhir.put(f"/Patient?identifier={IDENTIFIER}", {**patient_body, "gender": "other"})

    assert created.status_code == 201
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"


def test_conditional_delete_removes_the_match(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.delete(f"/Patient?identifier={IDENTIFIER}")

    assert response.status_code == 200
    assert fhir.get(f"/Patient/{created['id']}").status_code == 410
