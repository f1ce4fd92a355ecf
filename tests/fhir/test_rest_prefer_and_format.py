"""Prefer return=..., _format, Accept and Content-Type handling."""

import pytest

from tests.fhir.conftest import issues_of

pytestmark = pytest.mark.django_db


def test_prefer_return_minimal_sends_no_body(fhir, patient_body):
    response = fhir.post("/Patient", patient_body, headers={"Prefer": "return=minimal"})

    assert response.status_code == 201
    assert response.content == b""
    assert response["Location"]


def test_prefer_return_operation_outcome(fhir, patient_body):
    response = fhir.post("/Patient", patient_body, headers={"Prefer": "return=OperationOutcome"})

    assert response.status_code == 201
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["severity"] == "information"


def test_format_xml_is_406_operation_outcome(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.get(f"/Patient/{created['id']}", _format="xml")

    assert response.status_code == 406
    assert "XML" in issues_of(response)[0]["diagnostics"]


def test_accept_xml_is_406(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.get(f"/Patient/{created['id']}", headers={"Accept": "application/fhir+xml"})

    assert response.status_code == 406


def test_format_json_and_plain_json_accept_are_served(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    assert fhir.get(f"/Patient/{created['id']}", _format="json").status_code == 200
    assert fhir.get(f"/Patient/{created['id']}", headers={"Accept": "application/json"}).status_code == 200


def test_xml_body_is_415(fhir):
    response = fhir.post(
        "/Patient", "<Patient xmlns='http://hl7.org/fhir'/>", content_type="application/fhir+xml"
    )

    assert response.status_code == 415


def test_pretty_output_is_indented(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.get(f"/Patient/{created['id']}", _pretty="true")

    assert b"\n  " in response.content
