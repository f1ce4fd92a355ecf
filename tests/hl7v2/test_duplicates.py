"""A repeated control ID (MSH-10) from the same sender gets the stored ACK again and is applied once,
also when both copies arrive at the same time on two connections."""

from __future__ import annotations

import threading

import pytest

from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import ack_fields, find_resources, read_fixture, send_message

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_repeat_gets_the_same_ack_and_is_not_applied_again(mllp_listener) -> None:
    message = read_fixture("adt_a04_v23_cr_escapes.hl7")
    first = send_message(mllp_listener.port, message)
    # The same control ID with other content: a repeat is recognised by sender and MSH-10 alone.
    second = send_message(mllp_listener.port, message.replace(b"O'Brien", b"Changed"))

    assert second == first
    assert ack_fields(first)["MSA"][1] == "AA"
    [patient] = find_resources("Patient", identifier="urn:btt-health:issuer:CLINIC|55512")
    assert patient["meta"]["versionId"] == "1"
    assert patient["name"][0]["family"] == "O'Brien^Smythe"
    # In arrival order (ids come from per-session batches of the sequence: not in that order).
    rows = list(InboundMessage.objects.filter(control_id="ADT1003").order_by("received_at"))
    assert [r.state for r in rows] == [InboundMessage.State.PROCESSED, InboundMessage.State.DUPLICATE]
    assert rows[1].duplicate_of_id == rows[0].pk
    # Another sender may use the same control ID.
    other = send_message(mllp_listener.port, message.replace(b"|LEGACY|", b"|OTHERAPP|"))
    assert other != first
    assert ack_fields(other)["MSA"][1:3] == ["AA", "ADT1003"]


def test_a_repeat_that_could_not_be_applied_gets_the_first_copys_ack(mllp_listener) -> None:
    message = read_fixture("adt_a04_v23_cr_escapes.hl7")
    first = send_message(mllp_listener.port, message)
    # The listener applies a message before it knows it is a repeat (the unique index of processed
    # rows tells it): this copy's birth date is no date, yet the answer is the first copy's ACK.
    broken = message.replace(b"|19", b"|1913-45", 1)
    assert broken != message

    assert send_message(mllp_listener.port, broken) == first
    rows = list(InboundMessage.objects.filter(control_id="ADT1003").order_by("received_at"))
    assert [r.state for r in rows] == [InboundMessage.State.PROCESSED, InboundMessage.State.DUPLICATE]
    assert bytes(rows[1].raw) == broken


def test_copies_on_two_connections_at_once_are_applied_once(mllp_listener) -> None:
    message = read_fixture("adt_a01_v251_crlf_utf8.hl7")
    acks: list[bytes] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        acks.append(send_message(mllp_listener.port, message))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(acks) == 4, acks
    assert len(set(acks)) == 1, acks
    assert ack_fields(acks[0])["MSA"][1] == "AA"
    states = sorted(InboundMessage.objects.filter(control_id="ADT1001").values_list("state", flat=True))
    assert states == ["duplicate"] * 3 + ["processed"]
    [patient] = find_resources("Patient", identifier="urn:oid:1.2.276.0.7230010.3.1.1|MRN10001")
    assert patient["meta"]["versionId"] == "1"
