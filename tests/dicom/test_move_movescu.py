"""C-MOVE against the running node with DCMTK movescu, to DCMTK storescp destinations.

The node is its own process (`manage.py dicom_scp`, the session's `dicom_node`); the destinations are storescp processes
(bit-preserving: their files hold each data set exactly as it arrived) configured as remote AEs.
The study sent holds one instance per transfer syntax (pydicom's test files: little and big
endian, implicit, deflated, JPEG baseline / extended / JPEG-LS / JPEG 2000 / RLE) plus plain CT
images. Checked: instances arrive as stored (same transfer syntax, same data set bytes); an
uncompressed-only destination gets the uncompressed ones converted and the compressed ones fail
(0xB000 with the failed SOP Instance UIDs); unknown or disallowed destinations (0xA801); a
calling AE without allow_move (0xC001); a bad level (0xA900).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.dicom.conftest import DicomNode, run_dcmtk
from tests.dicom.qr_support import (
    COMPRESSED_LABELS,
    StoreScp,
    counter,
    dataset_bytes,
    final_status,
    make_image,
    start_storescp,
    store,
    transfer_syntax_samples,
    uid,
    write,
)
from tests.processes import ProcessLauncher

STUDY = "move-study"


@pytest.fixture(scope="module")
def sources(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The study as stored on the node: label -> the file the node received."""
    from tests.dicom.qr_support_db import clear_index, quiet_study_tasks

    folder = tmp_path_factory.mktemp("move-sources")
    files: dict[str, Path] = {}
    with django_db_blocker.unblock():
        with quiet_study_tasks():
            clear_index()
            for label, ds in transfer_syntax_samples(STUDY).items():
                files[label] = write(ds, folder)
                store(ds, folder / "stored")
            for number in (1, 2):
                ct = make_image(
                    patient_id="TSPAT",
                    patient_name="Syntax^Samples",
                    study=STUDY,
                    series="ct",
                    instance=number,
                )
                files[f"ct-{number}"] = write(ct, folder)
                store(ct, folder / "stored")
        yield files
        clear_index()


@pytest.fixture(scope="module")
def destinations(
    sources, process_launcher: ProcessLauncher, tmp_path_factory, django_db_blocker
) -> Iterator[dict[str, StoreScp]]:
    from integrations.dicom.models import RemoteAE

    started = {
        "ALLSYNTAXES": start_storescp(process_launcher, tmp_path_factory.mktemp("all"), "ALLSYNTAXES", "+xa"),
        "UNCOMPRESSED": start_storescp(process_launcher, tmp_path_factory.mktemp("uncompr"), "UNCOMPRESSED"),
        "IMPLICITONLY": start_storescp(
            process_launcher, tmp_path_factory.mktemp("implicit"), "IMPLICITONLY", "+xi"
        ),
    }
    with django_db_blocker.unblock():
        for aet, scp in started.items():
            RemoteAE.objects.create(ae_title=aet, host="127.0.0.1", port=scp.port, allow_move=True)
        RemoteAE.objects.create(
            ae_title="NOTDEST", host="127.0.0.1", port=started["ALLSYNTAXES"].port, allow_move=False
        )
        RemoteAE.objects.create(
            ae_title="NOMOVE", host="127.0.0.1", port=104, allow_move=False, allow_find=True
        )
    yield started
    for scp in started.values():
        scp.stop()


@pytest.fixture(scope="module")
def node(destinations, dicom_node: DicomNode) -> DicomNode:
    """The node process (`dicom_node`, tests/dicom/conftest.py), once data and peers are committed."""
    return dicom_node


def movescu(node: DicomNode, destination: str, *keys: str, model: str = "-S", aet: str = "MOVESCU") -> str:
    args = ["-d", model, "-aet", aet, "-aec", node.aet, "-aem", destination, node.host, str(node.port)]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk("movescu", *args, timeout=120)
    return result.stdout + result.stderr


