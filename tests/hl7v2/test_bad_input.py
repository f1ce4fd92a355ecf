"""Bad input over MLLP: a clear NAK (AR/AE with an ERR naming segment and field) or a closed
connection, nothing half-applied, and the other connections unaffected."""

from __future__ import annotations

import socket
import time

import pytest

from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import (
    MAX_MESSAGE_BYTES,
    STALL_TIMEOUT,
    ack_fields,
    closed_by_peer,
    find_resources,
    read_frame,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = b"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A01^ADT_A01|GOOD-{n}|P|2.5.1\rPID|1||OK-{n}^^^HOSP^MR||Good^Gail||19800101|F\r"


def _good(n: str) -> bytes:
    return GOOD.replace(b"{n}", n.encode())


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def test_missing_msh_is_rejected_with_ar(mllp_listener) -> None:
    segments = ack_fields(send_message(mllp_listener.port, b"PID|1||X1^^^HOSP^MR||Doe^John\r"))

    assert segments["MSA"][1] == "AR"
    assert "must start with an MSH segment" in segments["MSA"][3]
    assert segments["ERR"][3].startswith("100^Segment sequence error")
    assert InboundMessage.objects.get().state == InboundMessage.State.REJECTED  # stored raw all the same


def test_malformed_msh_encoding_characters(mllp_listener) -> None:
    segments = ack_fields(send_message(mllp_listener.port, b"MSH|^~|A|B|C|D|2024||ADT^A01|M1|P|2.5\r"))

    assert segments["MSA"][1] == "AR"
    assert "MSH-2 (encoding characters)" in segments["ERR"][8]
    assert segments["ERR"][2] == "MSH^1^2^1"


def test_unknown_message_type_and_trigger_and_version(mllp_listener) -> None:
    unknown_type = ack_fields(send_message(mllp_listener.port, b"MSH|^~\\&|A|B|C|D|2024||XYZ^Z99|U1|P|2.5\r"))
    unknown_trigger = ack_fields(
        send_message(mllp_listener.port, b"MSH|^~\\&|A|B|C|D|2024||ADT^A03|U2|P|2.5\r")
    )
    unknown_version = ack_fields(
        send_message(mllp_listener.port, b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|U3|P|2.7\r")
    )

    assert unknown_type["MSA"][1:3] == ["AR", "U1"]
    assert unknown_type["ERR"][2:4] == ["MSH^1^9^1^1", "200^Unsupported message type^HL70357"]
    assert unknown_trigger["ERR"][3] == "201^Unsupported event code^HL70357"
    assert unknown_version["ERR"][3] == "203^Unsupported version id^HL70357"


def test_bad_field_values_answer_ae_naming_the_field_and_apply_nothing(mllp_listener) -> None:
    bad_date = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|B1|P|2.5\rPID|1||BAD-1^^^HOSP^MR||Doe^John||19801301|M\r"
    bad_sex = b"MSH|^~\\&|A|B|C|D|2024||ADT^A08|B2|P|2.4\rPID|1||BAD-2^^^HOSP^MR||Doe^John||19801201|Q\r"
    no_id = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|B3|P|2.5.1\rPID|1||||Doe^John\r"

    date_ack, sex_ack, id_ack = (
        ack_fields(send_message(mllp_listener.port, m)) for m in (bad_date, bad_sex, no_id)
    )

    assert date_ack["MSA"][1] == "AE"
    assert date_ack["ERR"][2:4] == ["PID^1^7^1^1", "102^Data type error^HL70357"]
    assert "'19801301' is not an HL7 date/time" in date_ack["ERR"][8]
    assert sex_ack["ERR"][1].startswith("PID^1^8^103&")  # 2.4: ERR-1 ELD
    assert id_ack["ERR"][2:4] == ["PID^1^3^1", "101^Required field missing^HL70357"]
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|BAD-1") == []
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|BAD-2") == []
    assert set(InboundMessage.objects.values_list("state", flat=True)) == {InboundMessage.State.FAILED}


def test_oversized_message_gets_ar_and_the_connection_goes_on(mllp_listener) -> None:
    big = _good("BIG") + b"ZXX|" + b"x" * (MAX_MESSAGE_BYTES + 10) + b"\r"
    with _connect(mllp_listener.port) as sock:
        sock.sendall(b"\x0b" + big + b"\x1c\r")
        answer = read_frame(sock)
        segments = ack_fields(answer)
        assert segments["MSA"][1:3] == ["AR", "GOOD-BIG"]
        assert "BTT_MLLP_MAX_MESSAGE_BYTES" in segments["ERR"][8]
        sock.sendall(b"\x0b" + _good("AFTER-BIG") + b"\x1c\r")
        assert ack_fields(read_frame(sock))["MSA"][1:3] == ["AA", "GOOD-AFTER-BIG"]
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|OK-BIG") == []


def test_broken_framing_closes_the_connection(mllp_listener) -> None:
    with _connect(mllp_listener.port) as sock:  # no start block
        sock.sendall(_good("NOFRAME") + b"\x1c\r")
        assert closed_by_peer(sock, 10)
    with _connect(mllp_listener.port) as sock:  # a second start block before the end block
        sock.sendall(b"\x0b" + _good("TWICE") + b"\x0b" + _good("TWICE2") + b"\x1c\r")
        assert closed_by_peer(sock, 10)
    assert not InboundMessage.objects.exists()


def test_a_stalled_half_message_is_dropped_while_others_are_served(mllp_listener) -> None:
    message = _good("STALL")
    with _connect(mllp_listener.port) as stalled:
        stalled.sendall(b"\x0b" + message[: len(message) // 2])
        started = time.monotonic()
        # Meanwhile another connection is served at once.
        assert ack_fields(send_message(mllp_listener.port, _good("OTHER")))["MSA"][1] == "AA"
        assert closed_by_peer(stalled, STALL_TIMEOUT + 10)
        assert time.monotonic() - started >= STALL_TIMEOUT - 0.5
    assert not InboundMessage.objects.filter(control_id="GOOD-STALL").exists()
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|OK-STALL") == []
    assert "nothing received for" in mllp_listener.log()
