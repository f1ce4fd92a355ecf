"""Helpers (no tests) for the DICOMweb tests (tests/dicom/test_dicomweb_*.py).

- `dicomweb_storage`: a fixture pointing the instance storage at a fresh temporary folder.
- `make_reader_client()`: a test client with a `reader` API client's token (may read, not store).
- `sample_file(name)`: a pydicom test file (`pydicom.data.get_testdata_file`) as a Path;
  `sample_bytes(name)` its content as the tests store it;
  `TRANSFER_SYNTAX_FILES` names one per transfer syntax the node must handle.
- `make_instance(...)`: a small synthetic image (bytes of a Part 10 file) with the attributes
  the QIDO tests match on; `with_new_uids(path)` re-identifies a test file (so variants of the
  same image can be stored together).
- `multipart_body(parts)` / `stow(client, parts, study=None)`: a STOW-RS request;
  `read_multipart(response)`: the parts of a multipart response (parsed independently of
  the server's own multipart code).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.test import Client
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from btt_health.api_auth.services import create_api_client
from tests.conftest import BearerClient

DICOM_JSON = "application/dicom+json"
BOUNDARY = "test-boundary-7c1d"
UID_ROOT = "1.2.826.0.1.3680043.10.1056."

# One pydicom test file per stored transfer syntax the node decodes.
TRANSFER_SYNTAX_FILES = {
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",  # implicit VR little endian
    "1.2.840.10008.1.2.1": "CT_small.dcm",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",  # deflated
    "1.2.840.10008.1.2.2": "MR_small_bigendian.dcm",  # explicit VR big endian
    "1.2.840.10008.1.2.4.50": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline (YBR_FULL)
    "1.2.840.10008.1.2.4.51": "JPGExtended.dcm",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless (no study UID)
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",  # JPEG 2000
    "1.2.840.10008.1.2.5": "MR_small_RLE.dcm",  # RLE lossless
}


def sample_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def sample_bytes(name: str) -> bytes:
    """A pydicom test file as stored by the tests: unchanged, unless it lacks the study or series
    UID a stored instance needs (then re-identified with `with_new_uids`)."""
    path = sample_file(name)
    ds = dcmread(path, stop_before_pixels=True)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return path.read_bytes()
    return with_new_uids(path)


@pytest.fixture
def dicomweb_storage(settings, tmp_path: Path) -> Path:
    """The instance storage in a folder of this test's own."""
    folder = tmp_path / "dicom-storage"
    settings.BTT_DICOM_STORAGE_DIR = folder
    return folder


def make_reader_client() -> BearerClient:
    """A test client with the token of a new `reader` API client (call it in a db test)."""
    _, token = create_api_client("pytest-reader", "reader")
    return BearerClient(token)


def new_uid() -> str:
    return generate_uid(prefix=UID_ROOT)


