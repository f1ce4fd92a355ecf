"""C-FIND, C-MOVE and C-GET service class provider: the node's Query/Retrieve handlers.

Thin pynetdicom handlers over the service functions of `query.py` (matching, what to retrieve,
permissions) and `retrieve.py` (reading stored instances, the presentation contexts to send
them with). `scp.py` binds `QUERY_RETRIEVE_HANDLERS` and calls `add_query_retrieve_contexts(ae)`.

Statuses (PS3.4 C.4): every failure goes back with an ErrorComment saying why. A calling AE
without the permission: 0xC001. A C-MOVE destination that is no RemoteAE with allow_move:
0xA801. A bad identifier (level, missing unique key, malformed range): 0xA900. The index
database unavailable: 0xA700. More than 65535 instances to retrieve: 0xA701. Sub-operation
failures of C-MOVE / C-GET end with 0xB000 (some failed) or 0xA702 (all failed), and the
FailedSOPInstanceUIDList.

A C-MOVE is decided before anything connects to its destination (`plan_move`, served by
`NodeQueryRetrieveService`): a refused one, or one that matches nothing, never opens an
association there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, cast

from django.conf import settings
from django.db import DatabaseError, connections
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom import association as pynetdicom_association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass, ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from integrations.dicom import query, retrieve
from integrations.dicom.models import RemoteAE
from integrations.dicom.query import QueryError

logger = logging.getLogger("integrations.dicom.qr")

# Transfer syntaxes of the Query/Retrieve contexts themselves (the identifiers).
QR_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


def _status(status: int, comment: str) -> Dataset:
    return QueryError(status, comment).status_dataset()


def _release_db_connection() -> None:
    """Close this association thread's database connections (they are not reused by Django)."""
    if threading.current_thread() is not threading.main_thread():
        connections.close_all()


