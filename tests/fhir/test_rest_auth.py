"""Bearer-token authentication and role scopes on the FHIR API."""

import pytest

from tests.fhir.conftest import issues_of

pytestmark = pytest.mark.django_db


def test_metadata_needs_no_token(anonymous_fhir):
    response = anonymous_fhir.get("/metadata")

    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"


def test_missing_token_is_401_operation_outcome(anonymous_fhir):
    response = anonymous_fhir.get("/Patient")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization" in issues_of(response)[0]["diagnostics"]


def test_wrong_token_is_401(db):
    from tests.fhir.conftest import FhirTestClient

    response = FhirTestClient("btt_not-a-real-token").get("/Patient")

    assert response.status_code == 401
    assert "not valid" in issues_of(response)[0]["diagnostics"]


def test_reader_may_read_but_not_write(fhir, fhir_reader, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    assert fhir_reader.get(f"/Patient/{created['id']}").status_code == 200
    response = fhir_reader.post("/Patient", patient_body)
    assert response.status_code == 403
    assert "may not write Patient" in issues_of(response)[0]["diagnostics"]