def test_move_study_sends_every_instance_as_stored(node: DicomNode, destinations, sources) -> None:
    output = movescu(node, "ALLSYNTAXES", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0x0000"), output[-3000:]
    assert counter(output, "Completed Suboperations") == len(sources)
    received = destinations["ALLSYNTAXES"].received()
    for label, source in sources.items():
        original = dcmread(source, stop_before_pixels=True)
        arrived = received[str(original.SOPInstanceUID)]
        assert dcmread(arrived).file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, label
        # The data set as the node received it: same elements, same encoded values, same pixel data.
        assert dataset_bytes(arrived) == dataset_bytes(source), label


def test_uncompressed_only_destination_gets_conversions_and_failures(
    node: DicomNode, destinations, sources
) -> None:
    output = movescu(node, "UNCOMPRESSED", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xb000"), output[-3000:]  # Warning: some sub-operations failed
    compressed = {label for label in sources if label in COMPRESSED_LABELS}
    assert counter(output, "Failed Suboperations") == len(compressed)
    assert counter(output, "Completed Suboperations") == len(sources) - len(compressed)
    failed_uids = {uid(f"{STUDY}/{label}/1") for label in compressed}
    for failed in failed_uids:
        assert failed in output  # FailedSOPInstanceUIDList of the final response
    received = destinations["UNCOMPRESSED"].received()
    assert failed_uids.isdisjoint(received)
    for label in ("explicit-le", "implicit-le", "explicit-be", "deflated", "ct-1"):
        original = dcmread(sources[label])
        arrived = dcmread(received[str(original.SOPInstanceUID)])
        assert arrived.PixelData == original.PixelData or label == "explicit-be", label
        assert arrived.PatientName == original.PatientName


def test_implicit_only_destination_gets_converted_data(node: DicomNode, destinations, sources) -> None:
    output = movescu(
        node,
        "IMPLICITONLY",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={uid(STUDY)}",
        f"SeriesInstanceUID={uid(f'{STUDY}/explicit-le')}",
    )
    assert final_status(output).startswith("0x0000"), output[-3000:]
    original = dcmread(sources["explicit-le"])
    arrived = dcmread(destinations["IMPLICITONLY"].received()[str(original.SOPInstanceUID)])
    assert arrived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert arrived.PixelData == original.PixelData
    assert arrived.Rows == original.Rows


def test_move_single_instances_in_patient_root(node: DicomNode, destinations) -> None:
    wanted = uid(f"{STUDY}/ct/2")
    output = movescu(
        node,
        "ALLSYNTAXES",
        "QueryRetrieveLevel=IMAGE",
        "PatientID=TSPAT",
        f"StudyInstanceUID={uid(STUDY)}",
        f"SeriesInstanceUID={uid(f'{STUDY}/ct')}",
        f"SOPInstanceUID={wanted}",
        model="-P",
    )
    assert final_status(output).startswith("0x0000"), output[-3000:]
    assert counter(output, "Completed Suboperations") == 1


def test_unknown_destination(node: DicomNode) -> None:
    output = movescu(node, "NOSUCHAE", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xa801"), output[-3000:]  # Move destination unknown
    assert "C-MOVE from MOVESCU: move destination 'NOSUCHAE' unknown" in node.log()


def test_destination_without_allow_move_is_unknown(node: DicomNode) -> None:
    output = movescu(node, "NOTDEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xa801"), output[-3000:]


def test_invalid_level_and_missing_unique_key(node: DicomNode) -> None:
    output = movescu(node, "ALLSYNTAXES", "QueryRetrieveLevel=FRAME", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xa900"), output[-3000:]
    assert "QueryRetrieveLevel 'FRAME' is invalid for Study Root" in output
    output = movescu(node, "ALLSYNTAXES", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uid(STUDY)}")
    assert final_status(output).startswith("0xa900"), output[-3000:]
    assert "SERIES level retrieve needs SeriesInstanceUID" in output


def test_no_match_is_success_with_nothing_sent(node: DicomNode) -> None:
    output = movescu(node, "ALLSYNTAXES", "QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.4.5")
    assert final_status(output).startswith("0x0000"), output[-3000:]
    assert counter(output, "Completed Suboperations") == 0


def test_calling_ae_without_allow_move(node: DicomNode) -> None:
    """NOMOVE may query but not move: its C-MOVE is refused with 0xC001 and a comment (the client
    is pynetdicom, proposing C-FIND too so that the association itself is allowed)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    )

    ae = AE(ae_title="NOMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(node.host, node.port, ae_title=node.aet)
    assert assoc.is_established
    try:
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.StudyInstanceUID = uid(STUDY)
        responses = list(
            assoc.send_c_move(request, "ALLSYNTAXES", StudyRootQueryRetrieveInformationModelMove)
        )
    finally:
        assoc.release()
    status, _ = responses[-1]
    assert status.Status == 0xC001
    assert status.ErrorComment == "AE NOMOVE is not permitted to C-MOVE"
