"""The apply transaction sends BEGIN with its first statement and COMMIT with its last (two round
trips fewer than psycopg2's own); the raw message's insert, a transaction of its own, goes in
front of that BEGIN, and an ADT patient event's Patient write carries the mark-processed UPDATE
and the COMMIT: a new patient costs two round trips. It all still commits all or nothing, and a
message that fails is kept.

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


def _apply_statements(run) -> list[str]:
    """The statements of apply transactions that `run()` sends, as the driver gets them (BEGIN and
    COMMIT included)."""
    sent: list[str] = []
    original = services._ApplyTransaction.begin_with_first_statement

    def recording(self, execute, sql, params, many, context):
        def record(sql, params, many, context):
            sent.append(sql)
            return execute(sql, params, many, context)

        return original(self, record, sql, params, many, context)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services._ApplyTransaction, "begin_with_first_statement", recording)
        run()
    return sent


def test_an_adt_message_is_applied_in_one_transaction_without_begin_and_commit_round_trips() -> None:
    for warm_up in ("RT-0", "RT-00"):  # statements prepared (on their second run)
        services.receive_message(_message(warm_up, warm_up), peer="test")

    sent = _apply_statements(lambda: services.receive_message(_message("RT-1", "RT-1"), peer="test"))

    # The raw row stored and committed, BEGIN and the look-up; then the Patient's write with the
    # row marked processed and COMMIT.
    assert len(sent) == 2
    store, apply = sent[0].split("; COMMIT; BEGIN; ")
    assert store.startswith("BEGIN; SET LOCAL synchronous_commit TO OFF; EXECUTE ")
    assert apply.startswith("SELECT pg_advisory_xact_lock(")
    write, mark, commit = sent[1].split("; ")
    assert (write.startswith("EXECUTE "), mark.startswith("EXECUTE "), commit) == (True, True, "COMMIT")
    row = InboundMessage.objects.get(control_id="RT-1")
    assert row.state == InboundMessage.State.PROCESSED
    assert ack_fields(row.ack)["MSA"][1] == "AA"
    assert len(find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-1")) == 1
    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert connection.get_autocommit()


def test_an_update_carries_the_mark_and_commit_and_an_unchanged_patient_is_marked_alone() -> None:
    for control in ("RT-2", "RT-3"):  # a new patient, then the same again: statements prepared
        services.receive_message(_message(control, "RT-2"), peer="test")
    renamed = _message("RT-4", "RT-2").replace(b"Round^Trip", b"Round^Tripp")

    sent_update = _apply_statements(lambda: services.receive_message(renamed, peer="test"))
    sent_same = _apply_statements(
        lambda: services.receive_message(renamed.replace(b"RT-4|P", b"RT-5|P"), peer="test")
    )

    # The new version's statement (its first run: not prepared yet), the mark, the COMMIT.
    write, mark, commit = sent_update[-1].split("; ")
    assert (write.startswith("WITH rec AS (UPDATE fhir_resourcerecord"), commit) == (True, "COMMIT")
    assert mark.startswith("EXECUTE ")
    # Nothing to write: the mark-processed UPDATE goes alone, with the COMMIT.
    assert sent_same[-1] == f"{mark}; COMMIT"
    assert not any("fhir_resourcerecord SET" in statement for statement in sent_same)
    for control in ("RT-4", "RT-5"):
        row = InboundMessage.objects.get(control_id=control)
        assert (row.state, ack_fields(row.ack)["MSA"][1]) == (InboundMessage.State.PROCESSED, "AA")
        assert len(row.resources) == 1
    (patient,) = find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-2")
    assert patient["name"][0]["given"] == ["Tripp"]
    assert row.resources == [f"Patient/{patient['id']}"]
    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE


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
    # A birth date that is no date: AE, nothing applied, before any statement was sent (the raw
    # row's insert had nothing to travel with): the message is kept all the same.
    bad = _message("RT-BAD", "RT-BAD").replace(b"19700101", b"19701301")
    assert services.receive_message(bad, peer="test").ack_code == "AE"
    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-BAD") == []
    row = InboundMessage.objects.get(control_id="RT-BAD")
    assert (row.state, bytes(row.raw), row.ack_code) == (InboundMessage.State.FAILED, bad, "AE")

    assert services.receive_message(_message("RT-OK", "RT-OK"), peer="test").ack_code == "AA"
    assert len(find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-OK")) == 1


def test_a_failure_of_the_statement_carrying_the_raw_row_keeps_the_message(monkeypatch) -> None:
    """The first round trip stores the raw row and runs the look-up; when the look-up fails after
    the raw row's own COMMIT, the row is kept (failed), and the apply left nothing behind."""
    original = services._ApplyTransaction.begin_with_first_statement

    def failing_lookup(self, execute, sql, params, many, context):
        if not self.begun:
            sql = sql.replace("pg_advisory_xact_lock(", "no_such_function(", 1)
        return original(self, execute, sql, params, many, context)

    monkeypatch.setattr(services._ApplyTransaction, "begin_with_first_statement", failing_lookup)
    received = services.receive_message(_message("RT-LOOKUP", "RT-LOOKUP"), peer="test")

    assert received.ack_code == "AE"
    row = InboundMessage.objects.get(control_id="RT-LOOKUP")
    assert (row.pk, row.state) == (received.message_id, InboundMessage.State.FAILED)
    assert "no_such_function" in row.error
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|RT-LOOKUP") == []
    assert connection.connection.info.transaction_status == TRANSACTION_STATUS_IDLE
