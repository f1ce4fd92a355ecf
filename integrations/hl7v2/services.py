"""The HL7 v2 interface's business operations; the MLLP listener, the admin, the commands and the
Celery tasks call these and nothing else.

Inbound (one call per message received):

- `receive_message(raw, peer=..., over_tls=...) -> Received`: store the raw message, then apply it
  and mark it processed in one transaction, and return the ACK to send. The ACK is AA only once
  that transaction committed; a message that cannot be applied is kept as `failed` (AE, the error
  queue) or `rejected` (AR), its ACK naming what was wrong. A repeated control ID (MSH-10) from the
  same sender (MSH-3, MSH-4) whose first copy was processed gets that copy's ACK again, byte for
  byte, and is not applied again (also when both copies arrive at once: a unique index on processed
  rows lets only one commit).
- `reprocess_message(message_id) -> InboundMessage`: apply a failed or rejected message again (the
  admin's "reprocess" action); its stored ACK becomes the new outcome's.
- `reject_oversized(prefix, size, peer=...) -> bytes`: the AR for a message over the size limit.

What a message does (each in the caller's transaction; `apply_message` dispatches):

- ADT^A01/A04/A08/A28/A31 `upsert_patient`: the Patient with any of PID-3's identifiers is updated
  (a merged-away Patient stands for its survivor), else created;
- ADT^A40 `merge_patients`: the MRG-1 Patient becomes inactive with a `replaced-by` link to the
  PID-3 Patient, which gets a `replaces` link;
- ORM^O01, OMI^O23 `upsert_order` per ORC: the ServiceRequest with the placer (else filler) order
  number is updated, else created, with the accession number as an ACSN identifier; ImagingStudies
  already carrying that accession number get it in `basedOn` (`link_imaging_studies`); studies that
  arrive later find it themselves (integrations/dicom/imaging_study.find_service_requests).

Outbound:

- `queue_report(payload)`: the `report_finalised` subscriber: one ORU^R01 per enabled destination
  (`OutboundMessage`, unique per event and destination), delivery queued on commit.
- `deliver_outbound(message_id) -> Delivery`: one delivery attempt; the row records the outcome.
- `due_outbound(grace_seconds)`: ids of pending messages whose next attempt is overdue (the sweep).
- `add_or_update_destination(...)`: a destination, as the admin and `add_hl7_destination` make it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from btt_health import prepared
from integrations.fhir import lookup, store
from integrations.fhir.models.search_index import TOKEN_LEN, clip
from integrations.fhir.outcomes import FhirError
from integrations.fhir.search import find_matches
from integrations.hl7v2 import er7, mapping, mllp, oru, overlap, reference, tls
from integrations.hl7v2.ack import Hl7Error, build_ack, new_control_id
from integrations.hl7v2.models import Hl7Destination, InboundMessage, OutboundMessage

logger = logging.getLogger(__name__)

State = InboundMessage.State

PATIENT_EVENTS = frozenset({"A01", "A04", "A08", "A28", "A31"})
SUPPORTED = {"ADT": PATIENT_EVENTS | {"A40"}, "ORM": frozenset({"O01"}), "OMI": frozenset({"O23"})}
MAX_LINK_HOPS = 8


@dataclass(frozen=True)
class Received:
    """The outcome of one received message: the ACK to send (encoded) and the row, if stored."""

    ack: bytes
    ack_code: str
    message_id: int | None
    state: str


# --- Inbound -------------------------------------------------------------------------------------


def receive_message(raw: bytes, *, peer: str = "", over_tls: bool = False) -> Received:
    """Store, apply and acknowledge one message (see the module docstring). Never raises: every
    failure becomes an AE or AR; when even storing fails the answer is AE and nothing is kept."""
    default_codec = settings.BTT_HL7_DEFAULT_ENCODING
    try:
        header = er7.read_header(raw, default_codec)
    except er7.Er7Error as exc:
        error = Hl7Error(str(exc), code=exc.code, ack_code="AR", segment="MSH", field=exc.field)
        ack = build_ack(None, "AR", error=error)
        message_id = _store_unreadable(raw, peer, over_tls, error, ack.text)
        logger.warning("HL7 message from %s rejected: %s", peer or "?", error.describe())
        return Received(ack.encode(default_codec), "AR", message_id, State.REJECTED)
    row = _new_row(raw, header, peer, over_tls)
    deferred = connection.vendor == "postgresql" and connection.get_autocommit()
    try:
        if deferred:
            row.pk = _next_message_id()
            twin = None
        else:
            twin = _store_raw(row)
    except DatabaseError as exc:
        return _not_stored(header, peer, exc)
    return _process(row, raw, header, reprocessing=False, twin=twin, deferred=deferred)


def reprocess_message(message_id: int) -> InboundMessage:
    """Apply a stored failed or rejected message again; returns the row with its new state.

    A message already processed (or a duplicate) is returned untouched. The sender is not told
    (it had its ACK); the row's ACK becomes what a repeat of the message would now be answered.
    """
    row = InboundMessage.objects.get(pk=message_id)
    if row.state not in (State.FAILED, State.REJECTED, State.RECEIVED):
        return row
    raw = bytes(row.raw)
    try:
        header = er7.read_header(raw, settings.BTT_HL7_DEFAULT_ENCODING)
    except er7.Er7Error as exc:
        error = Hl7Error(str(exc), code=exc.code, ack_code="AR", segment="MSH", field=exc.field)
        _mark(row.pk, State.REJECTED, error, build_ack(None, "AR", error=error).text)
        return InboundMessage.objects.get(pk=message_id)
    _process(row, raw, header, reprocessing=True)
    return InboundMessage.objects.get(pk=message_id)


def reject_oversized(prefix: bytes, size: int, *, peer: str = "") -> bytes:
    """The AR for a message of at least `size` bytes, over `BTT_MLLP_MAX_MESSAGE_BYTES`; `prefix`
    is its beginning (for the MSH). Not stored: the message was not kept whole."""
    limit = settings.BTT_MLLP_MAX_MESSAGE_BYTES
    try:
        header = er7.read_header(prefix, settings.BTT_HL7_DEFAULT_ENCODING)
    except er7.Er7Error:
        header = None
    error = Hl7Error(
        f"the message ({size} bytes or more) is larger than this server accepts "
        f"(BTT_MLLP_MAX_MESSAGE_BYTES = {limit} bytes); nothing was stored",
        ack_code="AR",
        code="207",
    )
    logger.warning("HL7 message from %s rejected: %s", peer or "?", error.text)
    codec = header.codec if header else settings.BTT_HL7_DEFAULT_ENCODING
    return build_ack(header, "AR", error=error).encode(codec)


@dataclass(frozen=True)
class _Twin:
    """The processed row with the same sender and control ID as a message received."""

    pk: int
    ack: str
    charset: str


def _new_row(raw: bytes, header: er7.Header, peer: str, over_tls: bool) -> InboundMessage:
    """The raw message's row (state received), not saved yet."""
    enc = header.encoding
    message_type = header.raw(9).split(enc.repetition)[0].split(enc.component)
    return InboundMessage(
        received_at=timezone.now(),
        peer=peer[:100],
        over_tls=over_tls,
        raw=raw,
        charset=header.codec,
        sending_application=header.raw(3)[:180],
        sending_facility=header.raw(4)[:180],
        control_id=header.raw(10).strip()[:199],
        message_type=enc.component.join(p.strip() for p in message_type[:2])[:40],
        version=header.raw(12).split(enc.component)[0].strip()[:20],
    )


