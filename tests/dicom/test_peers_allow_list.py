"""Allow-list mode (`BTT_DICOM_ALLOW_UNKNOWN_AE=false`): unknown calling AEs are rejected at association
time with the standard reason, configured peers are let in (also ones added while the node runs), and
each operation is checked against the peer's permissions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from integrations.dicom.models import Instance, RemoteAE
from tests.dicom.conftest import DicomNode, run_dcmtk, start_node_process
from tests.dicom.store_support import make_ct, write_part10
from tests.processes import ProcessLauncher, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def node(process_launcher: ProcessLauncher, test_database_env: dict[str, str]) -> Iterator[DicomNode]:
    started = start_node_process(
        process_launcher, test_database_env, name="dicom-node-allow-list", BTT_DICOM_ALLOW_UNKNOWN_AE="false"
    )
    yield started
    started.stop()


def _echo(node: DicomNode, aet: str):
    return run_dcmtk("echoscu", "-v", "-aet", aet, "-aec", node.aet, node.host, str(node.port))


def test_unknown_calling_ae_is_rejected_with_the_reason(node: DicomNode) -> None:
    result = _echo(node, "STRANGER")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Association Rejected" in output
    assert "Result: Rejected Permanent, Source: Service User" in output
    assert "Reason: Calling AE Title Not Recognized" in output
    wait_until(
        lambda: (
            "association from STRANGER (127.0.0.1" in node.log()
            and "rejected: calling AE title not recognised (allow-list mode)" in node.log()
        ),
        5,
        "the rejection to be logged",
    )


def test_a_peer_added_while_the_node_runs_is_let_in(
    node: DicomNode, process_launcher, test_database_env
) -> None:
    assert _echo(node, "NEWPEER").returncode != 0
    added = process_launcher.manage(
        "add_dicom_peer", "NEWPEER", "127.0.0.1", "104", "--allow", "store", env=test_database_env
    )
    assert added.returncode == 0, added.stderr
    result = _echo(node, "NEWPEER")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_peer_may_store_when_allowed(node: DicomNode, tmp_path: Path) -> None:
    RemoteAE.objects.create(ae_title="CT1", host="127.0.0.1", port=104, allow_store=True)
    path = write_part10(make_ct(), tmp_path / "ct.dcm")
    result = run_dcmtk("storescu", "-aet", "CT1", "-aec", node.aet, node.host, str(node.port), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert Instance.objects.get().calling_ae == "CT1"


def test_a_peer_without_store_proposing_only_storage_is_rejected(node: DicomNode, tmp_path: Path) -> None:
    """It may do none of what it proposes: rejected at association time."""
    RemoteAE.objects.create(ae_title="VIEWER", host="127.0.0.1", port=104, allow_store=False, allow_get=False)
    path = write_part10(make_ct(), tmp_path / "ct.dcm")
    result = run_dcmtk(
        "storescu", "-R", "-aet", "VIEWER", "-aec", node.aet, node.host, str(node.port), str(path)
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Association Rejected" in output
    assert "Result: Rejected Permanent, Source: Service User" in output
    wait_until(
        lambda: "rejected: the AE may do none of what it proposes" in node.log(), 5, "the rejection log"
    )
    assert not Instance.objects.exists()


def test_a_c_store_from_a_peer_without_store_is_refused(node: DicomNode) -> None:
    """The association is accepted (the peer proposes Verification too); the C-STORE is refused
    with 0x0124 and a comment."""
    RemoteAE.objects.create(
        ae_title="QUERYONLY", host="127.0.0.1", port=104, allow_store=False, allow_find=True
    )
    ae = AE(ae_title="QUERYONLY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(node.host, node.port, ae_title=node.aet)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        status = assoc.send_c_store(make_ct())
    finally:
        assoc.release()
    assert status.Status == 0x0124  # Refused: not authorised
    assert status.ErrorComment == "AE QUERYONLY is not allowed to store here"
    assert not Instance.objects.exists()
