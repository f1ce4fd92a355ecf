"""Bad data sets get a failure status with an error comment, and nothing is stored or indexed.

Senders: pynetdicom sending files as they are (so the node receives exactly the broken bytes),
a hand-driven association for a SOP class that was not negotiated, and DCMTK storescu.
After each refusal the storage holds no new file (nothing staged either) and the index no row,
and the node goes on serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from pydicom import dcmread

from integrations.dicom import services
from integrations.dicom.models import DicomPatient, Instance, Series, Study
from tests.dicom.conftest import DicomNode, pydicom_file, run_dcmtk
from tests.dicom.store_support import (
    CT_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    RawAssociation,
    corrupt_vr,
    dataset_bytes,
    make_ct,
    send_file_raw,
    storage_files,
    write_part10,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def nothing_stored(dicom_node: DicomNode):
    """Asserts, after the test, that no file was added to the instance storage (or left staged)
    and that the index is empty; then that the node still answers C-ECHO."""
    root = Path(settings.BTT_DICOM_STORAGE_DIR)
    before = storage_files(root)
    yield
    assert storage_files(root) == before
    assert not list((root / "incoming").glob("*")), "a staged file was left behind"
    assert Instance.objects.count() == Series.objects.count() == Study.objects.count() == 0
    assert DicomPatient.objects.count() == 0
    echo = run_dcmtk("echoscu", "-aec", dicom_node.aet, dicom_node.host, str(dicom_node.port))
    assert echo.returncode == 0, echo.stdout + echo.stderr


def _send(node: DicomNode, path: Path):
    return send_file_raw(node.host, node.port, path, called_ae=node.aet)


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    ("name", "comment"),
    [
        ("MR_truncated.dcm", "data set truncated: (7FE0,0010) needs 8192 bytes, 8130 remain"),
        ("rtplan_truncated.dcm", "data set truncated: (300A,00B0) needs 976 bytes, 711 remain"),
    ],
)
def test_truncated_data_set_cannot_be_understood(dicom_node: DicomNode, name: str, comment: str) -> None:
    status = _send(dicom_node, pydicom_file(name))
    assert status.Status == 0xC000  # Error: cannot understand
    assert status.ErrorComment == comment


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize("cut", [8, 700, -100])
def test_data_set_cut_anywhere_cannot_be_understood(dicom_node: DicomNode, tmp_path: Path, cut: int) -> None:
    """Cut inside an element header (8 bytes in), inside a value (700), inside Pixel Data (100 short)."""
    source = pydicom_file("CT_small.dcm")
    data = source.read_bytes()
    start = len(data) - len(dataset_bytes(source))
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(data[: start + cut] if cut > 0 else data[:cut])
    status = _send(dicom_node, broken)
    assert status.Status == 0xC000
    assert "truncated" in status.ErrorComment or "ends inside" in status.ErrorComment


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(("bad_vr", "shown"), [(b"ZZ", "'ZZ'"), (b"pn", "'pn'"), (b"\x00\x01", "0x0001")])
def test_invalid_vr_cannot_be_understood(
    dicom_node: DicomNode, tmp_path: Path, bad_vr: bytes, shown: str
) -> None:
    broken = corrupt_vr(pydicom_file("CT_small.dcm"), b"PN", b"\x10\x00\x10\x00", bad_vr, tmp_path / "vr.dcm")
    status = _send(dicom_node, broken)
    assert status.Status == 0xC001  # Error: cannot understand (invalid VR)
    assert status.ErrorComment == f"invalid VR {shown} in (0010,0010)"
    assert status.OffendingElement == 0x00100010


@pytest.mark.usefixtures("nothing_stored")
def test_invalid_vr_inside_a_sequence_item(dicom_node: DicomNode, tmp_path: Path) -> None:
    """The check walks nested items too: a bad VR in a code item of an SR content sequence."""
    source = pydicom_file("test-SR.dcm")
    # (0008,0100) Code Value SH, inside the Concept Name Code Sequence of a content item
    broken = corrupt_vr(source, b"SH", b"\x08\x00\x00\x01", b"Q?", tmp_path / "sr.dcm")
    status = _send(dicom_node, broken)
    assert status.Status == 0xC001
    assert status.ErrorComment == "invalid VR 'Q?' in (0008,0100)"


@pytest.mark.usefixtures("nothing_stored")
@pytest.mark.parametrize(
    ("remove", "comment"),
    [
        ("StudyInstanceUID", "missing Study Instance UID (0020,000D)"),
        ("SeriesInstanceUID", "missing Series Instance UID (0020,000E)"),
    ],
)
def test_missing_uids_cannot_be_understood(
    dicom_node: DicomNode, tmp_path: Path, remove: str, comment: str
) -> None:
    ds = make_ct()
    delattr(ds, remove)
    status = _send(dicom_node, write_part10(ds, tmp_path / "no-uid.dcm"))
    assert status.Status == 0xC002
    assert status.ErrorComment == comment


@pytest.mark.usefixtures("nothing_stored")
def test_missing_uids_from_dcmtk(dicom_node: DicomNode) -> None:
    """pydicom's JPEG-LS near-lossless sample has no Study / Series Instance UIDs: storescu gets a failure."""
    result = run_dcmtk(
        "storescu", "-d", "-R", "-xu", "-aet", "MODALITY", "-aec", dicom_node.aet,
        dicom_node.host, str(dicom_node.port), str(pydicom_file("JPEGLSNearLossless_16.dcm")),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "DIMSE Status                  : 0xc002: Error: Cannot understand" in output
    assert "[missing Study Instance UID (0020,000D)]" in output  # the Error Comment, in storescu -d


@pytest.mark.usefixtures("nothing_stored")
def test_sop_class_of_the_data_set_differs_from_the_request(dicom_node: DicomNode, tmp_path: Path) -> None:
    """The File Meta (so the C-STORE request) says MR Image Storage, the data set is a CT image."""
    ds = make_ct()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    status = _send(dicom_node, write_part10(ds, tmp_path / "mismatch.dcm", fix_meta=False))
    assert status.Status == 0xA900  # Error: data set does not match SOP class
    assert status.ErrorComment == "SOP Class UID of the data set differs from the request"


@pytest.mark.usefixtures("nothing_stored")
def test_sop_instance_of_the_data_set_differs_from_the_request(dicom_node: DicomNode) -> None:
    """pydicom's rtplan.dcm names another SOP Instance UID in its File Meta than in its data set."""
    status = _send(dicom_node, pydicom_file("rtplan.dcm"))
    assert status.Status == 0xC003
    assert status.ErrorComment == "SOP Instance UID of the data set differs from the request"


@pytest.mark.usefixtures("nothing_stored")
def test_sop_class_not_negotiated_is_refused(dicom_node: DicomNode, tmp_path: Path) -> None:
    """An MR image sent on the presentation context negotiated for CT Image Storage."""
    ds = make_ct(sop_class=MR_IMAGE_STORAGE)
    path = write_part10(ds, tmp_path / "mr.dcm")
    peer = RawAssociation(dicom_node.host, dicom_node.port, [(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])])
    try:
        for pdu in peer.store_pdus(
            peer.context_for(CT_IMAGE_STORAGE), MR_IMAGE_STORAGE, ds.SOPInstanceUID, dataset_bytes(path)
        ):
            peer.sock.sendall(pdu)
        status = peer.read_store_status()
    finally:
        peer.release()
    assert status.Status == 0x0122  # Refused: SOP class not supported
    assert status.ErrorComment == "SOP Class UID not negotiated on this presentation context"


