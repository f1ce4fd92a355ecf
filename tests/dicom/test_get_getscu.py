"""C-GET against the running node with DCMTK getscu: instances come back on the same association.

The node is the session's `dicom_node` process; getscu takes the SCP role for the storage SOP
classes it proposes (SCP/SCU role selection) and writes what it receives bit-preserving (+B).
Checked: uncompressed and compressed instances arrive as stored when getscu accepts their
transfer syntax; a compressed one it did not accept fails cleanly (failed sub-operation, nothing
transcoded); a calling AE without allow_get (0xC001); a bad level (0xA900).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.dicom.conftest import DicomNode, run_dcmtk
from tests.dicom.qr_support import (
    counter,
    dataset_bytes,
    files_by_sop_uid,
    final_status,
    store,
    transfer_syntax_samples,
    uid,
    write,
)

STUDY = "get-study"


@pytest.fixture(scope="module")
def sources(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[dict[str, Path]]:
    from integrations.dicom.models import RemoteAE
    from tests.dicom.qr_support_db import clear_index, quiet_study_tasks

    folder = tmp_path_factory.mktemp("get-sources")
    files: dict[str, Path] = {}
    with django_db_blocker.unblock():
        with quiet_study_tasks():
            clear_index()
            for label, ds in transfer_syntax_samples(STUDY, patient_id="GETPAT").items():
                files[label] = write(ds, folder)
                store(ds, folder / "stored")
        RemoteAE.objects.create(
            ae_title="NOGET", host="127.0.0.1", port=104, allow_get=False, allow_find=True
        )
        yield files
        clear_index()


@pytest.fixture(scope="module")
def node(sources, dicom_node: DicomNode) -> DicomNode:
    return dicom_node


def getscu(node: DicomNode, folder: Path, *keys: str, options: tuple = ()) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    args = [
        "-d",
        "-S",
        "-aet",
        "GETSCU",
        "-aec",
        node.aet,
        "-od",
        str(folder),
        "+B",
        *options,
        node.host,
        str(node.port),
    ]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk("getscu", *args, timeout=120)
    return result.stdout + result.stderr


def series_keys(label: str) -> tuple[str, ...]:
    return (
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={uid(STUDY)}",
        f"SeriesInstanceUID={uid(f'{STUDY}/{label}')}",
    )


def test_get_instance_as_stored(node: DicomNode, sources, tmp_path: Path) -> None:
    output = getscu(node, tmp_path, *series_keys("explicit-le"))
    assert final_status(output).startswith("0x0000"), output[-3000:]
    assert counter(output, "Completed Suboperations") == 1
    original = dcmread(sources["explicit-le"], stop_before_pixels=True)
    arrived = files_by_sop_uid(tmp_path)[str(original.SOPInstanceUID)]
    assert dcmread(arrived).file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert dataset_bytes(arrived) == dataset_bytes(sources["explicit-le"])


@pytest.mark.parametrize("label", ["implicit-le", "deflated"])
def test_get_converts_little_endian_uncompressed_data(
    node: DicomNode, sources, tmp_path: Path, label: str
) -> None:
    """getscu proposes one context per SOP class and our node accepts its first choice, Explicit
    VR Little Endian: implicit VR and deflated instances are converted (same elements, values)."""
    output = getscu(node, tmp_path, *series_keys(label))
    assert final_status(output).startswith("0x0000"), output[-3000:]
    original = dcmread(sources[label])
    arrived = dcmread(files_by_sop_uid(tmp_path)[str(original.SOPInstanceUID)])
    assert arrived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert arrived.PixelData == original.PixelData
    assert {elem.tag: elem.value for elem in arrived if elem.tag != 0x7FE00010} == {
        elem.tag: elem.value for elem in original if elem.tag != 0x7FE00010
    }


def test_get_jpeg2000_when_the_requestor_accepts_it(node: DicomNode, sources, tmp_path: Path) -> None:
    output = getscu(node, tmp_path, *series_keys("jpeg2000"), options=("+xw",))  # prefer JPEG 2000 lossy
    assert final_status(output).startswith("0x0000"), output[-3000:]
    original = dcmread(sources["jpeg2000"])
    arrived = files_by_sop_uid(tmp_path)[str(original.SOPInstanceUID)]
    assert dcmread(arrived).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    assert dataset_bytes(arrived) == dataset_bytes(sources["jpeg2000"])


def test_get_compressed_instance_the_requestor_did_not_accept_fails_cleanly(
    node: DicomNode, sources, tmp_path: Path
) -> None:
    output = getscu(node, tmp_path, *series_keys("jpeg2000"))  # uncompressed syntaxes only
    assert final_status(output).startswith("0xa702"), output[-3000:]  # all sub-operations failed
    assert counter(output, "Failed Suboperations") == 1
    assert files_by_sop_uid(tmp_path) == {}
    assert "which the peer did not accept, and compressed data is not transcoded" in node.log()


def test_get_whole_study_mixes_successes_and_failures(node: DicomNode, sources, tmp_path: Path) -> None:
    output = getscu(node, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xb000"), output[-3000:]  # Warning: one or more failed
    received = files_by_sop_uid(tmp_path)
    # getscu accepts Explicit VR Little Endian per SOP class: the little endian uncompressed
    # instances come (converted where needed); big endian (not converted) and compressed ones fail.
    expected = {"explicit-le", "implicit-le", "deflated"}
    assert {
        str(dcmread(sources[label], stop_before_pixels=True).SOPInstanceUID) for label in expected
    } == set(received)
    assert counter(output, "Failed Suboperations") == len(sources) - len(expected)


def test_invalid_level(node: DicomNode, tmp_path: Path) -> None:
    output = getscu(node, tmp_path, "QueryRetrieveLevel=FRAME", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xa900"), output[-3000:]
    assert "QueryRetrieveLevel 'FRAME' is invalid for Study Root" in output


def test_calling_ae_without_allow_get(node: DicomNode) -> None:
    """NOGET may query but not get: C-GET refused with 0xC001 and a comment (pynetdicom client)."""
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import (
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ae = AE(ae_title="NOGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        node.host, node.port, ae_title=node.aet, ext_neg=[build_role(CTImageStorage, scp_role=True)]
    )
    assert assoc.is_established
    try:
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.StudyInstanceUID = uid(STUDY)
        responses = list(assoc.send_c_get(request, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    status, _ = responses[-1]
    assert status.Status == 0xC001
    assert status.ErrorComment == "AE NOGET is not permitted to C-GET"