def _not_stored(header: er7.Header, peer: str, exc: DatabaseError) -> Received:
    logger.exception("HL7 message from %s could not be stored", peer or "?")
    error = Hl7Error(f"the message could not be stored (database error: {_one_line(exc)}); send it again")
    return Received(build_ack(header, "AE", error=error).encode(header.codec), "AE", None, State.FAILED)


def _store_raw(row: InboundMessage) -> _Twin | None:
    """Insert the raw message's row and commit it; the processed row with the same sender and
    control ID if there is one (its twin: this message is a repeat). For callers in a transaction
    or on SQLite; the listener's path on PostgreSQL is `_store_raw_prelude`.

    The commit does not wait for the disk (`synchronous_commit off` for this transaction only):
    it becomes durable with the next synchronous commit, at the latest the one that marks the
    message processed or failed, which comes before any ACK. A crash before then loses only a
    message that was never acknowledged, which the sender sends again."""
    with transaction.atomic(durable=True):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        row.save(force_insert=True)
    return _processed_twin(row)


def _next_message_id() -> int:
    """An id for a new message row, from ids taken from the table's sequence in batches (one round
    trip per `_ID_BATCH` messages): the row can then be inserted in the same round trip as the
    apply transaction's first statement, whose result is that statement's only (`_store_raw_prelude`).
    Ids are unique but, between sessions (worker threads), not in arrival order, as with HAPI
    FHIR's pooled sequences: rows list by `received_at` (the model's ordering)."""
    state = getattr(connection, "_btt_hl7_ids", None)
    if state is None or state[0] is not connection.connection or not state[1]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT nextval(pg_get_serial_sequence('{_TABLE}', 'id')) FROM generate_series(1, {_ID_BATCH})"
            )
            ids = sorted(row[0] for row in cursor.fetchall())
        state = (connection.connection, ids[::-1])  # popped from the end: lowest first
        connection._btt_hl7_ids = state
    return state[1].pop()


_ID_BATCH = 32


def _store_raw_prelude(row: InboundMessage) -> tuple[str, list]:
    """The statements that store the raw row (with its id: `_next_message_id`) as a transaction of
    its own, committed without waiting for the disk (as `_store_raw`), sent in front of the apply
    transaction's first statement (`_apply_transaction`): the message is stored before anything
    of it is applied, without a round trip of its own."""
    params = _raw_params(row)
    with connection.cursor() as cursor:
        insert = prepared.statement(cursor, _STORE_RAW_SQL, len(params))
    return f"BEGIN; SET LOCAL synchronous_commit TO OFF; {insert}; COMMIT; ", params


def _ensure_stored(row: InboundMessage) -> None:
    """After a failed apply whose transaction carried `_store_raw_prelude`: the raw row stored,
    if that did not happen (the failure came before any statement, or was the prelude's own)."""
    with connection.cursor() as cursor:
        cursor.execute(f"{_STORE_RAW_SQL} ON CONFLICT (id) DO NOTHING", _raw_params(row))


def _raw_params(row: InboundMessage) -> list:
    return [
        row.pk,
        row.received_at,
        row.peer,
        row.over_tls,
        row.raw,
        row.charset,
        row.sending_application,
        row.sending_facility,
        row.control_id,
        row.message_type,
        row.version,
    ]


_TABLE = InboundMessage._meta.db_table
_STORE_RAW_SQL = (
    f"INSERT INTO {_TABLE} (id, received_at, peer, over_tls, raw, charset, sending_application, "
    "sending_facility, control_id, message_type, version, state, error, ack_code, ack, attempts, "
    "resources) VALUES (%s, %s::timestamptz, %s::text, %s::boolean, %s::bytea, %s::text, %s::text, "
    "%s::text, %s::text, %s::text, %s::text, 'received', '', '', '', 0, '[]'::jsonb)"
)


