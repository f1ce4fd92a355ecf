"""DCMTK `storescu` as the modality: every transfer syntax it sends is stored exactly as sent.

What `storescu` puts on the wire is not always the file's bytes (DCMTK re-encodes: it drops data
set trailing padding, for instance), so "exactly as sent" is checked against a reference: the same
`storescu` invocation into DCMTK's own `storescp --bit-preserving`, which writes the received data
set bit for bit. The node's stored data set must equal the reference byte for byte, in the file's
own transfer syntax (no conversion on either side), and the index must hold the instance.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from integrations.dicom import services
from integrations.dicom.dataset_check import read_file_meta
from integrations.dicom.models import DicomPatient, Instance, Series, Study
from tests.dicom.conftest import DicomNode, pydicom_file, run_dcmtk
from tests.dicom.store_support import UID_PREFIX, dataset_bytes
from tests.processes import ProcessLauncher, free_port

pytestmark = pytest.mark.django_db(transaction=True)

# (pydicom test file, the storescu option that proposes its transfer syntax first)
CASES = [
    ("CT_small.dcm", "-xe"),  # Explicit VR Little Endian, CT
    ("MR_small.dcm", "-xe"),  # Explicit VR Little Endian, MR
    ("MR_small_implicit.dcm", "-xi"),  # Implicit VR Little Endian
    ("MR_small_bigendian.dcm", "-xb"),  # Explicit VR Big Endian
    ("SC_rgb_small_odd_big_endian.dcm", "-xb"),  # Explicit VR Big Endian, odd lengths
    ("MR_small_RLE.dcm", "-xr"),  # RLE Lossless
    ("SC_rgb_rle_16bit_2frame.dcm", "-xr"),  # RLE Lossless, multi-frame colour
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG Baseline (Process 1)
    ("examples_ybr_color.dcm", "-xy"),  # JPEG Baseline, YBR, multi-frame
    ("JPGExtended.dcm", "-xx"),  # JPEG Extended (Process 2 and 4)
    ("SC_rgb_jpeg_gdcm.dcm", "-xs"),  # JPEG Lossless, SV1 (Process 14)
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS Lossless
    ("JPEGLSNearLossless_16.dcm", "-xu"),  # JPEG-LS near-lossless (UIDs added, see _input_file)
    ("MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 lossless
    ("JPEG2000.dcm", "-xw"),  # JPEG 2000
    ("image_dfl.dcm", "-xd"),  # Deflated Explicit VR Little Endian
    ("rtdose.dcm", "-xi"),  # RT Dose, multi-frame
    ("test-SR.dcm", "-xe"),  # Structured report (nested sequences)
    ("waveform_ecg.dcm", "-xe"),  # 12-lead ECG waveform
    ("liver_1frame.dcm", "-xe"),  # Segmentation
]


class ReferenceScp:
    """DCMTK `storescp --bit-preserving --accept-all` writing what it receives into a folder."""

    def __init__(self, launcher: ProcessLauncher, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process = launcher.start(
            "storescp-reference",
            ["storescp", "+B", "+xa", "-aet", "REFERENCE", "-od", str(folder), str(self.port)],
            {"PATH": "/usr/bin:/bin:/usr/local/bin"},
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > deadline or not self.process.running():
                self.process.fail("storescp did not start listening")
            time.sleep(0.1)

    def receive(self, path: Path, propose: str, sop_instance_uid: str) -> Path:
        """Send `path` with `storescu -R <propose>` and return the file storescp wrote."""
        for old in self.folder.glob(f"*{sop_instance_uid}*"):
            old.unlink()
        result = run_dcmtk(
            "storescu", "-R", propose, "-aec", "REFERENCE", "127.0.0.1", str(self.port), str(path)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (received,) = self.folder.glob(f"*{sop_instance_uid}*")
        return received


@pytest.fixture(scope="module")
def reference_scp(
    process_launcher: ProcessLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReferenceScp]:
    scp = ReferenceScp(process_launcher, tmp_path_factory.mktemp("storescp-reference"))
    yield scp
    scp.process.stop()


def _input_file(name: str, folder: Path) -> Path:
    """The pydicom test file; a copy with Study / Series Instance UIDs where it has none (pydicom's
    JPEG-LS near-lossless files lack them; the pixel data stays as encoded)."""
    path = pydicom_file(name)
    ds = dcmread(path)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return path
    ds.StudyInstanceUID = generate_uid(prefix=UID_PREFIX, entropy_srcs=[name, "study"])
    ds.SeriesInstanceUID = generate_uid(prefix=UID_PREFIX, entropy_srcs=[name, "series"])
    ds.save_as(folder / name, enforce_file_format=True)
    return folder / name


@pytest.mark.parametrize(("name", "propose"), CASES, ids=[name for name, _ in CASES])
def test_storescu_instance_is_stored_exactly_as_sent_and_indexed(
    dicom_node: DicomNode, reference_scp: ReferenceScp, name: str, propose: str, tmp_path: Path
) -> None:
    path = _input_file(name, tmp_path)
    header = dcmread(path, stop_before_pixels=True)
    uid = str(header.SOPInstanceUID)

    result = run_dcmtk(
        "storescu", "-v", "-R", propose, "-aet", "MODALITY", "-aec", dicom_node.aet,
        dicom_node.host, str(dicom_node.port), str(path),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Store Response (Success)" in output, output

    stored = services.instance_file(uid)
    reference = reference_scp.receive(path, propose, uid)
    # The transfer syntax the modality's file is in: nobody converted anything.
    assert stored.transfer_syntax_uid == read_file_meta(path).transfer_syntax_uid
    assert read_file_meta(stored.path).transfer_syntax_uid == stored.transfer_syntax_uid
    # The data set exactly as DCMTK sent it (its bit-preserving storescp got the same bytes).
    assert dataset_bytes(stored.path) == dataset_bytes(reference)
    assert stored.size == stored.path.stat().st_size

    instance = Instance.objects.select_related("series__study__patient").get(sop_instance_uid=uid)
    assert instance.sop_class_uid == header.SOPClassUID
    assert instance.calling_ae == "MODALITY"
    assert instance.tags["00080018"] == {"vr": "UI", "Value": [uid]}
    series, study = instance.series, instance.series.study
    assert series.series_instance_uid == header.SeriesInstanceUID
    assert series.modality == header.get("Modality", "")
    assert series.number_of_instances == 1
    assert study.study_instance_uid == header.StudyInstanceUID
    assert (study.number_of_series, study.number_of_instances) == (1, 1)
    assert study.patient.patient_id == str(header.get("PatientID", ""))
    assert Study.objects.count() == Series.objects.count() == DicomPatient.objects.count() == 1


def test_one_association_many_instances_and_a_resend(dicom_node: DicomNode, tmp_path: Path) -> None:
    """A whole folder over one association; sending it again changes nothing (duplicate policy keep)."""
    from tests.dicom.store_support import make_ct, new_uid, write_part10

    study, series = new_uid(), new_uid()
    for number in range(1, 11):
        write_part10(
            make_ct(study_uid=study, series_uid=series, instance_number=number), tmp_path / f"{number}.dcm"
        )
    args = [
        "-aet",
        "MODALITY",
        "-aec",
        dicom_node.aet,
        "+sd",
        dicom_node.host,
        str(dicom_node.port),
        str(tmp_path),
    ]

    first = run_dcmtk("storescu", "-v", *args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(re.findall(r"Received Store Response \(Success\)", first.stdout + first.stderr)) == 10
    keys = dict(Instance.objects.values_list("sop_instance_uid", "storage_key"))
    assert len(keys) == 10
    stored = Study.objects.get(study_instance_uid=study)
    assert (stored.number_of_series, stored.number_of_instances) == (1, 10)
    assert list(
        Instance.objects.filter(series__series_instance_uid=series)
        .order_by("instance_number")
        .values_list("instance_number", flat=True)
    ) == list(range(1, 11))

    again = run_dcmtk("storescu", "-v", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(re.findall(r"Received Store Response \(Success\)", again.stdout + again.stderr)) == 10
    assert dict(Instance.objects.values_list("sop_instance_uid", "storage_key")) == keys
    stored.refresh_from_db()
    assert stored.number_of_instances == 10


@pytest.mark.parametrize("layout", ["one series over four associations", "a new series per association"])
def test_four_concurrent_associations_into_one_study(
    dicom_node: DicomNode, tmp_path: Path, layout: str
) -> None:
    """Four storescu processes at once into one study (as the benchmark sends): every instance is
    stored exactly once, the counters add up, and no association fails (the index writers take
    the study's row lock in one order, so they never deadlock)."""
    import threading

    from tests.dicom.store_support import make_ct, new_uid, write_part10

    study = new_uid()
    shared_series = new_uid()
    folders = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        series = shared_series if layout.startswith("one") else new_uid()
        for number in range(8):
            ds = make_ct(study_uid=study, series_uid=series, instance_number=sender * 8 + number)
            write_part10(ds, folder / f"{number}.dcm")
        folders.append(folder)
    results: list = []

    def send(folder: Path) -> None:
        results.append(
            run_dcmtk(
                "storescu", "+sd", "-aec", dicom_node.aet, dicom_node.host, str(dicom_node.port), str(folder)
            )
        )

    threads = [threading.Thread(target=send, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0] * 4, [r.stdout + r.stderr for r in results]
    stored = Study.objects.get(study_instance_uid=study)
    expected_series = 1 if layout.startswith("one") else 4
    assert (stored.number_of_series, stored.number_of_instances) == (expected_series, 32)
    assert Instance.objects.filter(series__study=stored).count() == 32
    assert sum(Series.objects.filter(study=stored).values_list("number_of_instances", flat=True)) == 32
    assert "deadlock" not in dicom_node.log()
