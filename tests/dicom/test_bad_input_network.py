"""Peers that misbehave on the wire: the association ends cleanly, nothing half-stored stays, and
the other associations keep working.

The node here runs with `BTT_DICOM_TIMEOUT=2` and `BTT_DICOM_MAX_PDU=16384`. The misbehaving
peer is a hand-driven association (`RawAssociation`: real sockets, real PDUs, sent whole, in part
or forged); the well-behaved ones are DCMTK's echoscu / storescu.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from integrations.dicom.models import Instance
from tests.dicom.conftest import DicomNode, run_dcmtk, start_node_process
from tests.dicom.store_support import (
    CT_IMAGE_STORAGE,
    RawAssociation,
    dataset_bytes,
    make_ct,
    storage_files,
    write_part10,
)
from tests.processes import ProcessLauncher, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 2
MAX_PDU = 16384
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def node(process_launcher: ProcessLauncher, test_database_env: dict[str, str]) -> Iterator[DicomNode]:
    started = start_node_process(
        process_launcher,
        test_database_env,
        name="dicom-node-network",
        BTT_DICOM_TIMEOUT=str(TIMEOUT),
        BTT_DICOM_MAX_PDU=str(MAX_PDU),
        BTT_DICOM_MAX_ASSOCIATIONS="4",
    )
    yield started
    started.stop()


def _echo(node: DicomNode) -> None:
    result = run_dcmtk("echoscu", "-aec", node.aet, node.host, str(node.port))
    assert result.returncode == 0, result.stdout + result.stderr


def _store(node: DicomNode, path: Path) -> None:
    result = run_dcmtk("storescu", "-aec", node.aet, node.host, str(node.port), str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _staged() -> list[Path]:
    return list((Path(settings.BTT_DICOM_STORAGE_DIR) / "incoming").glob("*"))


def test_abort_in_the_middle_of_a_data_set(node: DicomNode, tmp_path: Path) -> None:
    """Half of a 2 MB data set, then A-ABORT: nothing indexed, the partial file is removed."""
    ds = make_ct(rows=1024, columns=1024)
    path = write_part10(ds, tmp_path / "big.dcm")
    root = Path(settings.BTT_DICOM_STORAGE_DIR)
    before = storage_files(root)
    peer = RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])])
    pdus = peer.store_pdus(
        peer.context_for(CT_IMAGE_STORAGE), CT_IMAGE_STORAGE, ds.SOPInstanceUID, dataset_bytes(path)
    )
    assert len(pdus) > 100
    for pdu in pdus[: len(pdus) // 2]:
        peer.sock.sendall(pdu)
    wait_until(lambda: _staged(), 10, "the node to stage the data set it is receiving")
    peer.sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT (service user)
    peer.close()

    wait_until(
        lambda: "RAWSCU (127.0.0.1" in node.log() and "aborted" in node.log(), 10, "the abort to be logged"
    )
    wait_until(lambda: not _staged(), 10, "the partial data set to be removed")
    assert storage_files(root) == before
    assert not Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).exists()
    # The node goes on: the same instance sent properly is stored.
    _store(node, path)
    assert Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).exists()


def test_connection_dropped_in_the_middle_of_a_data_set(node: DicomNode, tmp_path: Path) -> None:
    """The peer closes the TCP connection mid-transfer (no A-ABORT): same clean end."""
    ds = make_ct(rows=512, columns=512)
    path = write_part10(ds, tmp_path / "img.dcm")
    peer = RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])])
    pdus = peer.store_pdus(
        peer.context_for(CT_IMAGE_STORAGE), CT_IMAGE_STORAGE, ds.SOPInstanceUID, dataset_bytes(path)
    )
    for pdu in pdus[:10]:
        peer.sock.sendall(pdu)
    peer.sock.sendall(pdus[10][:100])  # and a piece of the next PDU
    peer.close()
    wait_until(lambda: not _staged() and "RAWSCU" in node.log(), 15, "the node to drop the connection")
    assert not Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).exists()
    _echo(node)


def test_a_peer_that_connects_and_says_nothing_is_dropped(node: DicomNode) -> None:
    """No A-ASSOCIATE-RQ: closed after the timeout; meanwhile other peers are served."""
    with socket.create_connection((node.host, node.port)) as silent:
        started = time.monotonic()
        _echo(node)  # served while the silent connection is open
        silent.settimeout(TIMEOUT * 10)
        assert silent.recv(1024) == b""  # the node closed it
        elapsed = time.monotonic() - started
    assert TIMEOUT * 0.5 <= elapsed <= TIMEOUT * 8


def test_a_peer_that_stalls_inside_a_pdu_is_dropped(node: DicomNode, tmp_path: Path) -> None:
    """Associated, then a P-DATA-TF header announcing 4096 bytes and only 10 of them: dropped after
    the timeout, while stores from other peers go through."""
    peer = RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])])
    peer.sock.sendall(b"\x04\x00\x00\x00\x10\x00" + b"\x00" * 10)
    started = time.monotonic()
    other = write_part10(make_ct(), tmp_path / "other.dcm")
    _store(node, other)
    assert peer.closed_by_peer(TIMEOUT * 8)
    assert time.monotonic() - started <= TIMEOUT * 8
    _echo(node)


def test_a_stalled_association_does_not_block_the_others(node: DicomNode, tmp_path: Path) -> None:
    """Several peers stall at once (up to the association limit minus one): stores still work."""
    stalled = [RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]) for _ in range(2)]
    try:
        paths = [write_part10(make_ct(instance_number=n), tmp_path / f"{n}.dcm") for n in range(3)]
        for path in paths:
            _store(node, path)
        assert Instance.objects.count() == 3
    finally:
        for peer in stalled:
            peer.close()


def test_an_oversized_pdu_aborts_the_association(node: DicomNode) -> None:
    """A P-DATA-TF PDU longer than the maximum the node offered: A-ABORT and close, at once (the
    node does not read, let alone buffer, the announced 64 MB)."""
    peer = RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])])
    assert peer.peer_max_pdu == MAX_PDU
    started = time.monotonic()
    peer.sock.sendall(b"\x04\x00" + (64 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * 1024)
    pdu_type, _ = peer.read_pdu()
    assert pdu_type == 0x07  # A-ABORT
    assert peer.closed_by_peer(TIMEOUT * 4)
    assert time.monotonic() - started < TIMEOUT
    wait_until(
        lambda: "exceeds the 16384 this node accepts" in node.log(), 5, "the oversized PDU to be logged"
    )
    _echo(node)


def test_an_oversized_association_request_is_refused(node: DicomNode) -> None:
    """An A-ASSOCIATE-RQ announcing 2 GB: A-ABORT and close at once, without reading it."""
    assert _answer_to(node, b"\x01\x00\x7f\xff\xff\xff" + b"\x00" * 100) == A_ABORT
    wait_until(lambda: "PDU of 2147483647 bytes (type 0x01)" in node.log(), 5, "the refusal to be logged")
    _echo(node)


def test_garbage_instead_of_a_pdu(node: DicomNode) -> None:
    assert _answer_to(node, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == A_ABORT
    wait_until(lambda: "unknown PDU type 0x47 from 127.0.0.1" in node.log(), 5, "the refusal to be logged")
    _echo(node)


A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # A-ABORT PDU as pynetdicom sends it (AA-1)


def _answer_to(node: DicomNode, payload: bytes) -> bytes:
    """Everything the node sends back to `payload` until it closes the connection (within the timeout)."""
    started = time.monotonic()
    with socket.create_connection((node.host, node.port)) as sock:
        sock.sendall(payload)
        sock.settimeout(TIMEOUT * 8)
        received = b""
        while chunk := sock.recv(1024):
            received += chunk
    assert time.monotonic() - started < TIMEOUT, "the node should close at once, not wait for a timer"
    return received


def test_more_associations_than_allowed_are_rejected_transiently(node: DicomNode) -> None:
    """BTT_DICOM_MAX_ASSOCIATIONS=4: a fifth concurrent one is rejected (transient, local limit
    exceeded); once one ends, new ones are accepted again."""
    held = wait_until(lambda: _hold(node, 4), 15, "4 associations at once (earlier tests' ones to end)")
    try:
        with pytest.raises(
            AssertionError, match=r"association rejected: Rejected \(Transient\).*Local limit exceeded"
        ):
            RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])])
    finally:
        for peer in held:
            peer.release()
    wait_until(lambda: _try_echo(node), 10, "associations to be accepted again")


def _hold(node: DicomNode, count: int) -> list[RawAssociation] | None:
    """`count` open associations, or None (all closed again) when the node refused one."""
    held: list[RawAssociation] = []
    try:
        for _ in range(count):
            held.append(RawAssociation(node.host, node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]))
    except AssertionError:
        for peer in held:
            peer.release()
        return None
    return held


def _try_echo(node: DicomNode) -> bool:
    return run_dcmtk("echoscu", "-aec", node.aet, node.host, str(node.port)).returncode == 0


def _send_at_once(node: DicomNode, folders: list[Path]) -> None:
    """One storescu process per folder, all at once; every one succeeds."""
    results = []

    def send(folder: Path) -> None:
        results.append(run_dcmtk("storescu", "+sd", "-aec", node.aet, node.host, str(node.port), str(folder)))

    threads = [threading.Thread(target=send, args=(folder,)) for folder in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0] * len(folders), [r.stdout + r.stderr for r in results]


def test_concurrent_senders(node: DicomNode, tmp_path: Path) -> None:
    """Three storescu processes at once, 5 instances each, into one study: all 15 indexed once."""
    from tests.dicom.store_support import new_uid

    study = new_uid()
    folders = []
    for sender in range(3):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        series = new_uid()
        for number in range(5):
            write_part10(
                make_ct(study_uid=study, series_uid=series, instance_number=number), folder / f"{number}.dcm"
            )
        folders.append(folder)
    _send_at_once(node, folders)
    from integrations.dicom.models import Study

    stored = Study.objects.get(study_instance_uid=study)
    assert (stored.number_of_series, stored.number_of_instances) == (3, 15)
    assert Instance.objects.filter(series__study=stored).count() == 15


def test_concurrent_senders_starting_one_new_series(node: DicomNode, tmp_path: Path) -> None:
    """Four storescu processes at once, each with its own 4 instances of one series the node has
    not seen (a modality's batches over several associations): the first instances race to create
    patient, study and series; all 16 are indexed once, in one series, counted once."""
    from tests.dicom.store_support import new_uid

    study, series = new_uid(), new_uid()
    folders = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        for number in range(4):
            instance = make_ct(study_uid=study, series_uid=series, instance_number=sender * 4 + number)
            write_part10(instance, folder / f"{number}.dcm")
        folders.append(folder)
    _send_at_once(node, folders)
    from integrations.dicom.models import Series, Study

    stored = Study.objects.get(study_instance_uid=study)
    assert (stored.number_of_series, stored.number_of_instances) == (1, 16)
    assert Series.objects.get(series_instance_uid=series).number_of_instances == 16
    assert Instance.objects.filter(series__series_instance_uid=series).count() == 16
