"""Bad input gets a clear OperationOutcome, nothing is written, and the server keeps serving."""

import json

import pytest
from django.test import override_settings

from integrations.fhir.models import ResourceRecord
from tests.fhir.conftest import issues_of

pytestmark = pytest.mark.django_db


def test_malformed_json_is_400_naming_the_problem(fhir):
    response = fhir.post("/Patient", '{"resourceType": "Patient", "gender": ')

    assert response.status_code == 400
    assert "not valid JSON" in issues_of(response)[0]["diagnostics"]
    assert ResourceRecord.objects.count() == 0


def test_resource_type_not_matching_url_is_400(fhir, patient_body):
    response = fhir.put("/Observation/1", {**patient_body, "id": "1"})

    assert response.status_code == 400
    issue = issues_of(response)[0]
    assert issue["expression"] == ["resourceType"]
    assert "Patient" in issue["diagnostics"]
    assert "Observation" in issue["diagnostics"]


def test_create_with_wrong_resource_type_for_url_is_400(fhir, patient_body):
    response = fhir.post("/Observation", patient_body)

    assert response.status_code == 400
    assert issues_of(response)[0]["expression"] == ["resourceType"]


def test_invalid_date_names_the_element(fhir, patient_body):
    response = fhir.post("/Patient", {**patient_body, "birthDate": "1974-02-30"})

    assert response.status_code == 400
    assert issues_of(response)[0]["expression"] == ["Patient.birthDate"]


def test_unknown_element_names_the_element(fhir, patient_body):
    response = fhir.post("/Patient", {**patient_body, "favouriteColour": "blue"})

    assert response.status_code == 400
    assert issues_of(response)[0]["expression"] == ["Patient.favouriteColour"]


def test_wrong_type_inside_a_list_names_the_indexed_element(fhir, patient_body):
    response = fhir.post("/Patient", {**patient_body, "name": [{"family": "X", "given": "not-a-list"}]})

    assert response.status_code == 400
    assert issues_of(response)[0]["expression"] == ["Patient.name[0].given"]


@override_settings(BTT_FHIR_MAX_BODY_BYTES=2048)
def test_body_over_the_size_limit_is_413(fhir, patient_body):
    big = {**patient_body, "name": [{"family": "x" * 5000}]}

    response = fhir.post("/Patient", big)

    assert response.status_code == 413
    assert "2048" in issues_of(response)[0]["diagnostics"]


def test_deeply_nested_json_is_400(fhir, patient_body):
    nested: dict = {}
    node = nested
    for _ in range(200):
        node["extension"] = [{"url": "http://example.org/x"}]
        node = node["extension"][0]
    response = fhir.post("/Patient", {**patient_body, **nested})

    assert response.status_code == 400
    assert "nested deeper" in issues_of(response)[0]["diagnostics"]


def test_body_that_is_not_an_object_is_400(fhir):
    response = fhir.post("/Patient", json.dumps([1, 2, 3]))

    assert response.status_code == 400
    assert issues_of(response)[0]["code"] == "structure"


def test_reference_to_a_missing_resource_is_refused(fhir):
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/missing"},
    }

    response = fhir.post("/Observation", observation)

    assert response.status_code == 400
    issue = issues_of(response)[0]
    assert issue["expression"] == ["Observation.subject.reference"]
    assert "Patient/missing" in issue["diagnostics"]


def test_server_keeps_serving_after_bad_requests(fhir, patient_body):
    fhir.post("/Patient", "{")
    fhir.post("/Patient", {"resourceType": "Patient", "birthDate": "bad"})

    assert fhir.post("/Patient", patient_body).status_code == 201
    assert ResourceRecord.objects.count() == 1
