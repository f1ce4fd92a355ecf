"""WADO-RS frames: .../instances/{sop}/frames/{list} as multipart/related;
type="application/octet-stream", each frame uncompressed (little endian), equal to the pixel
data pydicom decodes, whatever transfer syntax the instance is stored in."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread

from tests.dicom.test_dicomweb_support import (  # noqa: F401
    TRANSFER_SYNTAX_FILES,
    dicomweb_storage,
    read_multipart,
    sample_bytes,
    sample_file,
    stow,
    with_new_uids,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]

OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def store(client, data: bytes):
    assert stow(client, [data]).status_code == 200
    ds = dcmread(io.BytesIO(data))
    return (
        ds,
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
    )


def expected_frames(ds) -> list[bytes]:
    """Each frame as pydicom decodes it, as little-endian bytes."""
    array = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames == 1:
        array = array[np.newaxis, ...]
    if ds.get("PlanarConfiguration") == 1 and not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        array = array.transpose(0, 3, 1, 2)  # native colour-by-plane frames keep their layout
    return [np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("<"))).tobytes() for frame in array]


CASES = [
    *sorted(TRANSFER_SYNTAX_FILES.items()),
    ("1.2.840.10008.1.2.4.50 multi-frame", "examples_ybr_color.dcm"),  # 30 JPEG frames
    ("1.2.840.10008.1.2.5 multi-frame", "SC_rgb_rle_2frame.dcm"),
    ("1.2.840.10008.1.2.1 RGB", "SC_rgb_small_odd.dcm"),  # odd length
    ("1.2.840.10008.1.2.2 RGB", "SC_rgb_small_odd_big_endian.dcm"),  # 8-bit samples in OW words
    ("1.2.840.10008.1.2.2 planar RGB", "ExplVR_BigEnd.dcm"),  # colour-by-plane
]


@pytest.mark.parametrize(("syntax", "name"), CASES)
def test_frames_equal_the_decoded_pixel_data(api_client, syntax, name):
    ds, path = store(api_client, sample_bytes(name))
    expected = expected_frames(ds)
    numbers = sorted({1, len(expected)}, reverse=True)  # the last frame first: order as asked
    response = api_client.get(f"{path}/frames/{','.join(map(str, numbers))}", headers={"Accept": OCTET})
    assert response.status_code == 200, response.content if not response.streaming else ""
    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    parts = read_multipart(response)
    assert len(parts) == len(numbers)
    for number, (headers, content) in zip(numbers, parts, strict=True):
        assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        assert content == expected[number - 1], f"frame {number}"


def test_native_ybr_full_422_frames_keep_their_subsampling(api_client):
    ds, path = store(api_client, sample_bytes("SC_ybr_full_422_uncompressed.dcm"))
    ((_, content),) = read_multipart(api_client.get(f"{path}/frames/1"))
    assert content == ds.PixelData[: 100 * 100 * 2]  # Y Y Cb Cr for each pair of pixels


def test_native_multi_frame_frames_are_the_stored_bytes(api_client):
    data = with_new_uids(sample_file("rtdose.dcm"))  # implicit VR little endian, 15 frames of 10x10x32 bit
    ds, path = store(api_client, data)
    size = 10 * 10 * 4
    parts = read_multipart(api_client.get(f"{path}/frames/3,15,1"))
    assert [content for _, content in parts] == [ds.PixelData[(n - 1) * size : n * size] for n in (3, 15, 1)]


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "multipart/related; type=application/octet-stream", "application/octet-stream"],
)
def test_acceptable_requests(api_client, accept):
    ds, path = store(api_client, sample_bytes("CT_small.dcm"))
    response = api_client.get(f"{path}/frames/1", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200
    assert read_multipart(response)[0][1] == ds.PixelData


@pytest.mark.parametrize(
    "accept",
    [
        "multipart/related; type=image/jpeg",
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
    ],
)
def test_compressed_frames_are_not_offered(api_client, accept):
    _, path = store(api_client, sample_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    response = api_client.get(f"{path}/frames/1", headers={"Accept": accept})
    assert response.status_code == 406
    assert "uncompressed" in response.json()["message"]


@pytest.mark.parametrize(
    ("frames", "status", "named"), [("2", 404, "no frame 2"), ("0", 400, "'0'"), ("1,x", 400, "'x'")]
)
def test_bad_frame_numbers(api_client, frames, status, named):
    _, path = store(api_client, sample_bytes("CT_small.dcm"))
    response = api_client.get(f"{path}/frames/{frames}")
    assert response.status_code == status
    assert named in response.json()["message"]


def test_an_instance_without_pixel_data_has_no_frames(api_client):
    ds = dcmread(sample_file("rtplan.dcm"))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    _, path = store(api_client, buffer.getvalue())
    response = api_client.get(f"{path}/frames/1")
    assert response.status_code == 404
    assert "no pixel data" in response.json()["message"]