def test_unsupported_abstract_syntax_is_not_accepted(dicom_node: DicomNode) -> None:
    """A context for a service the node does not offer (Modality Worklist) is rejected; the rest of the
    association works."""
    worklist = "1.2.840.10008.5.1.4.31"
    peer = RawAssociation(
        dicom_node.host,
        dicom_node.port,
        [(worklist, ["1.2.840.10008.1.2"]), (CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])],
    )
    try:
        assert [abstract for abstract, _ in peer.accepted.values()] == [CT_IMAGE_STORAGE]
    finally:
        peer.release()


def test_values_invalid_for_their_vr_are_stored(dicom_node: DicomNode, tmp_path: Path) -> None:
    """Invalid *values* (pydicom's badVR.dcm: IS "1A", empty DS) are common in real data and kept as
    received; only invalid VR codes and broken structure are refused."""
    # (A copy whose File Meta names the data set's own SOP Instance UID, which pydicom's file does not.)
    path = tmp_path / "badVR.dcm"
    dcmread(pydicom_file("badVR.dcm")).save_as(path, enforce_file_format=True)
    status = _send(dicom_node, path)
    assert status.Status == 0x0000
    instance = Instance.objects.get(sop_instance_uid=dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert dataset_bytes(services.instance_file(instance.sop_instance_uid).path) == dataset_bytes(path)
