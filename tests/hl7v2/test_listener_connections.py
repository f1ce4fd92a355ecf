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
from django.db import connection

from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import ack_fields, send_message

pytestmark = pytest.mark.django_db(transaction=True)


def _message(control_id: str, mrn: str) -> bytes:
    return (
        f"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||{mrn}^^^HOSP^MR||Conn^Carla||19700101|F\r"
    ).encode()


def _framed(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\r"


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the listener closes `sock` within `within` seconds (end of stream or a reset)."""
    sock.settimeout(within)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_over_the_limit_are_closed_at_once(start_listener) -> None:
    listener = start_listener(BTT_MLLP_MAX_CONNECTIONS="2")
    first = socket.create_connection(("127.0.0.1", listener.port))
    second = socket.create_connection(("127.0.0.1", listener.port))
    try:
        time.sleep(0.3)  # both accepted
        with socket.create_connection(("127.0.0.1", listener.port)) as third:
            assert _closed_by_peer(third, within=5)
        assert not _closed_by_peer(first, within=0.3)
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
        assert _closed_by_peer(sock, within=10)
        assert 0.5 < time.monotonic() - began < 5


@pytest.fixture
def slow_commit():
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION hl7_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.state = 'processed' AND NEW.control_id = 'STOP-SLOW' THEN
                PERFORM pg_sleep(2);
              END IF;
              RETURN NEW;
            END $$;
            CREATE CONSTRAINT TRIGGER hl7_test_slow AFTER UPDATE ON hl7v2_inboundmessage
              DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hl7_test_slow();
            """
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER IF EXISTS hl7_test_slow ON hl7v2_inboundmessage; DROP FUNCTION IF EXISTS hl7_test_slow();"
        )


def test_stopping_answers_the_message_in_progress_and_closes_waiting_connections(
    start_listener, slow_commit
) -> None:
    listener = start_listener()
    waiting = socket.create_connection(("127.0.0.1", listener.port))
    busy = socket.create_connection(("127.0.0.1", listener.port))
    answers: list[bytes] = []

    def send_slow() -> None:
        busy.sendall(_framed(_message("STOP-SLOW", "STOP-1")))
        busy.settimeout(30)
        answer = b""
        while b"\x1c" not in answer:
            chunk = busy.recv(65536)
            if not chunk:
                break
            answer += chunk
        answers.append(answer)

    sender = threading.Thread(target=send_slow)
    try:
        sender.start()
        time.sleep(0.8)  # the message is in its commit's 2 s sleep now
        stopped_at = time.monotonic()
        listener.process.send_signal(15)  # SIGTERM
        assert _closed_by_peer(waiting, within=1.5)  # closed at once, not after the slow message
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
