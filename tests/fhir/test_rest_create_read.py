"""Create and read: ids, versions, ETag/Last-Modified/Location headers, 404 for unknown ids."""

import pytest

from integrations.fhir.models import ResourceRecord, ResourceVersion
from tests.fhir.conftest import issues_of

pytestmark = pytest.mark.django_db


def test_create_assigns_id_version_and_headers(fhir, patient_body):
    response = fhir.post("/Patient", patient_body)

    assert response.status_code == 201
    body = response.json()
    assert body["resourceType"] == "Patient"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert body["name"] == patient_body["name"]
    assert response["ETag"] == 'W/"1"'
    assert response["Location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert response["Last-Modified"].endswith("GMT")
    assert response["Content-Type"].startswith("application/fhir+json")


def test_create_ignores_client_supplied_id(fhir, patient_body):
    response = fhir.post("/Patient", {**patient_body, "id": "chosen-by-client"})

    assert response.status_code == 201
    assert response.json()["id"] != "chosen-by-client"


def test_read_returns_the_stored_resource(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.get(f"/Patient/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert response["ETag"] == 'W/"1"'


def test_read_of_unknown_id_is_404_operation_outcome(fhir):
    response = fhir.get("/Patient/does-not-exist")

    assert response.status_code == 404
    assert issues_of(response)[0]["code"] == "not-found"
    assert "Patient/does-not-exist" in issues_of(response)[0]["diagnostics"]


def test_unknown_resource_type_is_404(fhir):
    response = fhir.get("/Patientt/1")

    assert response.status_code == 404
    assert "Patientt" in issues_of(response)[0]["diagnostics"]


def test_conditional_read_answers_304_when_unchanged(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.get(f"/Patient/{created['id']}", headers={"If-None-Match": 'W/"1"'})

    assert response.status_code == 304


def test_create_keeps_one_head_row_and_one_version(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    assert ResourceRecord.objects.filter(logical_id=created["id"]).count() == 1
    assert ResourceVersion.objects.filter(logical_id=created["id"]).count() == 1
