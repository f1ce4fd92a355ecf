"""The apply transaction sends BEGIN with its first statement and COMMIT with its last (two round
trips fewer than psycopg2's own), and still commits all or nothing.

In-process, on the real PostgreSQL test database, outside any transaction (as in the listener's
worker threads): `services.receive_message` and the transaction helper itself.
"""

from __future__ import annotations

import pytest
from django.db import connection
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from integrations.hl7v2 import services
from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import ack_fields, find_resources

pytestmark = pytest.mark.django_db(transaction=True)

ADT = (
    b"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A01|{control}|P|2.5\r"
    b"PID|1||{mrn}^^^HOSP^MR||Round^Trip||19700101|M\r"
)


_INSERT_DESTINATION = (
    "INSERT INTO hl7v2_hl7destination (name, host, port, use_tls, enabled, receiving_application, "
    "receiving_facility, description, created_at, updated_at) "
    "VALUES (%s, 'h', 1, false, true, '', '', '', now(), now())"
)


def _message(control: str, mrn: str) -> bytes:
    return ADT.replace(b"{control}", control.encode()).replace(b"{mrn}", mrn.encode())


def _apply_statements(monkeypatch, run) -> list[str]:
    """The statements of apply transactions that `run()` sends, as the driver gets them (BEGIN and
    COMMIT included)."""
    sent: list[str] = []
    original = services._ApplyTransaction.begin_with_first_statement

    def recording(self, execute, sql, params, many, context):
        def record(sql, params, many, context):
            sent.append(sql)
            return execute(sql, params, many, context)

        return original(self, record, sql, params, many, context)

    monkeypatch.setattr(services._ApplyTransaction, "begin_with_first_statement", recording)
    run()
    return sent


def test_an_adt_message_is_applied_in_one_transaction_without_begin_and_commit_round_trips(
    monkeypatch,
) -> None:
    for warm_up in ("RT-0", "RT-00"):  # statements prepared (on their second run)
        services.receive_message(_message(warm_up, warm_up), peer="test")

    sent = _apply_statements(
        monkeypatch, lambda: services.receive_message(_message("RT-1", "RT-1"), peer="test")
    )

    # Look-up (with BEGIN), the Patient's write, the row marked processed (with COMMIT).
    assert len(sent) == 3
    assert sent[0].startswith("BEGIN; ")
    assert sent[-1].endswith("; COMMIT")
    assert not any(s.endswith("; COMMIT") for s in sent[:-1])
    row = InboundMessage.objects.get(control_id="RT-1")
    assert row.state == InboundMessage.State.PROCESSED
    assert ack_fields(row.ack)["MSA"][1] == "AA"
    assert len(find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-1")) == 1
    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert connection.get_autocommit()


def test_an_error_in_the_block_rolls_everything_back_and_leaves_the_connection_idle() -> None:
    def write_then_fail() -> None:
        with services._apply_transaction(), connection.cursor() as cursor:
            cursor.execute(_INSERT_DESTINATION, ["rolled-back"])
            raise RuntimeError("fails after a write")

    with pytest.raises(RuntimeError):
        write_then_fail()

    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert connection.get_autocommit()
    assert connection.connection.autocommit
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM hl7v2_hl7destination WHERE name = 'rolled-back'")
        assert cursor.fetchone()[0] == 0


def test_a_block_whose_last_statement_does_not_commit_is_committed_on_leaving_it() -> None:
    with services._apply_transaction(), connection.cursor() as cursor:
        # executemany first: BEGIN goes alone, not in front of every parameter set.
        cursor.executemany(_INSERT_DESTINATION, [("kept-1",), ("kept-2",)])

    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM hl7v2_hl7destination WHERE name LIKE 'kept-%%'")
        assert cursor.fetchone()[0] == 2


def test_a_failing_apply_is_rolled_back_and_the_next_message_is_applied() -> None:
    # A birth date that is no date: AE, nothing applied.
    bad = _message("RT-BAD", "RT-BAD").replace(b"19700101", b"19701301")
    assert services.receive_message(bad, peer="test").ack_code == "AE"
    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-BAD") == []

    assert services.receive_message(_message("RT-OK", "RT-OK"), peer="test").ack_code == "AA"
    assert len(find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-OK")) == 1