def _store_unreadable(raw: bytes, peer: str, over_tls: bool, error: Hl7Error, ack: str) -> int | None:
    try:
        return InboundMessage.objects.create(
            peer=peer[:100],
            over_tls=over_tls,
            raw=raw,
            state=State.REJECTED,
            error=error.describe(),
            ack_code="AR",
            ack=ack,
            attempts=1,
        ).pk
    except DatabaseError:
        logger.exception("could not store a rejected HL7 message from %s", peer or "?")
        return None


def _process(
    row: InboundMessage,
    raw: bytes,
    header: er7.Header,
    *,
    reprocessing: bool,
    twin: _Twin | None = None,
    deferred: bool = False,
) -> Received:
    """Apply a message and record the outcome.

    The row is stored already, or with `deferred` (the listener on PostgreSQL) its insert goes in
    front of the apply transaction's first statement (`_store_raw_prelude`), and a failure stores
    it before recording itself (`_ensure_stored`). A repeat (a processed row with the same sender
    and control ID) is answered with its twin's ACK and not applied: `twin` was looked up when the
    row was stored; with `deferred` the repeat shows when marking it processed breaks the unique
    index of processed rows, or is looked up after any failure to apply."""
    codec = header.codec
    applying = False
    try:
        message = _parse(raw, header)
        code, trigger, version = _check_header(message)
        if twin is not None and not reprocessing:
            return _answer_duplicate(row, twin)
        ack = build_ack(header, "AA")
        applying = True
        with _apply_transaction(prelude=_store_raw_prelude(row) if deferred else None) as apply:
            finish = _Finish(row.pk, ack.text, apply)
            resources = apply_message(message, code, trigger, version, finish=finish)
            if not finish.sent:
                _mark_processed(row.pk, ack.text, resources, apply=apply)
        return Received(ack.encode(codec), "AA", row.pk, State.PROCESSED)
    except Exception as exc:
        if deferred:
            try:
                _ensure_stored(row)
            except DatabaseError as store_exc:
                return _not_stored(header, row.peer, store_exc)
        if applying and not reprocessing and (deferred or isinstance(exc, IntegrityError)):
            twin = _processed_twin_or_none(row)
            if twin is not None:
                return _answer_duplicate(row, twin)
        return _record_failure(row, header, exc)


def _record_failure(row: InboundMessage, header: er7.Header, exc: Exception) -> Received:
    """The row marked failed (AE) or rejected (AR) for `exc`, and the ACK saying why."""
    if isinstance(exc, Hl7Error):
        ack = build_ack(header, exc.ack_code, error=exc)
        state = State.REJECTED if exc.ack_code == "AR" else State.FAILED
        _mark(row.pk, state, exc, ack.text)
        logger.warning("HL7 message %s (row %s) %s: %s", row.control_id, row.pk, state, exc.describe())
        return Received(ack.encode(header.codec), exc.ack_code, row.pk, state)
    if isinstance(exc, DatabaseError):
        if not isinstance(exc, IntegrityError):
            logger.exception("HL7 message %s (row %s): database error", row.control_id, row.pk)
        return _failed(row, header, f"database error, nothing applied: {_one_line(exc)}")
    if isinstance(exc, FhirError):
        return _failed(row, header, f"the FHIR store refused the result, nothing applied: {_one_line(exc)}")
    # A bug: keep the message in the error queue, tell the sender.
    logger.error("HL7 message %s (row %s): internal error", row.control_id, row.pk, exc_info=exc)
    return _failed(row, header, f"internal error, nothing applied: {type(exc).__name__}: {_one_line(exc)}")


def _parse(raw: bytes, header: er7.Header) -> er7.Message:
    try:
        return er7.parse(raw, header)
    except UnicodeDecodeError as exc:
        named = f"MSH-18 {header.charset_name!r}" if header.charset_name else "BTT_HL7_DEFAULT_ENCODING"
        raise Hl7Error(
            f"byte {exc.start} of the message is not valid in its character set {header.codec} ({named})",
            code="103",
            ack_code="AR",
            segment="MSH",
            field=18,
        ) from None
    except er7.Er7Error as exc:
        raise Hl7Error(str(exc), code=exc.code, ack_code="AR", segment="MSH" if exc.field else "") from None


def _check_header(message: er7.Message) -> tuple[str, str, str]:
    """MSH-9 (type and trigger this server applies), MSH-10 (present), MSH-11, MSH-12 (version)."""
    msh = message.msh
    version = msh.value(12)
    if not version:
        raise Hl7Error("MSH-12 (version ID) is empty", code="101", ack_code="AR", segment="MSH", field=12)
    if not reference.is_supported_version(version):
        raise Hl7Error(
            f"MSH-12: HL7 version {version!r} is not supported (supported: {', '.join(reference.SUPPORTED_VERSIONS)})",
            code="203",
            ack_code="AR",
            segment="MSH",
            field=12,
        )
    if not msh.value(10):
        raise Hl7Error(
            "MSH-10 (message control ID) is empty", code="101", ack_code="AR", segment="MSH", field=10
        )
    processing = msh.value(11).upper()
    if processing and processing not in ("P", "T", "D"):
        raise Hl7Error(
            f"MSH-11: processing ID {processing!r} is not P, T or D",
            code="202",
            ack_code="AR",
            segment="MSH",
            field=11,
        )
    code, trigger = msh.value(9, 1).upper(), msh.value(9, 2).upper()
    if not code:
        raise Hl7Error("MSH-9 (message type) is empty", code="101", ack_code="AR", segment="MSH", field=9)
    if code not in SUPPORTED:
        raise Hl7Error(
            f"MSH-9: message type {code!r} is not accepted here (accepted: ADT^A01/A04/A08/A28/A31/A40, ORM^O01, OMI^O23)",
            code="200",
            ack_code="AR",
            segment="MSH",
            field=9,
            component=1,
        )
    if trigger not in SUPPORTED[code]:
        raise Hl7Error(
            f"MSH-9: trigger event {code}^{trigger or '(empty)'} is not accepted here "
            f"(accepted for {code}: {', '.join(sorted(SUPPORTED[code]))})",
            code="201",
            ack_code="AR",
            segment="MSH",
            field=9,
            component=2,
        )
    return code, trigger, version