def make_instance(
    *,
    patient_id: str = "P1",
    patient_name: str = "Doe^John",
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    modality: str = "CT",
    study_date: str = "20200115",
    study_time: str = "101500",
    accession: str = "",
    study_description: str = "",
    study_id: str = "",
    series_number: int = 1,
    instance_number: int = 1,
    referring: str = "",
    institution: str = "",
    patient_age: str = "",
    rows: int = 4,
    columns: int = 4,
    pixel_values: list[int] | None = None,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    request: tuple[str, str] | None = None,
) -> bytes:
    """A small CT-like image (16-bit unsigned; pixel values a ramp 0, 1, 2, ... unless given) as
    Part 10 bytes. `rescale` is (slope, intercept), `window` (center, width), `request` the
    (Scheduled Procedure Step ID, Requested Procedure ID) of a Request Attributes Sequence item."""
    sop_uid = sop_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = referring
    if institution:
        ds.InstitutionName = institution
    if patient_age:
        ds.PatientAge = patient_age
    if request is not None:
        item = Dataset()
        item.ScheduledProcedureStepID, item.RequestedProcedureID = request
        ds.RequestAttributesSequence = [item]
    ds.StudyDescription = study_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    pixels = pixel_values if pixel_values is not None else list(range(rows * columns))
    ds.PixelData = b"".join(int(v).to_bytes(2, "little") for v in pixels)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_new_uids(path: Path) -> bytes:
    """The test file with fresh study, series and SOP instance UIDs (encoding otherwise kept)."""
    ds = dcmread(path)
    ds.StudyInstanceUID = new_uid()
    ds.SeriesInstanceUID = new_uid()
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def multipart_body(parts: Iterable[bytes | tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    """A multipart/related body; a part is bytes (application/dicom) or (content type, bytes)."""
    out = bytearray()
    for part in parts:
        content_type, content = part if isinstance(part, tuple) else ("application/dicom", part)
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def stow_content_type(boundary: str = BOUNDARY) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: Client, parts: Iterable[bytes | tuple[str, bytes]], study: str | None = None):
    """POST the parts to /dicomweb/studies[/{study}] as STOW-RS; the response."""
    path = "/dicomweb/studies" + (f"/{study}" if study else "")
    return client.post(
        path, data=multipart_body(parts), content_type=stow_content_type(), headers={"Accept": DICOM_JSON}
    )


def body_of(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


def read_multipart(response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, content) of each part of a multipart/related response."""
    content_type = response["Content-Type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = None
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    assert boundary, content_type
    body = body_of(response)
    delimiter = b"--" + boundary.encode()
    assert body.startswith(delimiter), body[:80]
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--"), body[-80:]
    pieces = body.split(b"\r\n" + delimiter)
    pieces[0] = pieces[0][len(delimiter) :]
    parts = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break
        head, _, content = piece[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def value(item: dict, tag: str):
    """The first value of `tag` in a DICOM JSON object (None when absent or empty)."""
    element = item.get(tag) or {}
    values = element.get("Value") or [None]
    return values[0]


def values(items: list[dict], tag: str) -> list:
    return [value(item, tag) for item in items]


@dataclass
class Catalogue:
    """Three studies the QIDO tests match against (see `store_catalogue`)."""

    study_a: str
    study_b: str
    study_c: str
    series_a1: str  # CT, series number 1, instances 1 and 2
    series_a2: str  # MR, series number 2, instance 1
    series_b1: str  # MR
    series_c1: str  # US
    sops: dict[str, list[str]] = field(default_factory=dict)  # series UID -> SOP instance UIDs


def store_catalogue(client: Client) -> Catalogue:
    """STOW three studies in one request:

    - A: Doe^John (P1), 20200115 101500, ACC1, "Chest CT", referring House^Gregory, age 050Y,
      series 1 CT at "General Hospital", requested procedure RP1 / step SPS1 (2 instances),
      series 2 MR (1 instance)
    - B: Doe^Jane (P2), 20201231 235900, ACC2, "Head MR", series 1 MR (1 instance)
    - C: Smith^Anna (P3), 20210301 080000, ACC3, "Abdomen US", series 1 US (1 instance)
    """
    cat = Catalogue(*(new_uid() for _ in range(7)))
    specs = [
        (
            cat.study_a,
            cat.series_a1,
            1,
            "CT",
            1,
            dict(institution="General Hospital", request=("SPS1", "RP1")),
        ),
        (
            cat.study_a,
            cat.series_a1,
            1,
            "CT",
            2,
            dict(institution="General Hospital", request=("SPS1", "RP1")),
        ),
        (cat.study_a, cat.series_a2, 2, "MR", 1, {}),
        (cat.study_b, cat.series_b1, 1, "MR", 1, {}),
        (cat.study_c, cat.series_c1, 1, "US", 1, {}),
    ]
    studies = {
        cat.study_a: dict(
            patient_id="P1",
            patient_name="Doe^John",
            study_date="20200115",
            study_time="101500",
            accession="ACC1",
            study_description="Chest CT",
            referring="House^Gregory",
            patient_age="050Y",
            study_id="S-A",
        ),
        cat.study_b: dict(
            patient_id="P2",
            patient_name="Doe^Jane",
            study_date="20201231",
            study_time="235900",
            accession="ACC2",
            study_description="Head MR",
            study_id="S-B",
        ),
        cat.study_c: dict(
            patient_id="P3",
            patient_name="Smith^Anna",
            study_date="20210301",
            study_time="080000",
            accession="ACC3",
            study_description="Abdomen US",
            study_id="S-C",
        ),
    }
    parts = []
    for study_uid, series_uid, series_number, modality, number, extra in specs:
        sop = new_uid()
        cat.sops.setdefault(series_uid, []).append(sop)
        parts.append(
            make_instance(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop,
                modality=modality,
                series_number=series_number,
                instance_number=number,
                **studies[study_uid],
                **extra,
            )
        )
    response = stow(client, parts)
    assert response.status_code == 200, response.content
    return cat


def qido(client: Client, path: str) -> list[dict]:
    """The DICOM JSON answer of a QIDO-RS GET of `path` (asserting 200)."""
    response = client.get(path, headers={"Accept": DICOM_JSON})
    assert response.status_code == 200, response.content
    return response.json()
