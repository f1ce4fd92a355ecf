"""WADO-RS metadata (DICOM JSON of each instance, bulk data as BulkDataURI) and the bulkdata
resource the URIs point at."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from pydicom import dcmread

from tests.dicom.test_dicomweb_support import (  # noqa: F401
    DICOM_JSON,
    body_of,
    dicomweb_storage,
    make_instance,
    new_uid,
    read_multipart,
    sample_bytes,
    stow,
    value,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]


def stored(client, name: str):
    data = sample_bytes(name)
    assert stow(client, [data]).status_code == 200
    ds = dcmread(io.BytesIO(data))
    return (
        ds,
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
    )


def test_instance_metadata_is_the_data_set_as_dicom_json(api_client):
    ds, path = stored(api_client, "CT_small.dcm")
    response = api_client.get(f"{path}/metadata", headers={"Accept": DICOM_JSON})
    assert response.status_code == 200
    assert response["Content-Type"] == DICOM_JSON
    (item,) = response.json()
    expected = ds.to_json_dict(bulk_data_threshold=1 << 30)
    for tag in (
        "00080016",
        "00080018",
        "00100010",
        "00100020",
        "0020000D",
        "00280010",
        "00281053",
        "00200032",
    ):
        assert item[tag] == expected[tag], tag
    assert not any(tag.startswith("0002") for tag in item)  # no File Meta Information
    pixel = item["7FE00010"]
    assert pixel["vr"] == "OW"
    assert pixel["BulkDataURI"] == f"http://testserver{path}/bulkdata/7FE00010"
    assert "InlineBinary" not in pixel


def test_pixel_data_bulk_data_uri_returns_the_pixels(api_client):
    ds, path = stored(api_client, "CT_small.dcm")
    (item,) = api_client.get(f"{path}/metadata").json()
    uri = item["7FE00010"]["BulkDataURI"].removeprefix("http://testserver")
    response = api_client.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 200
    ((headers, content),) = read_multipart(response)
    assert headers["content-type"].startswith("application/octet-stream")
    assert content == ds.PixelData


def test_compressed_pixel_data_bulk_data_is_decoded(api_client):
    ds, path = stored(api_client, "MR_small_RLE.dcm")
    (item,) = api_client.get(f"{path}/metadata").json()
    assert item["7FE00010"]["vr"] == "OB"
    ((_, content),) = read_multipart(api_client.get(f"{path}/bulkdata/7FE00010"))
    assert content == ds.pixel_array.astype("<i2").tobytes()


def test_large_binary_values_become_bulk_data_uris(api_client):
    # examples_overlay.dcm carries a 300x484 overlay (Overlay Data, 60xx3000, OW) before its pixels.
    ds, path = stored(api_client, "examples_overlay.dcm")
    (item,) = api_client.get(f"{path}/metadata").json()
    overlay = item["60003000"]
    assert overlay["BulkDataURI"].endswith("/bulkdata/60003000")
    ((_, content),) = read_multipart(api_client.get(overlay["BulkDataURI"].removeprefix("http://testserver")))
    assert content == ds[0x60003000].value


def test_series_and_study_metadata_list_every_instance(api_client):
    study, series = new_uid(), new_uid()
    parts = [make_instance(study_uid=study, series_uid=series, instance_number=n) for n in (1, 2, 3)]
    parts.append(make_instance(study_uid=study, series_uid=new_uid(), series_number=2))
    assert stow(api_client, parts).status_code == 200

    response = api_client.get(f"/dicomweb/studies/{study}/series/{series}/metadata")
    assert response.status_code == 200
    items = orjson.loads(body_of(response))
    assert [value(item, "00200013") for item in items] == [1, 2, 3]
    items = orjson.loads(body_of(api_client.get(f"/dicomweb/studies/{study}/metadata")))
    assert len(items) == 4
    assert {value(item, "0020000D") for item in items} == {study}


def test_metadata_of_an_object_without_pixels(api_client):
    data = sample_bytes("rtplan.dcm")
    # rtplan.dcm's File Meta names another SOP Instance UID: re-identify it consistently.
    ds = dcmread(io.BytesIO(data))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert stow(api_client, [buffer.getvalue()]).status_code == 200
    path = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    (item,) = api_client.get(f"{path}/metadata").json()
    assert "7FE00010" not in item
    assert value(item, "300A0002") == ds.RTPlanLabel
    assert len(item["300A00B0"]["Value"]) == len(ds.BeamSequence)  # sequences come whole


def test_unknown_bulk_data_is_404(api_client):
    _, path = stored(api_client, "CT_small.dcm")
    assert api_client.get(f"{path}/bulkdata/00291010x").status_code == 404
    assert api_client.get(f"{path}/bulkdata/60003000").status_code == 404


def test_metadata_as_xml_is_406(api_client):
    _, path = stored(api_client, "CT_small.dcm")
    response = api_client.get(
        f"{path}/metadata", headers={"Accept": "multipart/related; type=application/dicom+xml"}
    )
    assert response.status_code == 406


def test_metadata_values_for_numbers(api_client):
    ds, path = stored(api_client, "MR_small.dcm")
    (item,) = api_client.get(f"{path}/metadata").json()
    assert value(item, "00281050") == float(ds.WindowCenter)
    assert np.isclose(value(item, "00180050"), float(ds.SliceThickness))
