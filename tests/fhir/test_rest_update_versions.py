"""Update: new versions, vread of old ones, update-as-create and If-Match."""

import pytest

from tests.fhir.conftest import issues_of

pytestmark = pytest.mark.django_db


def test_update_makes_a_new_version_and_keeps_the_old(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()
    changed = {**created, "gender": "other"}

    response = fhir.put(f"/Patient/{created['id']}", changed)

    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert response["ETag"] == 'W/"2"'
    old = fhir.get(f"/Patient/{created['id']}/_history/1").json()
    assert old["gender"] == "male"
    assert old["meta"]["versionId"] == "1"
    assert fhir.get(f"/Patient/{created['id']}").json()["gender"] == "other"


def test_update_as_create_with_client_id(fhir, patient_body):
    response = fhir.put("/Patient/chosen-1", {**patient_body, "id": "chosen-1"})

    assert response.status_code == 201
    assert response.json()["id"] == "chosen-1"
    assert response.json()["meta"]["versionId"] == "1"


def test_update_with_matching_if_match_succeeds(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.put(f"/Patient/{created['id']}", created, headers={"If-Match": 'W/"1"'})

    assert response.status_code == 200


def test_update_with_stale_if_match_is_412(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()
    fhir.put(f"/Patient/{created['id']}", created)

    response = fhir.put(f"/Patient/{created['id']}", created, headers={"If-Match": 'W/"1"'})

    assert response.status_code == 412
    assert "version 2" in issues_of(response)[0]["diagnostics"]


def test_update_with_id_not_matching_url_is_400(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.put(f"/Patient/{created['id']}", {**created, "id": "other"})

    assert response.status_code == 400
    assert issues_of(response)[0]["expression"] == ["Patient.id"]


def test_vread_of_unknown_version_is_404(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    response = fhir.get(f"/Patient/{created['id']}/_history/9")

    assert response.status_code == 404
