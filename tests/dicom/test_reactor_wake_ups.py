"""The event-driven waits of integrations/dicom/reactor.py: an association thread waiting for work
wakes as soon as there is some - a DIMSE message queued by its DUL thread, or a primitive for the
association itself (the peer's A-RELEASE-RQ, an abort) - instead of at the end of its wait.

The waits' ceiling is raised to 30 s here, so a wait that returns within a few seconds was woken."""

from __future__ import annotations

import threading

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_RELEASE

from integrations.dicom import reactor

WOKEN_WITHIN = 5.0


@pytest.fixture
def attached_association(monkeypatch) -> Association:
    monkeypatch.setattr(reactor, "_CEILING", 30.0)
    assoc = Association(AE(), "acceptor")
    reactor.attach(assoc)
    yield assoc
    for fd in assoc.dul.btt_wake_fds:
        reactor.os.close(fd)


def _waiting_association_thread(assoc: Association) -> threading.Thread:
    started = threading.Event()

    def wait() -> None:
        started.set()
        reactor._wait_association(assoc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert started.wait(WOKEN_WITHIN)
    return thread


def test_a_queued_dimse_message_wakes_the_association_thread(attached_association) -> None:
    thread = _waiting_association_thread(attached_association)
    attached_association.dimse.msg_queue.put((1, object()))
    thread.join(WOKEN_WITHIN)
    assert not thread.is_alive()


@pytest.mark.parametrize("primitive", [A_RELEASE, A_ABORT], ids=["release", "abort"])
def test_a_release_or_abort_for_the_association_wakes_its_thread(attached_association, primitive) -> None:
    """The DUL thread queues these for the association (pynetdicom's state machine puts them on
    `to_user_queue`), whose loop answers a release only once it looks: without the wake-up the
    answer waited for the end of the wait, every association."""
    thread = _waiting_association_thread(attached_association)
    attached_association.dul.to_user_queue.put(primitive())
    thread.join(WOKEN_WITHIN)
    assert not thread.is_alive()
    assert isinstance(attached_association.dul.to_user_queue.get_nowait(), primitive)  # still there