class _ApplyTransaction:
    """The state of one `_apply_transaction` block (see there)."""

    def __init__(self, explicit: bool, prelude: tuple[str, list] | None = None) -> None:
        # True: BEGIN and COMMIT travel in the statements' text (PostgreSQL, outside a transaction).
        self.explicit = explicit
        # Statements (ending in "; ") to send before the BEGIN, with their parameters.
        self.prelude = prelude or ("", [])
        self.begun = False
        self.committed = False

    def begin_with_first_statement(self, execute, sql, params, many, context):
        """A Django execute wrapper: the prelude and BEGIN sent in front of the block's first
        statement."""
        if not self.begun:
            self.begun = True
            prelude, prelude_params = self.prelude
            # executemany would repeat a prefix for every parameter set; without a parameter list
            # the driver would not fill in the prelude's.
            if many or not isinstance(params, list | tuple):
                with context["connection"].wrap_database_errors:
                    context["cursor"].cursor.execute(f"{prelude}BEGIN", prelude_params)
            else:
                sql, params = f"{prelude}BEGIN; {sql}", [*prelude_params, *params]
        return execute(sql, params, many, context)

    def commit_suffix(self) -> str:
        """What the block's last statement appends to commit in the same round trip ('' when the
        COMMIT is left to the end of the block); once that statement ran, the caller reports it
        with `ran_last_statement(suffix)`."""
        return "; COMMIT" if self.explicit and self.begun else ""

    def ran_last_statement(self, suffix: str) -> None:
        if suffix:
            self.committed = True


@contextmanager
def _apply_transaction(prelude: tuple[str, list] | None = None) -> Iterator[_ApplyTransaction]:
    """`transaction.atomic(durable=True)` for applying a message, two round trips cheaper on
    PostgreSQL: psycopg2 sends BEGIN as a round trip of its own before the first statement, and
    COMMIT as another. Here the driver connection is put in autocommit mode for the block (it then
    sends neither, and its commit and rollback do nothing), BEGIN goes in front of the block's
    first statement run through Django's cursors, and the block's last statement may carry the
    COMMIT (`commit_suffix`); else the COMMIT is sent on leaving the block. The commit is
    synchronous as before, and nothing follows an ACK that it has not waited for. On an error the
    block is rolled back before the error leaves it.

    `prelude` (PostgreSQL outside a transaction only): statements, with their own transaction,
    sent in front of the BEGIN in the same round trip (`_store_raw_prelude`). A block that sends
    no statement sends no prelude either.

    Django still sees an atomic block (nested `atomic` calls make savepoints or nothing, and
    `on_commit` callbacks run once the COMMIT is done). Statements sent on the driver's cursor
    directly (not through Django's) must not be the first of the block: they would run before the
    BEGIN. Elsewhere (SQLite, or inside a caller's transaction) this is plain `atomic`.
    """
    if connection.vendor != "postgresql" or not connection.get_autocommit():
        if prelude is not None:
            raise ValueError("a prelude needs PostgreSQL outside a transaction")
        with transaction.atomic(durable=True):
            yield _ApplyTransaction(explicit=False)
        return
    block = _ApplyTransaction(explicit=True, prelude=prelude)
    with transaction.atomic(durable=True):
        # atomic has connected and switched the driver to manual commit, with nothing sent yet.
        connection.connection.autocommit = True
        try:
            with connection.execute_wrapper(block.begin_with_first_statement):
                yield block
            if block.begun and not block.committed:
                with connection.cursor() as cursor:
                    cursor.execute("COMMIT")
                block.committed = True
        except BaseException:
            # Before atomic's exit, which restores the driver's mode and runs no ROLLBACK of its own.
            if block.begun and not block.committed:
                _rollback_explicit()
            raise


def _rollback_explicit() -> None:
    """End an `_apply_transaction` block that failed (a COMMIT that failed has ended it already:
    the ROLLBACK then only draws a warning). A connection that cannot take it is closed, which
    ends the transaction on the server as well."""
    try:
        with connection.connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
    except Exception:
        logger.exception("could not roll back an HL7 apply transaction; closing the connection")
        connection.close()


def _mark_processed(
    pk: int, ack: str, resources: list[str], *, apply: _ApplyTransaction | None = None
) -> None:
    """The row processed (AA), in the apply transaction, as its last statement: with `apply` the
    COMMIT travels with it (`_apply_transaction`). PostgreSQL: plain SQL (the ORM's compilation
    of this UPDATE cost more than its round trip)."""
    if connection.vendor != "postgresql":
        InboundMessage.objects.filter(pk=pk).update(
            state=State.PROCESSED,
            error="",
            ack_code="AA",
            ack=ack,
            processed_at=timezone.now(),
            resources=resources,
            attempts=F("attempts") + 1,
        )
        return
    suffix = apply.commit_suffix() if apply is not None else ""
    with connection.cursor() as cursor:
        sql, params = _mark_processed_statement(cursor, pk, ack, resources)
        cursor.execute(sql + suffix, params)
    if apply is not None:
        apply.ran_last_statement(suffix)


