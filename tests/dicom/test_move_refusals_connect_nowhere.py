"""A refused C-MOVE never connects to its destination; an allowed one still delivers.

The node is its own process (`manage.py dicom_scp`, the session's `dicom_node`). The destination
is a pynetdicom Storage SCP in this test process that records every TCP connection made to it,
every association and every instance it receives; it is configured as the remote AE RECORDER
(allow_move) and, on the same port, as NOTALLOWED (allow_move off). Each refusal is checked twice:
the requester gets the refusal status with its ErrorComment, and the recorder saw nothing at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from tests.dicom.conftest import DicomNode
from tests.dicom.qr_support import make_image, store, uid
from tests.processes import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # a wildcard UID

STUDY = "move-refusal-study"
STORED = [uid(f"{STUDY}/ct/1"), uid(f"{STUDY}/ct/2")]
# How long a destination gets to see a connection that the node should not have made. The node
# used to associate before it answered, so any connection shows up before the response arrives;
# the wait only covers the recorder's own thread noting it.
GRACE_SECONDS = 0.5


@dataclass
class Recorder:
    """A Storage SCP that records what reaches it."""

    port: int
    server: ThreadedAssociationServer | None = None
    connections: list[str] = field(default_factory=list)
    associations: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.connections.clear()
            self.associations.clear()
            self.received.clear()

    def nothing_reached(self) -> bool:
        time.sleep(GRACE_SECONDS)
        with self.lock:
            return not (self.connections or self.associations or self.received)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    record = Recorder(port=free_port())

    def on_connection(event) -> None:
        with record.lock:
            record.connections.append(str(event.address[0]))

    def on_association(event) -> None:
        with record.lock:
            record.associations.append(str(event.assoc.requestor.ae_title).strip())

    def on_store(event) -> int:
        with record.lock:
            record.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000  # Success

    ae = AE(ae_title="RECORDER")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    record.server = ae.start_server(
        ("127.0.0.1", record.port),
        block=False,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, on_connection),
            (evt.EVT_ACCEPTED, on_association),
            (evt.EVT_C_STORE, on_store),
        ],
    )
    yield record
    record.server.shutdown()


@pytest.fixture(scope="module")
def node(
    recorder: Recorder, dicom_node: DicomNode, django_db_setup, django_db_blocker, tmp_path_factory
) -> Iterator[DicomNode]:
    """The node (`dicom_node`), once the study and the remote AEs are committed."""
    from integrations.dicom.models import RemoteAE
    from tests.dicom.qr_support_db import clear_index, quiet_study_tasks

    folder = tmp_path_factory.mktemp("move-refusals")
    with django_db_blocker.unblock():
        with quiet_study_tasks():
            clear_index()
            for number in (1, 2):
                image = make_image(
                    patient_id="REFUSAL",
                    patient_name="Refusal^Test",
                    study=STUDY,
                    series="ct",
                    instance=number,
                )
                store(image, folder)
        RemoteAE.objects.create(ae_title="RECORDER", host="127.0.0.1", port=recorder.port, allow_move=True)
        RemoteAE.objects.create(ae_title="NOTALLOWED", host="127.0.0.1", port=recorder.port, allow_move=False)
        RemoteAE.objects.create(
            ae_title="NOMOVE", host="127.0.0.1", port=104, allow_find=True, allow_move=False
        )
        yield dicom_node
        clear_index()


@pytest.fixture
def destination(recorder: Recorder) -> Recorder:
    recorder.clear()
    return recorder


def move(node: DicomNode, destination_aet: str, identifier: Dataset, calling_aet: str = "MOVER") -> Dataset:
    """Send one Study Root C-MOVE; the final response's status data set."""
    ae = AE(ae_title=calling_aet)
    # C-FIND too: an AE that may find but not move is still let in at association time.
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(node.host, node.port, ae_title=node.aet)
    assert assoc.is_established
    try:
        responses = list(
            assoc.send_c_move(identifier, destination_aet, StudyRootQueryRetrieveInformationModelMove)
        )
    finally:
        assoc.release()
    status, _ = responses[-1]
    return status


def study_key(**keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = uid(STUDY)
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_calling_ae_without_move_permission_reaches_no_destination(
    node: DicomNode, destination: Recorder
) -> None:
    status = move(node, "RECORDER", study_key(), calling_aet="NOMOVE")
    assert status.Status == 0xC001
    assert status.ErrorComment == "AE NOMOVE is not permitted to C-MOVE"
    assert destination.nothing_reached()


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"QueryRetrieveLevel": "FRAME"}, "QueryRetrieveLevel 'FRAME' is invalid for Study Root"),
        ({"QueryRetrieveLevel": "SERIES"}, "SERIES level retrieve needs SeriesInstanceUID"),
        ({"StudyInstanceUID": "1.2.*"}, "StudyInstanceUID: no wildcards in unique keys"),
    ],
)
def test_unusable_identifier_reaches_no_destination(
    node: DicomNode, destination: Recorder, keys: dict, comment: str
) -> None:
    status = move(node, "RECORDER", study_key(**keys))
    assert status.Status == 0xA900  # Identifier does not match SOP class
    assert status.ErrorComment == comment
    assert destination.nothing_reached()


def test_move_that_matches_nothing_reaches_no_destination(node: DicomNode, destination: Recorder) -> None:
    status = move(node, "RECORDER", study_key(StudyInstanceUID="1.2.826.0.1.3680043.10.1055.404"))
    assert status.Status == 0x0000
    assert status.NumberOfCompletedSuboperations == 0
    assert status.NumberOfFailedSuboperations == 0
    assert destination.nothing_reached()


@pytest.mark.parametrize("destination_aet", ["NOTALLOWED", "NOSUCHAE"])
def test_destination_not_allowed_or_unknown_is_refused_without_connecting(
    node: DicomNode, destination: Recorder, destination_aet: str
) -> None:
    status = move(node, destination_aet, study_key())
    assert status.Status == 0xA801  # Move destination unknown
    assert status.ErrorComment == f"Move destination {destination_aet} is unknown or not allowed"
    assert destination.nothing_reached()


def test_allowed_move_delivers_over_one_association(node: DicomNode, destination: Recorder) -> None:
    status = move(node, "RECORDER", study_key())
    assert status.Status == 0x0000
    assert status.NumberOfCompletedSuboperations == len(STORED)
    with destination.lock:
        assert sorted(destination.received) == sorted(STORED)
        assert destination.associations == [node.aet]
        assert len(destination.connections) == 1