def _handler(
    operation: str,
) -> Callable[[Callable[[Event], Iterator[Any]]], Callable[[Event], Iterator[Any]]]:
    """Wrap a generator handler: close its thread's DB connection when done, log crashes."""

    def decorate(function: Callable[[Event], Iterator[Any]]) -> Callable[[Event], Iterator[Any]]:
        @wraps(function)
        def wrapper(event: Event) -> Iterator[Any]:
            try:
                yield from function(event)
            finally:
                _release_db_connection()

        wrapper.operation = operation  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _calling_ae(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _identifier(event: Event) -> Dataset:
    try:
        return event.identifier
    except Exception as exc:
        raise QueryError(query.STATUS_UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}") from exc


# --- C-FIND ---------------------------------------------------------------------------------------


_MAX_QUEUED_RESPONSES = 8


def _let_the_peer_speak(event) -> None:
    """Wait while many responses are still queued for sending.

    pynetdicom's connection thread reads nothing from the peer while it has responses to send, so
    a C-FIND producing matches faster than they go out would only see a C-CANCEL after the last
    match. Keeping the send queue short lets the cancel in between.
    """
    pending = event.assoc.dul.to_provider_queue
    while pending.qsize() > _MAX_QUEUED_RESPONSES and event.assoc.is_established:
        time.sleep(0.0005)


# C-FIND SOP Class Extended Negotiation (PS3.4 C.5.1.1.1): one byte per option, 1 = supported.
# Offered: combined date-time range matching (byte 2). Not offered: relational queries (byte 1),
# fuzzy semantic matching of person names (byte 3), timezone query adjustment (byte 4), anything
# after.
_COMBINED_DATETIME_BYTE = 1


def handle_sop_extended(event: Event) -> dict[str, bytes]:
    """EVT_SOP_EXTENDED: the options this node accepts, per C-FIND SOP class the requestor asked
    about (the same number of bytes, 0 for every option it does not support)."""
    accepted: dict[str, bytes] = {}
    for sop_class, requested in (event.app_info or {}).items():
        if str(sop_class) not in query.FIND_SOP_CLASSES or not requested:
            continue
        reply = bytearray(len(requested))
        if len(requested) > _COMBINED_DATETIME_BYTE and requested[_COMBINED_DATETIME_BYTE] == 1:
            reply[_COMBINED_DATETIME_BYTE] = 1
        accepted[str(sop_class)] = bytes(reply)
    return accepted


def _combined_datetime_negotiated(event: Event, sop_class: str) -> bool:
    """Whether this association accepted combined date-time matching for `sop_class`."""
    reply = event.assoc.acceptor.sop_class_extended.get(sop_class) or b""
    return len(reply) > _COMBINED_DATETIME_BYTE and reply[_COMBINED_DATETIME_BYTE] == 1


@_handler("find")
def handle_find(event: Event) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND: one Pending (0xFF00) response per match, then Success (or Cancel)."""
    calling = _calling_ae(event)
    sop_class = str(event.request.AffectedSOPClassUID)
    model = query.FIND_SOP_CLASSES.get(sop_class)
    if model is None:
        yield _status(query.STATUS_IDENTIFIER_MISMATCH, "not a supported C-FIND SOP class"), None
        return
    try:
        identifier = _identifier(event)
        query.require_permission(calling, "find")
        matches = query.find(
            identifier,
            model,
            retrieve_aet=settings.BTT_DICOM_AET,
            combined_datetime=_combined_datetime_negotiated(event, sop_class),
        )
        count = 0
        for response in matches:
            _let_the_peer_speak(event)
            if event.is_cancelled:
                logger.info("C-FIND from %s cancelled after %d matches", calling, count)
                yield 0xFE00, None  # Cancel
                return
            count += 1
            yield 0xFF00, response  # Pending
        logger.info(
            "C-FIND from %s (%s): %d matches", calling, identifier.get("QueryRetrieveLevel", ""), count
        )
        yield 0x0000, None  # Success
    except QueryError as exc:
        logger.warning("C-FIND from %s refused: 0x%04X %s", calling, exc.status, exc.comment)
        yield exc.status_dataset(), None
    except DatabaseError as exc:
        logger.exception("C-FIND from %s: database error", calling)
        yield _status(0xA700, f"Out of resources: index unavailable: {exc}"), None  # Out of resources
    except Exception as exc:
        logger.exception("C-FIND from %s failed", calling)
        yield _status(0xC000, f"Unable to process: {type(exc).__name__}: {exc}"), None  # Unable to process


# --- C-MOVE and C-GET --------------------------------------------------------------------------------


def _select(identifier: Dataset, model: str) -> list[retrieve.StoredInstance]:
    """The stored instances a C-MOVE / C-GET identifier asks for; raises QueryError."""
    try:
        items = retrieve.stored_instances(query.instances_to_retrieve(identifier, model))
    except DatabaseError as exc:
        raise QueryError(
            query.STATUS_OUT_OF_RESOURCES, f"Out of resources: index unavailable: {exc}"
        ) from exc
    if len(items) > 65535:
        # The sub-operation counters are US: more matches cannot be reported (PS3.4 C.4.2.3).
        raise QueryError(
            query.STATUS_OUT_OF_RESOURCES_MATCHES,
            f"{len(items)} instances match: more than 65535 sub-operations, retrieve a lower level",
        )
    return items


def _require_permission(calling: str, operation: str) -> None:
    """query.require_permission, with a database failure as 0xA700 (the peer table is read)."""
    try:
        query.require_permission(calling, operation)
    except DatabaseError as exc:
        raise QueryError(
            query.STATUS_OUT_OF_RESOURCES, f"Out of resources: index unavailable: {exc}"
        ) from exc


def _sub_operations(
    event: Event,
    items: list[retrieve.StoredInstance],
    operation: str,
    check: Callable[[Any], str | None] | None,
) -> Iterator[tuple[Any, Dataset | None]]:
    """Yield (Pending, dataset) per instance; a failed read or unsendable one becomes a failed sub-op."""
    calling = _calling_ae(event)
    for index, item in enumerate(items):
        if event.is_cancelled:
            logger.info("C-%s from %s cancelled after %d of %d", operation, calling, index, len(items))
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = [i.sop_instance_uid for i in items[index:]]
            yield 0xFE00, failed  # Cancel
            return
        problem = check(item) if check else None
        if problem is None:
            try:
                dataset = retrieve.read_dataset(item)
            except Exception as exc:
                problem = f"cannot read the stored file: {exc}"
        if problem is not None:
            logger.error(
                "C-%s from %s: sub-operation for %s fails: %s",
                operation,
                calling,
                item.sop_instance_uid,
                problem,
            )
            # A dataset without file meta makes pynetdicom count a failed sub-operation and list
            # its SOP Instance UID in the FailedSOPInstanceUIDList.
            yield 0xFF00, retrieve.unsendable_dataset(item)  # Pending (a failed sub-operation)
            continue
        yield 0xFF00, dataset  # Pending: pynetdicom sends it with C-STORE


@dataclass
class MovePlan:
    """A C-MOVE request, decided before any association with its destination is opened.

    `refusal` set: the request is answered with that status and nothing is sent (no association
    with the destination either). Otherwise `items` go to `destination` (none: Success at once).
    """

    destination_aet: str
    destination: RemoteAE | None = None
    items: list[retrieve.StoredInstance] = field(default_factory=list)
    refusal: QueryError | None = None


def plan_move(event: Event) -> MovePlan:
    """Decide a C-MOVE request: the SOP class, the calling AE's permission, the destination (a
    RemoteAE with allow_move), the identifier and the instances it selects. Never raises: every
    failure becomes the plan's refusal. The permission comes before the destination so that an AE
    without it learns nothing about the configured destinations."""
    calling = _calling_ae(event)
    plan = MovePlan(destination_aet=str(event.move_destination or "").strip())
    try:
        model = query.MOVE_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID))
        if model is None:
            raise QueryError(query.STATUS_IDENTIFIER_MISMATCH, "not a supported C-MOVE SOP class")
        identifier = _identifier(event)
        _require_permission(calling, "move")
        try:
            plan.destination = query.move_destination(plan.destination_aet)
        except DatabaseError as exc:
            raise QueryError(
                query.STATUS_OUT_OF_RESOURCES, f"Out of resources: index unavailable: {exc}"
            ) from exc
        if plan.destination is None:
            logger.warning(
                "C-MOVE from %s: move destination %r unknown (or not allowed)", calling, plan.destination_aet
            )
            raise QueryError(
                query.STATUS_MOVE_DESTINATION_UNKNOWN,
                f"Move destination {plan.destination_aet or '(empty)'} is unknown or not allowed",
            )
        plan.items = _select(identifier, model)
    except QueryError as exc:
        plan.refusal = exc
    except Exception as exc:
        logger.exception("C-MOVE from %s failed", calling)
        plan.refusal = QueryError(
            query.STATUS_UNABLE_TO_PROCESS, f"Unable to process: {type(exc).__name__}: {exc}"
        )
    if plan.refusal is not None:
        plan.items = []
        if plan.refusal.status != query.STATUS_MOVE_DESTINATION_UNKNOWN:
            logger.warning(
                "C-MOVE from %s refused: 0x%04X %s", calling, plan.refusal.status, plan.refusal.comment
            )
    return plan


# The plan NodeQueryRetrieveService made for the C-MOVE request this association thread is
# serving, for handle_move to carry out (an association serves one request at a time).
_planned = threading.local()


def _take_plan(event: Event) -> MovePlan | None:
    plan = getattr(_planned, "plan", None)
    if plan is None or getattr(_planned, "request", None) is not event.request:
        return None
    _planned.plan = _planned.request = None
    return plan


@_handler("move")
def handle_move(event: Event) -> Iterator[Any]:
    """EVT_C_MOVE: the destination (address, port, association kwargs), the count, the instances.

    The request was planned by NodeQueryRetrieveService, which answers refusals itself without
    connecting to the destination. Called without it (a bare pynetdicom service class), a refusal
    still never yields an address: `(None, None)` for an unknown destination (pynetdicom answers
    0xA801), else the refusal's status data set (pynetdicom answers 0xC515).
    """
    calling = _calling_ae(event)
    plan = _take_plan(event) or plan_move(event)
    if plan.refusal is not None:
        if plan.refusal.status == query.STATUS_MOVE_DESTINATION_UNKNOWN:
            yield None, None  # pynetdicom answers 0xA801 Move destination unknown
        else:
            yield plan.refusal.status_dataset()  # not an address: pynetdicom answers 0xC515
        return
    assert plan.destination is not None  # a plan without a refusal has its destination
    kwargs: dict[str, Any] = {"contexts": retrieve.presentation_contexts(plan.items)}
    tls = retrieve.tls_args(plan.destination)
    if tls is not None:
        kwargs["tls_args"] = tls
    _release_db_connection()  # nothing more to read from the database: don't hold it while sending
    yield plan.destination.host, plan.destination.port, kwargs
    # No instances: pynetdicom answers Success (no sub-operations) without associating.
    logger.info("C-MOVE from %s: %d instances to %s", calling, len(plan.items), plan.destination)
    yield len(plan.items)  # the number of C-STORE sub-operations
    yield from _sub_operations(event, plan.items, "MOVE", None)


class NodeQueryRetrieveService(QueryRetrieveServiceClass):
    """pynetdicom's Query/Retrieve service class, deciding a C-MOVE before it connects anywhere.

    pynetdicom associates with the move destination as soon as a handler has yielded the
    destination's address and a non-zero count, and takes a status only after that: a refused
    C-MOVE (no permission, a bad identifier) to a known destination would still open and release
    an association there. For requests handled by `handle_move`, this class plans the request
    first (`plan_move`) and answers a refusal itself, with the status, its ErrorComment and
    OffendingElement, and zero sub-operation counters; an accepted plan goes to pynetdicom's own
    C-MOVE implementation, whose handler (`handle_move`) carries it out. Requests bound to any
    other handler (other AEs of the process) are served by pynetdicom unchanged.
    """

    def _move_scp(self, req: C_MOVE, context: PresentationContext) -> None:
        bound = self.assoc.get_handlers(evt.EVT_C_MOVE)
        if not bound or bound[0] is not handle_move:
            super()._move_scp(req, context)
            return
        event = Event(
            self.assoc,
            evt.EVT_C_MOVE,
            {"request": req, "context": context.as_tuple, "_is_cancelled": self.is_cancelled},
        )
        plan = plan_move(event)
        if plan.refusal is None:
            _planned.plan, _planned.request = plan, req
            try:
                super()._move_scp(req, context)
            finally:
                _planned.plan = _planned.request = None
            return
        _release_db_connection()
        rsp = C_MOVE()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp = self.validate_status(plan.refusal.status_dataset(), rsp)
        # Nothing was attempted: every counter of the final response is zero.
        rsp.NumberOfCompletedSuboperations = 0
        rsp.NumberOfFailedSuboperations = 0
        rsp.NumberOfWarningSuboperations = 0
        self.dimse.send_msg(rsp, cast(int, context.context_id))


def install_move_service() -> None:
    """Have pynetdicom serve the C-MOVE SOP classes with NodeQueryRetrieveService.

    pynetdicom picks a request's service class with `uid_to_service_class` (imported into its
    association module) and offers no other way to supply one; this wraps that function once per
    process. The class only changes requests bound to `handle_move`.
    """
    current = pynetdicom_association.uid_to_service_class
    if getattr(current, "btt_move_service", False):
        return

    def uid_to_service_class(uid: str) -> type[ServiceClass]:
        if uid in query.MOVE_SOP_CLASSES:
            return NodeQueryRetrieveService
        return current(uid)

    uid_to_service_class.btt_move_service = True  # type: ignore[attr-defined]
    pynetdicom_association.uid_to_service_class = uid_to_service_class


@_handler("get")
def handle_get(event: Event) -> Iterator[Any]:
    """EVT_C_GET: the count, then the instances, sent back over the same association."""
    calling = _calling_ae(event)
    model = query.GET_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID))
    try:
        if model is None:
            raise QueryError(query.STATUS_IDENTIFIER_MISMATCH, "not a supported C-GET SOP class")
        identifier = _identifier(event)
        _require_permission(calling, "get")
        items = _select(identifier, model)
    except QueryError as exc:
        logger.warning("C-GET from %s refused: 0x%04X %s", calling, exc.status, exc.comment)
        yield 1  # one sub-operation: the refusal that follows
        yield exc.status_dataset(), None
        return
    except Exception as exc:
        logger.exception("C-GET from %s failed", calling)
        yield 1  # one sub-operation: the refusal that follows
        yield _status(0xC000, f"Unable to process: {type(exc).__name__}: {exc}"), None  # Unable to process
        return
    _release_db_connection()
    logger.info("C-GET from %s: %d instances", calling, len(items))
    accepted = retrieve.accepted_storage_contexts(event.assoc)
    yield len(items)  # the number of C-STORE sub-operations
    yield from _sub_operations(event, items, "GET", lambda item: retrieve.sendable_problem(item, accepted))


QUERY_RETRIEVE_HANDLERS: list[tuple] = [
    (evt.EVT_SOP_EXTENDED, handle_sop_extended),
    (evt.EVT_C_FIND, handle_find),
    (evt.EVT_C_MOVE, handle_move),
    (evt.EVT_C_GET, handle_get),
]


def add_query_retrieve_contexts(ae: AE) -> None:
    """Add the Query/Retrieve presentation contexts this node supports as an SCP.

    Patient Root and Study Root FIND, MOVE and GET. C-GET sends instances back on the requestor's
    association, so every storage context the AE supports at this point also accepts the
    requestor's SCP/SCU role selection (call this after adding the storage contexts, or call
    `accept_storage_roles(ae)` again afterwards). C-MOVE requests are served by
    NodeQueryRetrieveService (`install_move_service`), so a refusal never reaches the destination.
    """
    for sop_class in (*query.FIND_SOP_CLASSES, *query.MOVE_SOP_CLASSES, *query.GET_SOP_CLASSES):
        ae.add_supported_context(sop_class, QR_TRANSFER_SYNTAXES)
    accept_storage_roles(ae)
    install_move_service()


def accept_storage_roles(ae: AE) -> None:
    """Let C-GET requestors take the SCP role for every storage context `ae` supports."""
    for context in ae.supported_contexts:
        if issubclass(uid_to_service_class(context.abstract_syntax), StorageServiceClass):
            ae.add_supported_context(context.abstract_syntax, [], scu_role=True, scp_role=True)
