"""Test data and helpers for the Query/Retrieve and SCU tests (test_find_*, test_move_*, test_get_*,
test_scu_*, test_orthanc_*).

`make_image(...)` builds a small CT image (a pydicom FileDataset with File Meta, 8x8 pixels);
`store(ds, folder)` writes it and stores it through `services.store_instance` exactly as the C-STORE
SCP does (so the index rows and their `tags` are the real thing). `CATALOGUE` is the patients,
studies and series the C-FIND tests match against; `store_catalogue(folder)` stores it.
`start_storescp(...)` runs a DCMTK storescp as a C-STORE destination; `transfer_syntax_samples`
makes one study of pydicom test files in ten transfer syntaxes.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.processes import ManagedProcess, ProcessLauncher, free_port

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.10.1055."  # a root for test UIDs


def uid(name: str) -> str:
    """A stable UID for a test entity name."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[name])


def make_image(
    *,
    patient_id: str,
    patient_name: str,
    study: str,
    series: str,
    instance: int,
    modality: str = "CT",
    study_date: str = "20200115",
    study_time: str = "101500",
    accession: str = "",
    study_description: str = "",
    series_number: int = 1,
    sop_class: str = CT_IMAGE_STORAGE,
    issuer: str = "",
    birth_date: str = "",
    sex: str = "",
    body_part: str = "",
    referring: str = "",
) -> FileDataset:
    """A small image (8x8, 16-bit, Explicit VR Little Endian) of the named study / series."""
    sop_uid = uid(f"{study}/{series}/{instance}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "1"
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = uid(f"{study}/{series}")
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyDescription = study_description
    ds.ReferringPhysicianName = referring
    ds.StudyID = study[:16]
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series
    if body_part:
        ds.BodyPartExamined = body_part
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = 8
    ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(128))
    return ds