def _mark_processed_statement(cursor, pk: int, ack: str, resources: list[str]) -> tuple[str, list]:
    params = [ack, timezone.now(), orjson.dumps(resources).decode(), pk]
    return prepared.statement(cursor, _MARK_PROCESSED_SQL, len(params)), params


_MARK_PROCESSED_SQL = (
    f"UPDATE {_TABLE} SET state = 'processed', error = '', ack_code = 'AA', ack = %s, "
    "processed_at = %s, resources = %s::jsonb, attempts = attempts + 1 WHERE id = %s"
)


class _Finish:
    """Ends the apply transaction with a message's last FHIR write: the write's `then`
    (`store.py`) sends the mark-processed UPDATE and the COMMIT in its round trip, one round trip
    fewer than `_mark_processed` after it. Only for a write that is the message's last statement
    and its only result (an ADT patient event's Patient). When `sent` stays False (no such
    write, another database, a type with write hooks) the caller marks the row itself."""

    def __init__(self, pk: int, ack: str, apply: _ApplyTransaction) -> None:
        self.pk = pk
        self.ack = ack
        self.apply = apply
        self.sent = False

    def then(self, resource_type: str) -> store.Then:
        """The `then` of the write of the message's one resource, of `resource_type`."""

        def mark_and_commit(logical_id: str) -> tuple[str, list] | None:
            suffix = self.apply.commit_suffix()
            if not suffix:
                return None
            with connection.cursor() as cursor:
                sql, params = _mark_processed_statement(
                    cursor, self.pk, self.ack, [f"{resource_type}/{logical_id}"]
                )
            self.sent = True
            return sql + suffix, params

        return mark_and_commit

    def written(self) -> None:
        """The write that carried the statements returned: the transaction is committed."""
        if self.sent:
            self.apply.ran_last_statement(self.apply.commit_suffix())


def _processed_twin(row: InboundMessage) -> _Twin | None:
    found = (
        InboundMessage.objects.filter(
            sending_application=row.sending_application,
            sending_facility=row.sending_facility,
            control_id=row.control_id,
            state=State.PROCESSED,
        )
        .exclude(pk=row.pk)
        .values_list("pk", "ack", "charset")
        .first()
    )
    return _Twin(*found) if found is not None else None


def _processed_twin_or_none(row: InboundMessage) -> _Twin | None:
    """`_processed_twin` after a failure; None when the database cannot tell (the failure's own
    handling then meets that error)."""
    try:
        return _processed_twin(row)
    except DatabaseError:
        return None


def _answer_duplicate(row: InboundMessage, twin: _Twin) -> Received:
    InboundMessage.objects.filter(pk=row.pk).update(
        state=State.DUPLICATE, duplicate_of=twin.pk, ack_code="AA", ack=twin.ack, attempts=F("attempts") + 1
    )
    logger.info(
        "HL7 message %s repeated (row %s): answered with the ACK of row %s", row.control_id, row.pk, twin.pk
    )
    return Received(twin.ack.encode(twin.charset or "utf-8", errors="replace"), "AA", row.pk, State.DUPLICATE)


def _failed(row: InboundMessage, header: er7.Header, text: str) -> Received:
    error = Hl7Error(text, code="207", ack_code="AE")
    ack = build_ack(header, "AE", error=error)
    _mark(row.pk, State.FAILED, error, ack.text)
    return Received(ack.encode(header.codec), "AE", row.pk, State.FAILED)


def _mark(pk: int, state: str, error: Hl7Error, ack: str) -> None:
    try:
        InboundMessage.objects.filter(pk=pk).update(
            state=state, error=error.describe(), ack_code=error.ack_code, ack=ack, attempts=F("attempts") + 1
        )
    except DatabaseError:  # the database is gone: the sender gets its AE all the same
        logger.exception("could not record the failure of HL7 message row %s", pk)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


# --- What a message does -------------------------------------------------------------------------


def apply_message(
    message: er7.Message, code: str, trigger: str, version: str, *, finish: _Finish | None = None
) -> list[str]:
    """Apply a checked message inside the caller's transaction; the FHIR resources it wrote or
    linked, as `Type/id`. Raises Hl7Error (AE) for content it cannot apply. `finish`: may end
    the transaction with an ADT patient event's Patient write (`_Finish`)."""
    if code == "ADT" and trigger == "A40":
        return merge_patients(message, version)
    pid = _required_segment(message, "PID", f"{code}^{trigger}")
    patient_id = upsert_patient(mapping.patient_data(pid, version), finish=finish if code == "ADT" else None)
    if code == "ADT":
        return [f"Patient/{patient_id}"]
    groups = mapping.order_groups(message.segments)
    if not groups:
        raise Hl7Error(
            f"{code}^{trigger} holds no ORC segment: there is no order to apply", code="100", segment="ORC"
        )
    written = [f"Patient/{patient_id}"]
    for orc, obr, tq1, ipcs in groups:
        order = mapping.order_data(orc, obr, tq1, ipcs, version)
        request_id = upsert_order(order, patient_id)
        written.append(f"ServiceRequest/{request_id}")
        if order.accession is not None:
            written += [f"ImagingStudy/{i}" for i in link_imaging_studies(request_id, order.accession)]
    return written


def _required_segment(message: er7.Message, name: str, what: str) -> er7.Segment:
    segment = message.first(name)
    if segment is None:
        raise Hl7Error(f"{what} needs a {name} segment and has none", code="100", segment=name)
    return segment


