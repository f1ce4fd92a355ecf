"""The listener's connections, against the real `mllp_listener` process: connections over
`BTT_MLLP_MAX_CONNECTIONS` are closed at once (the others go on); a connection silent between
messages for `BTT_MLLP_IDLE_TIMEOUT` is closed; on SIGTERM a message being processed is finished
and answered, a connection waiting for a message is closed at once, and the process exits.

The slow message of the stop test is slowed for real: a PostgreSQL constraint trigger, deferred
to COMMIT, sleeps in the transaction that applies it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import (
    ack_fields,
    closed_by_peer,
    create_trigger_at_commit,
    drop_trigger_at_commit,
    read_frame,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _message(control_id: str, mrn: str) -> bytes:
    return (
        f"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||{mrn}^^^HOSP^MR||Conn^Carla||19700101|F\r"
    ).encode()


def _framed(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\r"


def test_connections_over_the_limit_are_closed_at_once(start_listener) -> None:
    listener = start_listener(BTT_MLLP_MAX_CONNECTIONS="2")
    first = socket.create_connection(("127.0.0.1", listener.port))
    second = socket.create_connection(("127.0.0.1", listener.port))
    try:
        time.sleep(0.3)  # both accepted
        with socket.create_connection(("127.0.0.1", listener.port)) as third:
            assert closed_by_peer(third, 5)
        assert not closed_by_peer(first, 0.3)
    finally:
        second.close()
    time.sleep(0.3)  # the second's thread has ended: room for one more
    assert ack_fields(send_message(listener.port, _message("LIMIT-1", "LIM-1")))["MSA"][1] == "AA"
    first.close()
    assert "connections open" in listener.log()


def test_an_idle_connection_is_closed_after_the_idle_timeout(start_listener) -> None:
    listener = start_listener(BTT_MLLP_IDLE_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", listener.port)) as sock:
        sock.sendall(_framed(_message("IDLE-1", "IDLE-1")))
        sock.settimeout(30)
        answer = sock.recv(65536)
        assert b"MSA|AA|IDLE-1" in answer
        began = time.monotonic()
        assert closed_by_peer(sock, 10)
        assert 0.5 < time.monotonic() - began < 5


@pytest.fixture
def slow_commit():
    create_trigger_at_commit(
        "hl7_test_slow", "IF NEW.control_id = 'STOP-SLOW' THEN PERFORM pg_sleep(2); END IF;"
    )
    yield
    drop_trigger_at_commit("hl7_test_slow")


def test_stopping_answers_the_message_in_progress_and_closes_waiting_connections(
    start_listener, slow_commit
) -> None:
    listener = start_listener()
    waiting = socket.create_connection(("127.0.0.1", listener.port))
    busy = socket.create_connection(("127.0.0.1", listener.port))
    answers: list[bytes] = []

    def send_slow() -> None:
        busy.sendall(_framed(_message("STOP-SLOW", "STOP-1")))
        answers.append(read_frame(busy))

    sender = threading.Thread(target=send_slow)
    try:
        sender.start()
        time.sleep(0.8)  # the message is in its commit's 2 s sleep now
        stopped_at = time.monotonic()
        listener.process.send_signal(15)  # SIGTERM
        assert closed_by_peer(waiting, 1.5)  # closed at once, not after the slow message
        assert time.monotonic() - stopped_at < 1.5
        sender.join(30)
        assert answers
        assert b"MSA|AA|STOP-SLOW" in answers[0]
        assert listener.process.wait(30) == 0
    finally:
        waiting.close()
        busy.close()
    row = InboundMessage.objects.get(control_id="STOP-SLOW")
    assert row.state == "processed"