def write(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def store_file(path: Path, calling_ae: str = "PYTEST"):
    """Store a DICOM file through the ingest service (a transactional test: it commits)."""
    from integrations.dicom import services

    return services.store_instance(path=path, calling_ae=calling_ae).instance


def store(ds: Dataset, folder: Path, calling_ae: str = "PYTEST"):
    return store_file(write(ds, folder), calling_ae)


@dataclass(frozen=True)
class Entry:
    patient_id: str
    patient_name: str
    study: str
    series: str
    instances: int
    modality: str
    study_date: str
    study_time: str
    accession: str
    description: str
    birth_date: str = ""
    sex: str = ""
    body_part: str = ""
    referring: str = ""


# Three patients, four studies, six series, eleven instances.
CATALOGUE = (
    Entry(
        "PAT001",
        "Doe^John",
        "study-a",
        "a-ct",
        3,
        "CT",
        "20200115",
        "101500",
        "ACC-100",
        "CT CHEST",
        "19700101",
        "M",
        "CHEST",
        "Who^Doctor",
    ),
    Entry(
        "PAT001",
        "Doe^John",
        "study-a",
        "a-sr",
        1,
        "SR",
        "20200115",
        "101500",
        "ACC-100",
        "CT CHEST",
        "19700101",
        "M",
    ),
    Entry(
        "PAT001",
        "Doe^John",
        "study-b",
        "b-mr",
        2,
        "MR",
        "20210610",
        "143000",
        "ACC-200",
        "MR HEAD",
        "19700101",
        "M",
        "HEAD",
    ),
    Entry(
        "PAT002",
        "Doe^Jane",
        "study-c",
        "c-ct",
        2,
        "CT",
        "20201231",
        "235959",
        "ACC-300",
        "CT ABDOMEN",
        "19800202",
        "F",
        "ABDOMEN",
    ),
    Entry(
        "PAT002",
        "Doe^Jane",
        "study-c",
        "c-ct2",
        1,
        "CT",
        "20201231",
        "235959",
        "ACC-300",
        "CT ABDOMEN",
        "19800202",
        "F",
        "ABDOMEN",
    ),
    Entry(
        "PAT003",
        "Müller^Jürgen",
        "study-d",
        "d-us",
        2,
        "US",
        "20190301",
        "080000",
        "ACC-400",
        "US ABDOMEN",
        "19550505",
        "M",
    ),
)


def catalogue_images() -> list[FileDataset]:
    images = []
    for entry in CATALOGUE:
        for number in range(1, entry.instances + 1):
            images.append(
                make_image(
                    patient_id=entry.patient_id,
                    patient_name=entry.patient_name,
                    study=entry.study,
                    series=entry.series,
                    instance=number,
                    modality=entry.modality,
                    study_date=entry.study_date,
                    study_time=entry.study_time,
                    accession=entry.accession,
                    study_description=entry.description,
                    series_number={"a-sr": 2, "c-ct2": 2}.get(entry.series, 1),
                    sop_class=MR_IMAGE_STORAGE if entry.modality == "MR" else CT_IMAGE_STORAGE,
                    birth_date=entry.birth_date,
                    sex=entry.sex,
                    body_part=entry.body_part,
                    referring=entry.referring,
                )
            )
    return images


def store_catalogue(folder: Path) -> list[FileDataset]:
    images = catalogue_images()
    for ds in images:
        store(ds, folder)
    return images


# --- DCMTK -------------------------------------------------------------------------------------------


def require_dcmtk(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"DCMTK tools missing: {', '.join(missing)} (scripts/test.sh installs the dcmtk package)")


def read_responses(folder: Path) -> list[Dataset]:
    """The C-FIND responses findscu wrote with `-X` / `--extract` (rsp*.dcm), in order."""
    return [dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


# --- Instances in many transfer syntaxes ---------------------------------------------------------------

# pydicom's test files, one per transfer syntax: (label, file).
TRANSFER_SYNTAX_SAMPLES = (
    ("explicit-le", "CT_small.dcm"),
    ("implicit-le", "MR_small_implicit.dcm"),
    ("explicit-be", "MR_small_bigendian.dcm"),
    ("deflated", "image_dfl.dcm"),
    ("jpeg-baseline", "SC_rgb_jpeg_dcmtk.dcm"),
    ("jpeg-extended", "JPGExtended.dcm"),
    ("jpeg-ls-lossless", "MR_small_jpeg_ls_lossless.dcm"),
    ("jpeg2000", "JPEG2000.dcm"),
    ("jpeg2000-lossless", "MR_small_jp2klossless.dcm"),
    ("rle", "MR_small_RLE.dcm"),
)
COMPRESSED_LABELS = {
    "jpeg-baseline",
    "jpeg-extended",
    "jpeg-ls-lossless",
    "jpeg2000",
    "jpeg2000-lossless",
    "rle",
}


def transfer_syntax_samples(study: str, patient_id: str = "TSPAT") -> dict[str, FileDataset]:
    """pydicom's test files, one per transfer syntax, made into one study (one series each) by
    new UIDs; their encoded pixel data is left exactly as it is (never decoded)."""
    from pydicom.data import get_testdata_file

    samples = {}
    for label, name in TRANSFER_SYNTAX_SAMPLES:
        ds = dcmread(get_testdata_file(name))
        ds.PatientID = patient_id
        ds.PatientName = "Syntax^Samples"
        ds.StudyInstanceUID = uid(study)
        ds.SeriesInstanceUID = uid(f"{study}/{label}")
        ds.SOPInstanceUID = uid(f"{study}/{label}/1")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = label
        samples[label] = ds
    return samples


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file: what follows its File Meta Information."""
    from integrations.dicom.dataset_check import read_file_meta

    with open(path, "rb") as handle:
        offset = read_file_meta(handle).dataset_offset
        handle.seek(offset)
        return handle.read()


def files_by_sop_uid(folder: Path) -> dict[str, Path]:
    """The DICOM files in `folder` (recursively), by SOP Instance UID."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            except Exception:
                continue
            if "SOPInstanceUID" in ds:
                found[str(ds.SOPInstanceUID)] = path
    return found


# --- DCMTK storescp as a C-STORE destination -----------------------------------------------------------


@dataclass
class StoreScp:
    """A DCMTK storescp process: where it listens and the folder it writes to."""

    process: ManagedProcess
    aet: str
    port: int
    folder: Path

    def received(self) -> dict[str, Path]:
        return files_by_sop_uid(self.folder)

    def stop(self) -> None:
        self.process.stop()


def start_storescp(
    launcher: ProcessLauncher, folder: Path, aet: str, *options: str, port: int | None = None
) -> StoreScp:
    """Run `storescp -aet AET -od folder +B OPTIONS port` (bit-preserving: files hold the data set
    exactly as it arrived) on `port` (default: a free one); ready (listening) when returned."""
    require_dcmtk("storescp")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = ["storescp", "-v", "-aet", aet, "-od", str(folder), "+B", *options, str(port)]
    process = launcher.start(f"storescp-{aet.lower()}", argv, {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if not process.running() or time.monotonic() > deadline:
            process.fail("storescp did not start listening")
        time.sleep(0.05)
    return StoreScp(process, aet, port, folder)


def assert_same_instance(received: Path, original: Path, label: str = "") -> None:
    """`received` holds the instance of `original`: same transfer syntax, same elements and values,
    same encoded pixel data. (For peers that re-encode what they store or send, like Orthanc with
    DCMTK: group lengths and data set trailing padding may go; nothing else may change.)"""
    ignored = {0xFFFCFFFC}  # Data Set Trailing Padding

    def elements(ds: Dataset) -> dict:
        return {int(e.tag): e.value for e in ds if e.tag.element != 0 and int(e.tag) not in ignored}

    a, b = dcmread(received), dcmread(original)
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID, label
    assert a.get("PixelData") == b.get("PixelData"), label
    assert elements(a) == elements(b), label


def final_status(output: str) -> str:
    """The last DIMSE status a DCMTK tool printed with `-d` (e.g. "0x0000: Success"), or ""."""
    statuses = re.findall(r"DIMSE Status\s*:\s*(0x[0-9a-f]{4}[^\n]*)", output)
    return statuses[-1].strip() if statuses else ""


def counter(output: str, name: str) -> int:
    """A sub-operation counter of the last C-MOVE / C-GET response a DCMTK tool printed (-1: none)."""
    values = re.findall(rf"{name}\s*:\s*(\d+)", output)
    return int(values[-1]) if values else -1
