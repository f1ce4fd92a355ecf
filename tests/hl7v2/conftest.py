"""Fixtures for the HL7 v2 interface's tests: the MLLP listener as a real process, python-hl7 as the EHR.

The listener under test is what operators run: `python manage.py mllp_listener` as its own process
on pytest-django's test database. It only sees committed rows and its rows are committed, so tests
that talk to it use `@pytest.mark.django_db(transaction=True)` (tables flushed after each test).

- `mllp_listener` (session): one listener on a free port of 127.0.0.1, with a small message limit
  (64 KiB) and a short stall timeout (2 s) so the bad-input tests are quick. `.port`, `.log()`.
- `start_listener(**env)` (per test): a listener with more environment variables (TLS), stopped
  when the test ends.
- `mllp_send_file(path, port)`: python-hl7's `mllp_send` command (`--loose`) sending a file of
  messages; the ACKs it printed.
- `send_message(port, data)`: one message (str or bytes, sent exactly as given) framed and sent with
  python-hl7's `MLLPClient`; the ACK without its framing.
- `read_fixture(name)`: bytes of a sample message under tests/hl7v2/fixtures/.
- `read_frame(sock)`, `closed_by_peer(sock, timeout)`: for tests that talk MLLP on a raw socket.
- `create_trigger_at_commit(name, when_processed)` / `drop_trigger_at_commit(name)`: a real
  failure or delay at COMMIT of the transaction that marks a message processed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connection
from hl7.client import MLLPClient

from tests.processes import MANAGE_PY, ManagedProcess, ProcessLauncher, child_env, free_port

FIXTURES = Path(__file__).parent / "fixtures"
MLLP_SEND = Path(sys.executable).parent / "mllp_send"
MAX_MESSAGE_BYTES = 65536
STALL_TIMEOUT = 2.0


@dataclass
class Listener:
    process: ManagedProcess
    port: int
    env: dict[str, str] = field(repr=False)
    tls_port: int | None = None

    def log(self) -> str:
        return self.process.log()


def start_listener_process(
    launcher: ProcessLauncher,
    base_env: Mapping[str, str],
    name: str = "mllp-listener",
    **overrides: str | None,
) -> Listener:
    port = free_port()
    env = child_env(
        base_env,
        {
            "BTT_MLLP_HOST": "127.0.0.1",
            "BTT_MLLP_PORT": str(port),
            "BTT_MLLP_TLS_PORT": str(free_port()),
            "BTT_MLLP_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
            "BTT_MLLP_TIMEOUT": str(STALL_TIMEOUT),
            **overrides,
        },
    )
    process = launcher.start(name, [sys.executable, str(MANAGE_PY), "mllp_listener"], env)
    process.wait_for_log(r"mllp_listener: listening: MLLP on ")
    tls_port = None
    if env.get("BTT_MLLP_TLS_CERT"):
        process.wait_for_log(r"listening: MLLP over TLS on ")
        tls_port = int(env["BTT_MLLP_TLS_PORT"])
    return Listener(process, port, env, tls_port)


@pytest.fixture(scope="session")
def mllp_listener(process_launcher: ProcessLauncher, test_database_env: dict[str, str]) -> Iterator[Listener]:
    listener = start_listener_process(process_launcher, test_database_env)
    yield listener
    listener.process.stop()


@pytest.fixture
def start_listener(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(**overrides: str | None) -> Listener:
        listener = start_listener_process(
            process_launcher, test_database_env, "mllp-listener-extra", **overrides
        )
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.process.stop()


def read_fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def read_frame(sock: socket.socket) -> bytes:
    """One MLLP frame read from `sock` (up to its end block), without its framing."""
    sock.settimeout(30)
    data = b""
    while b"\x1c" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return unframe(data)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the listener closed the connection within `timeout` (reads what comes until then)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def create_trigger_at_commit(name: str, when_processed: str) -> None:
    """A PostgreSQL constraint trigger, deferred to COMMIT, running the PL/pgSQL `when_processed`
    when a message row is marked processed (`NEW` is the row): a real failure or delay at
    commit. `drop_trigger_at_commit(name)` removes it."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.state = 'processed' THEN
                {when_processed}
              END IF;
              RETURN NEW;
            END $$;
            CREATE CONSTRAINT TRIGGER {name} AFTER UPDATE ON hl7v2_inboundmessage
              DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}();
            """
        )


def drop_trigger_at_commit(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"DROP TRIGGER IF EXISTS {name} ON hl7v2_inboundmessage; DROP FUNCTION IF EXISTS {name}();"
        )


def unframe(data: bytes) -> bytes:
    return data.strip(b"\x0b\x1c\r\n")


def send_message(port: int, data: str | bytes, host: str = "127.0.0.1") -> bytes:
    """One message framed and sent with python-hl7's MLLPClient; the ACK, unframed."""
    with MLLPClient(host, port) as client:
        client.socket.settimeout(30)
        answer = client.send_message(data)
        while b"\x1c" not in answer:  # MLLPClient returns one recv(); a long ACK may need more
            more = client.socket.recv(65536)
            if not more:
                break
            answer += more
    return unframe(answer)


def mllp_send_file(path: Path, port: int) -> list[str]:
    """python-hl7's `mllp_send --loose -f PATH`: every message of the file, one connection; the ACKs."""
    result = subprocess.run(
        [str(MLLP_SEND), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return [unframe(line).decode() for line in result.stdout.split(b"\x1c") if unframe(line)]


def ack_fields(ack: bytes | str) -> dict[str, list[str]]:
    """Segments of an ACK by ID, each as its list of fields numbered as in HL7 (field 0 is the ID)."""
    text = ack.decode() if isinstance(ack, bytes) else ack
    segments: dict[str, list[str]] = {}
    for line in text.replace("\n", "\r").split("\r"):
        if line:
            fields = line.split("|")
            if fields[0] == "MSH":  # MSH-1 is the field separator itself: keep HL7's numbering
                fields.insert(1, "|")
            segments[line[:3]] = fields
    return segments


def find_resources(resource_type: str, **params: str) -> list[dict]:
    """Current resources matching a FHIR search (`identifier="system|value"`), through the FHIR
    store's search service, oldest first."""
    from integrations.fhir import store
    from integrations.fhir.search import find_matches

    ids = find_matches(resource_type, list(params.items())).values_list("logical_id", flat=True)
    return [store.read_resource(resource_type, logical_id).as_dict() for logical_id in ids]
