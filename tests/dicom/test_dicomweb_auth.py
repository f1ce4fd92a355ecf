"""DICOMweb authentication and scopes: a bearer token on every request (401 without), reading
needs ImagingStudy read access, storing (STOW-RS) write access (403 otherwise)."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.dicom.test_dicomweb_support import (  # noqa: F401
    DICOM_JSON,
    dicomweb_storage,
    make_instance,
    make_reader_client,
    multipart_body,
    new_uid,
    stow,
    stow_content_type,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]

READ_PATHS = [
    "/dicomweb/studies",
    "/dicomweb/series",
    "/dicomweb/instances",
    "/dicomweb/studies/1.2.3",
    "/dicomweb/studies/1.2.3/metadata",
    "/dicomweb/studies/1.2.3/series/4.5/instances/6.7/frames/1",
    "/dicomweb/studies/1.2.3/series/4.5/instances/6.7/rendered",
]


@pytest.mark.parametrize("path", READ_PATHS)
def test_no_token_is_401_with_a_json_error(path):
    response = Client().get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == 401
    assert "Authorization" in body["message"]


def test_bad_token_is_401():
    response = Client().get("/dicomweb/studies", headers={"Authorization": "Bearer btt_not-a-token"})
    assert response.status_code == 401
    assert "not valid" in response.json()["message"]


def test_stow_without_token_is_401_and_stores_nothing():
    body = multipart_body([make_instance(study_uid=new_uid(), series_uid=new_uid())])
    response = Client().post("/dicomweb/studies", data=body, content_type=stow_content_type())
    assert response.status_code == 401


def test_reader_may_search_and_retrieve_but_not_store(api_client):
    reader_client = make_reader_client()
    study, series = new_uid(), new_uid()
    assert stow(api_client, [make_instance(study_uid=study, series_uid=series)]).status_code == 200

    assert reader_client.get("/dicomweb/studies", headers={"Accept": DICOM_JSON}).status_code == 200
    assert reader_client.get(f"/dicomweb/studies/{study}").status_code == 200
    assert reader_client.get(f"/dicomweb/studies/{study}/metadata").status_code == 200

    response = stow(reader_client, [make_instance(study_uid=new_uid(), series_uid=new_uid())])
    assert response.status_code == 403
    assert "pytest-reader" in response.json()["message"]
    assert "write" in response.json()["message"]
    assert len(api_client.get("/dicomweb/studies").json()) == 1


def test_method_not_allowed_names_the_allowed_ones(api_client):
    response = api_client.delete("/dicomweb/studies")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    response = api_client.post("/dicomweb/series", data=b"", content_type="application/dicom")
    assert response.status_code == 405
    assert response["Allow"] == "GET"
