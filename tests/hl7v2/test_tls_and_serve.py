"""MLLP over TLS (certificate from BTT_MLLP_TLS_CERT / KEY, made here with the openssl tool), and
the listener as the `mllp` child of `manage.py serve`."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.hl7v2.conftest import ack_fields, send_message, unframe

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = (
    b"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A01|{id}|P|2.5\rPID|1||{id}^^^HOSP^MR||Tls^Tina||19800101|F\r"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mllp-tls")
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-keyout", "key.pem", "-out", "cert.pem"],
        cwd=folder, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return folder / "cert.pem", folder / "key.pem"


def test_a_message_over_tls(start_listener, certificate) -> None:
    cert, key = certificate
    listener = start_listener(BTT_MLLP_TLS_CERT=str(cert), BTT_MLLP_TLS_KEY=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False

    with (
        socket.create_connection(("127.0.0.1", listener.tls_port), timeout=30) as raw,
        context.wrap_socket(raw) as sock,
    ):
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        sock.sendall(b"\x0b" + MESSAGE.replace(b"{id}", b"TLS-1") + b"\x1c\r")
        answer = b""
        while b"\x1c" not in answer:
            answer += sock.recv(65536)

    assert ack_fields(unframe(answer))["MSA"][1:3] == ["AA", "TLS-1"]
    from integrations.hl7v2.models import InboundMessage

    assert InboundMessage.objects.get(control_id="TLS-1").over_tls is True
    # The plain port still works beside it.
    assert ack_fields(send_message(listener.port, MESSAGE.replace(b"{id}", b"PLAIN-1")))["MSA"][1] == "AA"


def test_serve_runs_the_mllp_listener(start_serve) -> None:
    stack = start_serve(BTT_RUN_WORKER="false", BTT_RUN_DICOM="false")
    match = stack.process.wait_for_log(r"serve: mllp \(pid \d+\): HL7 v2 MLLP on 127\.0\.0\.1:(\d+)")
    assert int(match.group(1)) == int(stack.env["BTT_MLLP_PORT"])
    stack.process.wait_for_log(r"mllp_listener: listening: MLLP on ")

    ack = send_message(int(stack.env["BTT_MLLP_PORT"]), MESSAGE.replace(b"{id}", b"SERVE-1"))

    assert ack_fields(ack)["MSA"][1:3] == ["AA", "SERVE-1"]