def upsert_patient(data: mapping.PatientData, *, finish: _Finish | None = None) -> str:
    """The logical id of the Patient `data` describes, updated or created (module docstring).

    Serialised per identifier (the FHIR store's conditional-write lock on `identifier=system|value`,
    which the DICOM node takes too), so two messages for a new patient make one Patient. Writes
    nothing when the Patient already says what the message says. `finish`: the write, if any, may
    end the transaction (`_Finish`); nothing may be sent after it then.
    """
    # What a new patient's message writes is built while the look-up is in flight (overlap.py).
    with overlap.meanwhile(lambda: store.prepare_create(mapping.merge_patient(None, data))) as new:
        found = _find_by_identifiers("Patient", data.identifiers, lock=True)
    if found is None:
        # Valid by construction (the mapping's docstring): the store does not validate it again.
        prepared = new.result()
        return _write("Patient", None, None, prepared.stamped, finish=finish, checked=True, prepared=prepared)
    survivor, existing = _survivor(found)
    if survivor != found:
        # A merged-away Patient stands for its survivor; its identifiers stay where they are.
        data = mapping.PatientData([], data.elements, data.removed)
    patient = mapping.merge_patient(existing, data)
    # Valid by construction (the mapping's docstring): the store does not validate it again.
    return _write("Patient", survivor, existing, patient, finish=finish, checked=True)


def merge_patients(message: er7.Message, version: str) -> list[str]:
    """ADT^A40: for each PID + MRG pair, the MRG-1 Patient (created if unknown, from MRG-1 and the
    prior name MRG-7) becomes inactive with `link` replaced-by the PID-3 Patient (updated or
    created from the PID), which gets `link` replaces. Re-applying changes nothing."""
    written: list[str] = []
    pending_pid: er7.Segment | None = None
    for segment in message.segments:
        if segment.name == "PID":
            pending_pid = segment
        elif segment.name == "MRG":
            if pending_pid is None:
                raise Hl7Error(
                    "an MRG segment without a PID before it",
                    code="100",
                    segment="MRG",
                    occurrence=segment.occurrence,
                )
            written += _merge_pair(pending_pid, segment, version)
            pending_pid = None
    if pending_pid is not None or not written:
        raise Hl7Error("ADT^A40 needs an MRG segment after each PID", code="100", segment="MRG")
    return written


