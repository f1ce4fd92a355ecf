"""WADO-RS retrieval of studies, series and instances: multipart/related; type="application/dicom"
with each stored file unchanged (the bytes that were stored), streamed."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from tests.dicom.test_dicomweb_support import (  # noqa: F401
    TRANSFER_SYNTAX_FILES,
    dicomweb_storage,
    make_instance,
    new_uid,
    read_multipart,
    sample_bytes,
    store_catalogue,
    stow,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]


def uids_of(data: bytes) -> tuple[str, str, str]:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.mark.parametrize(("syntax", "name"), sorted(TRANSFER_SYNTAX_FILES.items()))
def test_instance_comes_back_byte_for_byte(api_client, syntax, name):
    data = sample_bytes(name)
    assert stow(api_client, [data]).status_code == 200
    study, series, sop = uids_of(data)
    response = api_client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    ((headers, content),) = read_multipart(response)
    assert content == data
    assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
    assert headers["content-length"] == str(len(data))
    assert headers["content-location"].endswith(f"/instances/{sop}")


def test_study_and_series_retrieval_send_every_instance(api_client):
    study, series_1, series_2 = new_uid(), new_uid(), new_uid()
    files = {}
    for series, number in ((series_1, 1), (series_1, 2), (series_2, 1)):
        data = make_instance(
            study_uid=study, series_uid=series, instance_number=number, series_number=len(files)
        )
        files[uids_of(data)[2]] = data
    assert stow(api_client, list(files.values())).status_code == 200

    parts = read_multipart(api_client.get(f"/dicomweb/studies/{study}"))
    assert sorted(content for _, content in parts) == sorted(files.values())

    parts = read_multipart(api_client.get(f"/dicomweb/studies/{study}/series/{series_1}"))
    assert [uids_of(content)[1] for _, content in parts] == [series_1, series_1]
    assert all(files[uids_of(content)[2]] == content for _, content in parts)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "multipart/related; type=application/dicom",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
    ],
)
def test_acceptable_requests(api_client, accept):
    data = make_instance(study_uid=new_uid(), series_uid=new_uid())  # explicit VR little endian
    assert stow(api_client, [data]).status_code == 200
    headers = {"Accept": accept} if accept else {}
    response = api_client.get(f"/dicomweb/studies/{uids_of(data)[0]}", headers=headers)
    assert response.status_code == 200
    assert read_multipart(response)[0][1] == data


def test_a_transfer_syntax_other_than_the_stored_one_is_406(api_client):
    data = make_instance(study_uid=new_uid(), series_uid=new_uid())
    assert stow(api_client, [data]).status_code == 200
    response = api_client.get(
        f"/dicomweb/studies/{uids_of(data)[0]}",
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        },
    )
    assert response.status_code == 406
    message = response.json()["message"]
    assert "1.2.840.10008.1.2.1" in message
    assert "transfer-syntax=*" in message


def test_a_media_type_other_than_dicom_is_406(api_client):
    data = make_instance(study_uid=new_uid(), series_uid=new_uid())
    assert stow(api_client, [data]).status_code == 200
    response = api_client.get(f"/dicomweb/studies/{uids_of(data)[0]}", headers={"Accept": "application/zip"})
    assert response.status_code == 406


def test_unknown_uids_are_404_naming_them(api_client):
    cat = store_catalogue(api_client)
    sop = cat.sops[cat.series_a1][0]
    cases = [
        ("/dicomweb/studies/1.2.3.4", "study 1.2.3.4"),
        (f"/dicomweb/studies/{cat.study_a}/series/1.2.3.4", "series 1.2.3.4"),
        (f"/dicomweb/studies/{cat.study_b}/series/{cat.series_a1}", f"series {cat.series_a1}"),
        (f"/dicomweb/studies/{cat.study_a}/series/{cat.series_a1}/instances/1.2.3.4", "instance 1.2.3.4"),
        (f"/dicomweb/studies/{cat.study_a}/series/{cat.series_a2}/instances/{sop}", f"instance {sop}"),
    ]
    for path, named in cases:
        response = api_client.get(path)
        assert response.status_code == 404, path
        assert named in response.json()["message"]
        assert response["Warning"].startswith("299 ")


def test_unknown_query_parameter_is_400(api_client):
    response = api_client.get("/dicomweb/studies/1.2.3?foo=bar")
    assert response.status_code == 400
    assert "'foo'" in response.json()["message"]
