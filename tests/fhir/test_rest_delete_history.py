"""Soft delete that keeps history, and the history interactions with stable paging."""

import pytest

pytestmark = pytest.mark.django_db


def test_delete_then_read_is_410_and_history_is_kept(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()

    deleted = fhir.delete(f"/Patient/{created['id']}")

    assert deleted.status_code == 200
    assert fhir.get(f"/Patient/{created['id']}").status_code == 410
    assert fhir.get(f"/Patient/{created['id']}/_history/1").status_code == 200
    assert fhir.get(f"/Patient/{created['id']}/_history/2").status_code == 410


def test_delete_of_unknown_resource_is_404(fhir):
    assert fhir.delete("/Patient/nope").status_code == 404


def test_instance_history_lists_every_version_newest_first(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()
    fhir.put(f"/Patient/{created['id']}", {**created, "gender": "female"})
    fhir.delete(f"/Patient/{created['id']}")

    bundle = fhir.get(f"/Patient/{created['id']}/_history").json()

    assert bundle["type"] == "history"
    methods = [entry["request"]["method"] for entry in bundle["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][1]["resource"]["gender"] == "female"
    assert bundle["entry"][2]["response"]["etag"] == 'W/"1"'


def test_recreate_after_delete_continues_the_version_count(fhir, patient_body):
    created = fhir.post("/Patient", patient_body).json()
    fhir.delete(f"/Patient/{created['id']}")

    response = fhir.put(f"/Patient/{created['id']}", created)

    assert response.status_code == 201
    assert response.json()["meta"]["versionId"] == "3"


def test_type_and_system_history(fhir, patient_body):
    fhir.post("/Patient", patient_body)
    fhir.post("/Organization", {"resourceType": "Organization", "name": "General Hospital"})

    type_history = fhir.get("/Patient/_history").json()
    system_history = fhir.get("/_history").json()

    assert {e["resource"]["resourceType"] for e in type_history["entry"]} == {"Patient"}
    assert {e["resource"]["resourceType"] for e in system_history["entry"]} == {"Patient", "Organization"}


def test_history_pages_do_not_shift_when_others_write(fhir, patient_body):
    for _ in range(5):
        fhir.post("/Patient", patient_body)
    first = fhir.get("/Patient/_history", _count="2").json()
    first_ids = [e["resource"]["id"] for e in first["entry"]]
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")

    fhir.post("/Patient", patient_body)  # a write between two page fetches
    second = fhir.client.get(next_url.replace("http://testserver", ""), headers=fhir._headers(None)).json()
    second_ids = [e["resource"]["id"] for e in second["entry"]]

    assert len(second_ids) == 2
    assert not set(first_ids) & set(second_ids)
    everything = [e["resource"]["id"] for e in fhir.get("/Patient/_history", _count="100").json()["entry"]]
    assert everything[1:5] == first_ids + second_ids