def _merge_pair(pid: er7.Segment, mrg: er7.Segment, version: str) -> list[str]:
    survivor_data = mapping.patient_data(pid, version)
    prior_identifiers = mapping.patient_identifiers(mrg, 1, version)
    _lock_identifiers("Patient", survivor_data.identifiers + prior_identifiers)
    survivor_id = upsert_patient(survivor_data)
    prior_id = _find_by_identifiers("Patient", prior_identifiers)
    if prior_id == survivor_id:
        raise Hl7Error(
            "MRG-1 names the same Patient as PID-3: a patient cannot be merged into itself",
            code="205",
            segment="MRG",
            occurrence=mrg.occurrence,
            field=1,
        )
    prior = store.read_resource("Patient", prior_id).as_dict() if prior_id else None
    if prior is None:
        prior = {"resourceType": "Patient", "identifier": prior_identifiers}
        names = mapping.human_names(mrg, 7)
        if names:
            prior["name"] = names
    merged = dict(prior)
    merged["active"] = False
    links = [link for link in prior.get("link") or [] if link.get("type") != "replaced-by"]
    merged["link"] = [*links, {"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}]
    prior_id = _write("Patient", prior_id, prior if prior_id else None, merged)

    survivor = store.read_resource("Patient", survivor_id).as_dict()
    updated = dict(survivor)
    replaces = {"other": {"reference": f"Patient/{prior_id}"}, "type": "replaces"}
    if replaces not in (survivor.get("link") or []):
        updated["link"] = [*(survivor.get("link") or []), replaces]
    updated["active"] = True
    _write("Patient", survivor_id, survivor, updated)
    return [f"Patient/{survivor_id}", f"Patient/{prior_id}"]


def upsert_order(order: mapping.OrderData, patient_id: str) -> str:
    """The logical id of the order's ServiceRequest, updated or created: matched by the placer
    order number, else the filler order number (serialised per number like `upsert_patient`)."""
    keys = [i for i in order.identifiers if mapping._type_code(i) in ("PLAC", "FILL")]
    found = _find_by_identifiers("ServiceRequest", keys, lock=True)
    existing = store.read_resource("ServiceRequest", found).as_dict() if found else None
    request = mapping.merge_service_request(existing, order, patient_id)
    return _write("ServiceRequest", found, existing, request)


def link_imaging_studies(service_request_id: str, accession: dict) -> list[str]:
    """Add `ServiceRequest/<id>` to `basedOn` of every ImagingStudy with the accession number
    (any system when the accession has none, as the DICOM node matches); their ids.

    Each ImagingStudy is patched at the version read (If-Match), retried when the DICOM node wrote
    a newer one meanwhile, so neither write is lost.
    """
    token = _token(accession)
    reference_text = f"ServiceRequest/{service_request_id}"
    linked = []
    for study_id in find_matches("ImagingStudy", [("identifier", token)]).values_list(
        "logical_id", flat=True
    )[:50]:
        for _attempt in range(5):
            current = store.read_resource("ImagingStudy", study_id)
            resource = current.as_dict()
            based_on = resource.get("basedOn") or []
            if any(ref.get("reference") == reference_text for ref in based_on):
                break
            patch = (
                [{"op": "add", "path": "/basedOn/-", "value": {"reference": reference_text}}]
                if based_on
                else [{"op": "add", "path": "/basedOn", "value": [{"reference": reference_text}]}]
            )
            try:
                store.patch_resource("ImagingStudy", study_id, patch, if_match=current.version_id)
                break
            except FhirError as exc:
                if exc.status != 412:
                    raise
        linked.append(study_id)
    return linked


def _token(identifier: dict) -> str:
    value = re.sub(r"([\\,|$])", r"\\\1", identifier["value"])
    return f"{identifier['system']}|{value}" if identifier.get("system") else value


def _lock_identifiers(resource_type: str, identifiers: list[dict]) -> None:
    """Take the store's conditional-write locks of each identifier (the locks of
    `identifier=<token>` conditional writes), in a fixed order (no deadlocks), in one statement."""
    store.lock_all_criteria(resource_type, _lock_criteria(identifiers))


def _lock_criteria(identifiers: list[dict]) -> list[list[tuple[str, str]]]:
    return [[("identifier", token)] for token in sorted({_token(i) for i in identifiers})]


def _find_by_identifiers(resource_type: str, identifiers: list[dict], *, lock: bool = False) -> str | None:
    """The resource matching the first identifier that matches any (the oldest when several do):
    what `<type>?identifier=<token>` finds, asked for each identifier in turn, in one query.

    With `lock`, the identifiers' locks (`_lock_identifiers`) are taken first, in the same round
    trip: two messages for a new patient or order then make one resource."""
    pairs = [(i.get("system") or None, i["value"]) for i in identifiers]
    locks = _lock_criteria(identifiers) if lock else None
    rows = lookup.find_by_identifiers(resource_type, pairs, locks=locks)
    for system, value in pairs:
        system, value = clip(system, TOKEN_LEN) or None, clip(value, TOKEN_LEN)
        for logical_id, row_system, row_value in rows:  # oldest first
            if row_value == value and (system is None or row_system == system):
                return logical_id
    return None


def _survivor(patient_id: str) -> tuple[str, dict]:
    """Follow `replaced-by` links from a merged-away Patient to the one that survives; its id and
    its current content (read once)."""
    seen = {patient_id}
    current = patient_id
    resource = store.read_resource("Patient", current).as_dict()
    for _ in range(MAX_LINK_HOPS):
        target = next(
            (
                store.parse_relative_reference(link.get("other", {}).get("reference", ""))
                for link in resource.get("link") or []
                if link.get("type") == "replaced-by"
            ),
            None,
        )
        if target is None or target[0] != "Patient" or target[1] in seen:
            return current, resource
        seen.add(target[1])
        current = target[1]
        resource = store.read_resource("Patient", current).as_dict()  # FhirError: a link to nothing
    return current, resource


def _write(
    resource_type: str,
    logical_id: str | None,
    existing: dict | None,
    resource: dict,
    *,
    finish: _Finish | None = None,
    checked: bool = False,
    prepared: store.PreparedCreate | None = None,
) -> str:
    """Create or update through the FHIR store; nothing when the content is unchanged. `finish`:
    the write may end the transaction (`_Finish`). `checked`: built from checked values, not
    validated again (`store.create_resource`). `prepared`: a new resource's create prepared
    already (`store.prepare_create`, of a checked `resource`).

    Without a savepoint: any error fails the whole message, whose transaction is rolled back."""
    then = finish.then(resource_type) if finish is not None else None
    if logical_id is None and prepared is not None:
        logical_id = store.create_prepared(prepared, savepoint=False, then=then).stored.logical_id
    elif logical_id is None:
        logical_id = store.create_resource(
            resource, savepoint=False, then=then, checked=checked
        ).stored.logical_id
    elif existing is not None and _content(existing) == _content(resource):
        return logical_id
    else:
        store.update_resource(
            resource_type,
            logical_id,
            {**resource, "id": logical_id},
            savepoint=False,
            then=then,
            checked=checked,
        )
    if finish is not None:
        finish.written()
    return logical_id


def _content(resource: dict) -> dict:
    return {key: value for key, value in resource.items() if key not in ("id", "meta")}


# --- Outbound ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt's outcome: the row's state, and whether to try again (and why)."""

    message_id: int
    state: str
    retry: bool = False
    error: str = ""


class DeliveryRetry(Exception):
    """A delivery attempt failed in a way worth retrying (raised by the task for Celery's backoff)."""


def queue_report(payload: dict) -> list[int]:
    """`report_finalised`: one ORU^R01 per enabled destination, built now (from the version the
    event names) and delivered by a Celery task queued on commit. Idempotent per event and
    destination. Returns the ids of the rows made by this call."""
    destinations = list(Hl7Destination.objects.filter(enabled=True))
    if not destinations:
        return []
    content = oru.ReportContent.load(payload)
    created = []
    for destination in destinations:
        if OutboundMessage.objects.filter(event_id=payload["event_id"], destination=destination).exists():
            continue
        control_id = new_control_id()
        message = OutboundMessage.objects.create(
            destination=destination,
            event_id=payload["event_id"],
            message_type="ORU^R01",
            control_id=control_id,
            payload=oru.build_oru(content, control_id=control_id, destination=destination),
            charset="utf-8",
            diagnostic_report_id=payload["diagnostic_report_id"],
            next_attempt_at=timezone.now(),
        )
        created.append(message.pk)
        transaction.on_commit(lambda pk=message.pk: _queue_delivery(pk))
    return created


def _queue_delivery(message_id: int, countdown: float = 0) -> None:
    from integrations.hl7v2.tasks import deliver_outbound_task

    try:
        deliver_outbound_task.apply_async(
            args=[message_id], countdown=countdown, queue=settings.BTT_HL7_TASK_QUEUE
        )
    except Exception:  # the broker is down: the row stays pending and the sweep queues it again
        logger.exception("could not queue the delivery of outbound HL7 message %s", message_id)


def deliver_outbound(message_id: int) -> Delivery:
    """Send one pending message to its destination and record the outcome on its row.

    The row is locked for the attempt (`SELECT ... FOR UPDATE SKIP LOCKED`), so one message is never
    sent twice at once; a row another worker is sending, or no longer pending, is left alone. The
    ACK's MSA-2 must be our MSH-10. AA/CA: delivered. AR/CR: failed (the destination refuses it;
    no retry). AE/CE, no or a bad ACK, or a connection that fails: retried while attempts remain
    (`BTT_HL7_SEND_MAX_ATTEMPTS`), then failed. Every attempt sends the same message, the same MSH-10.
    """
    with transaction.atomic(durable=True):
        row = (
            OutboundMessage.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("destination")
            .filter(pk=message_id)
            .first()
        )
        if row is None:
            return Delivery(message_id, "busy")
        if row.state != OutboundMessage.State.PENDING:
            return Delivery(message_id, row.state)
        now = timezone.now()
        row.attempts += 1
        row.last_attempt_at = now
        destination = row.destination
        try:
            context = tls.client_context() if destination.use_tls else None
            answer = mllp.send(
                destination.host,
                destination.port,
                row.payload.encode(row.charset, errors="replace"),
                timeout=settings.BTT_HL7_SEND_TIMEOUT,
                ssl_context=context,
            )
            ack_code, ack_text, problem = _read_ack(answer, row.control_id, row.charset)
        except (TimeoutError, OSError, mllp.MllpError, ssl.SSLError) as exc:
            ack_code, ack_text, problem = (
                "",
                "",
                f"{destination.host}:{destination.port}: {_one_line(exc) or type(exc).__name__}",
            )
        row.ack, row.ack_code = ack_text, ack_code
        retry = False
        if ack_code in ("AA", "CA"):
            row.state = OutboundMessage.State.DELIVERED
            row.delivered_at = now
            row.last_error = ""
            row.next_attempt_at = None
        elif ack_code in ("AR", "CR"):
            row.state = OutboundMessage.State.FAILED
            row.last_error = f"rejected by the destination ({ack_code}): {problem}"
            row.next_attempt_at = None
        elif row.attempts >= settings.BTT_HL7_SEND_MAX_ATTEMPTS:
            row.state = OutboundMessage.State.FAILED
            row.last_error = f"gave up after {row.attempts} attempts; last: {problem}"
            row.next_attempt_at = None
        else:
            retry = True
            row.last_error = f"attempt {row.attempts} failed, to be retried: {problem}"
            delay = min(settings.BTT_HL7_RETRY_BACKOFF_MAX, 2 ** (row.attempts - 1))
            row.next_attempt_at = now + dt.timedelta(seconds=delay)
        row.save()
    level = logging.WARNING if row.state != OutboundMessage.State.DELIVERED else logging.INFO
    logger.log(
        level, "outbound HL7 %s to %s: %s %s", row.control_id, destination.name, row.state, row.last_error
    )
    return Delivery(row.pk, row.state, retry, row.last_error)


def _read_ack(answer: bytes, control_id: str, codec: str) -> tuple[str, str, str]:
    """(MSA-1, the ACK as text, what was wrong or its text) of a destination's answer."""
    text = answer.decode(codec, errors="replace")
    try:
        header = er7.read_header(answer, codec)
        message = er7.parse(answer, header)
    except (er7.Er7Error, UnicodeDecodeError) as exc:
        return "", text, f"the answer is no HL7 message: {exc}"
    msa = message.first("MSA")
    if msa is None:
        return "", text, "the answer has no MSA segment"
    if msa.value(2) != control_id:
        return "", text, f"the ACK's MSA-2 {msa.value(2)!r} is not this message's control ID {control_id!r}"
    code = msa.value(1).upper()
    err = message.first("ERR")
    detail = msa.value(3) or (err.value(8) or err.raw(1) if err is not None else "")
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        return "", text, f"MSA-1 {code!r} is no acknowledgement code"
    return code, text, detail or code


def due_outbound(grace_seconds: float = 60.0) -> list[int]:
    """Ids of pending messages whose next attempt is more than `grace_seconds` overdue: their task
    was lost (a broker outage, a worker gone with its countdowns). For the sweep."""
    limit = timezone.now() - dt.timedelta(seconds=grace_seconds)
    return list(
        OutboundMessage.objects.filter(state=OutboundMessage.State.PENDING, next_attempt_at__lte=limit)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:1000]
    )


def retry_outbound(message_ids: list[int]) -> int:
    """Make failed or pending messages due now and queue their delivery (the admin's action); how many."""
    count = 0
    for message_id in message_ids:
        with transaction.atomic():
            updated = OutboundMessage.objects.filter(
                pk=message_id, state__in=(OutboundMessage.State.FAILED, OutboundMessage.State.PENDING)
            ).update(state=OutboundMessage.State.PENDING, next_attempt_at=timezone.now(), attempts=0)
            if updated:
                count += 1
                transaction.on_commit(lambda pk=message_id: _queue_delivery(pk))
    return count


def add_or_update_destination(
    name: str,
    host: str,
    port: int,
    *,
    use_tls: bool = False,
    enabled: bool = True,
    receiving_application: str = "",
    receiving_facility: str = "",
    description: str = "",
) -> tuple[Hl7Destination, bool]:
    """Create or update the destination `name`; (destination, created). ValueError for a bad
    name, host or port."""
    name, host = name.strip(), host.strip()
    if not name or len(name) > 64:
        raise ValueError(f"destination name must be 1-64 characters, got {name!r}")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"host must be a host name or address, got {host!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return Hl7Destination.objects.update_or_create(
        name=name,
        defaults={
            "host": host,
            "port": int(port),
            "use_tls": use_tls,
            "enabled": enabled,
            "receiving_application": receiving_application,
            "receiving_facility": receiving_facility,
            "description": description,
        },
    )
