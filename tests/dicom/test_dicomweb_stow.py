"""STOW-RS: POST /dicomweb/studies[/{study}] with multipart/related; type="application/dicom".

Every part goes through the ingest service (`services.store_instance`): stored exactly as sent,
indexed, answered with a Store Instances Response (PS3.18 Annex I) in DICOM JSON.
"""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from integrations.dicom.models import Instance, Study
from tests.dicom.test_dicomweb_support import (  # noqa: F401
    BOUNDARY,
    DICOM_JSON,
    TRANSFER_SYNTAX_FILES,
    dicomweb_storage,
    make_instance,
    multipart_body,
    new_uid,
    sample_bytes,
    sample_file,
    stow,
    stow_content_type,
    value,
    values,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]


@pytest.mark.parametrize(("syntax", "name"), sorted(TRANSFER_SYNTAX_FILES.items()))
def test_stow_stores_and_indexes_each_transfer_syntax(api_client, syntax, name):
    data = sample_bytes(name)
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    response = stow(api_client, [data])
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == DICOM_JSON
    body = response.json()
    assert "00081198" not in body
    (item,) = body["00081199"]["Value"]
    assert value(item, "00081150") == ds.SOPClassUID
    assert value(item, "00081155") == ds.SOPInstanceUID
    assert value(item, "00081190").endswith(
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert value(body, "00081190") == f"http://testserver/dicomweb/studies/{ds.StudyInstanceUID}"
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    assert instance.transfer_syntax_uid == syntax
    assert instance.file_size == len(data)


def test_stow_of_several_instances_in_one_request(api_client):
    study, series = new_uid(), new_uid()
    parts = [make_instance(study_uid=study, series_uid=series, instance_number=n) for n in range(1, 6)]
    response = stow(api_client, parts)
    assert response.status_code == 200
    assert len(response.json()["00081199"]["Value"]) == 5
    assert Study.objects.get(study_instance_uid=study).number_of_instances == 5


def test_stow_with_one_bad_part_is_202_with_failed_sop_sequence(api_client):
    study, series = new_uid(), new_uid()
    good = [make_instance(study_uid=study, series_uid=series, instance_number=n) for n in (1, 2)]
    truncated = sample_file("MR_truncated.dcm").read_bytes()
    response = stow(api_client, [good[0], truncated, good[1]])
    assert response.status_code == 202, response.content
    body = response.json()
    assert len(body["00081199"]["Value"]) == 2
    (failed,) = body["00081198"]["Value"]
    assert 0xC000 <= value(failed, "00081197") <= 0xCFFF
    assert (
        value(failed, "00081155")
        == dcmread(sample_file("MR_truncated.dcm"), stop_before_pixels=True).SOPInstanceUID
    )
    assert "not stored" in response["Warning"]
    assert Instance.objects.count() == 2


def test_stow_with_every_part_bad_is_409(api_client):
    response = stow(api_client, [b"not a dicom file at all", ("text/plain", b"hello")])
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 2
    assert all(0xC000 <= value(item, "00081197") <= 0xCFFF for item in failed)
    assert "text/plain" in response["Warning"]
    assert "00081199" not in response.json()
    assert Instance.objects.count() == 0


def test_stow_to_a_study_rejects_instances_of_another_study(api_client):
    study, other = new_uid(), new_uid()
    right = make_instance(study_uid=study, series_uid=new_uid())
    wrong = make_instance(study_uid=other, series_uid=new_uid())

    response = stow(api_client, [wrong], study=study)
    assert response.status_code == 409
    (failed,) = response.json()["00081198"]["Value"]
    assert value(failed, "00081197") == 0xC409
    assert f"differs from the study {study}" in response["Warning"]

    response = stow(api_client, [right, wrong], study=study)
    assert response.status_code == 202
    assert value(response.json(), "00081190").endswith(f"/studies/{study}")
    assert list(Instance.objects.values_list("series__study__study_instance_uid", flat=True)) == [study]


def test_stow_is_idempotent_for_a_resent_instance(api_client):
    data = make_instance(study_uid=new_uid(), series_uid=new_uid())
    assert stow(api_client, [data]).status_code == 200
    response = stow(api_client, [data])
    assert response.status_code == 200
    assert len(response.json()["00081199"]["Value"]) == 1
    assert Instance.objects.count() == 1


def test_stow_of_a_single_application_dicom_body(api_client):
    data = make_instance(study_uid=new_uid(), series_uid=new_uid())
    response = api_client.post("/dicomweb/studies", data=data, content_type="application/dicom")
    assert response.status_code == 200
    assert Instance.objects.count() == 1


@pytest.mark.parametrize(
    "content_type",
    ["application/json", 'multipart/related; type="application/dicom+xml"; boundary=x', "text/plain"],
)
def test_stow_with_a_wrong_content_type_is_415(api_client, content_type):
    response = api_client.post("/dicomweb/studies", data=b"{}", content_type=content_type)
    assert response.status_code == 415
    assert "application/dicom" in response.json()["message"]


def test_stow_without_a_boundary_is_400(api_client):
    response = api_client.post(
        "/dicomweb/studies", data=b"x", content_type='multipart/related; type="application/dicom"'
    )
    assert response.status_code == 400
    assert "boundary" in response.json()["message"]


def test_stow_of_a_body_without_parts_is_400(api_client):
    response = api_client.post(
        "/dicomweb/studies", data=b"no boundary here", content_type=stow_content_type()
    )
    assert response.status_code == 400
    assert "multipart" in response.json()["message"]


def test_stow_of_a_body_that_breaks_off_keeps_the_complete_parts(api_client):
    study, series = new_uid(), new_uid()
    complete = make_instance(study_uid=study, series_uid=series, instance_number=1)
    body = multipart_body([complete, make_instance(study_uid=study, series_uid=series, instance_number=2)])
    cut = body[: len(body) - 300]  # the second part loses its end and the close delimiter
    response = api_client.post("/dicomweb/studies", data=cut, content_type=stow_content_type(BOUNDARY))
    assert response.status_code == 202
    assert len(response.json()["00081199"]["Value"]) == 1
    assert "broke off" in response["Warning"]
    assert Instance.objects.count() == 1


def test_stow_answers_xml_accept_with_406(api_client):
    response = api_client.post(
        "/dicomweb/studies",
        data=multipart_body([make_instance(study_uid=new_uid(), series_uid=new_uid())]),
        content_type=stow_content_type(),
        headers={"Accept": "application/dicom+xml"},
    )
    assert response.status_code == 406
    assert Instance.objects.count() == 0
