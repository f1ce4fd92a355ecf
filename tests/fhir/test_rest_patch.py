"""JSON Patch (RFC 6902) on a resource."""

import pytest

from tests.fhir.conftest import issues_of

pytestmark = pytest.mark.django_db


def test_json_patch_changes_the_resource_as_a_new_version(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()
    ops = [
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "add", "path": "/active", "value": False},
    ]

    response = fhir.patch(f"/Patient/{created['id']}", ops)

    assert response.status_code == 200
    body = response.json()
    assert body["gender"] == "female"
    assert body["active"] is False
    assert body["meta"]["versionId"] == "2"


def test_patch_with_failing_test_op_is_422_and_changes_nothing(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()
    ops = [
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/gender", "value": "other"},
    ]

    response = fhir.patch(f"/Patient/{created['id']}", ops)

    assert response.status_code == 422
    assert "could not be applied" in issues_of(response)[0]["diagnostics"]
    assert fhir.get(f"/Patient/{created['id']}").json()["meta"]["versionId"] == "1"


def test_patch_making_the_resource_invalid_is_refused(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.patch(
        f"/Patient/{created['id']}", [{"op": "replace", "path": "/birthDate", "value": "1974-13-45"}]
    )

    assert response.status_code == 400
    assert issues_of(response)[0]["expression"] == ["Patient.birthDate"]


def test_patch_may_not_change_the_id(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.patch(f"/Patient/{created['id']}", [{"op": "replace", "path": "/id", "value": "x"}])

    assert response.status_code == 422
