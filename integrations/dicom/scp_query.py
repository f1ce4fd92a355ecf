"""C-FIND, C-MOVE and C-GET service class provider: the node's Query/Retrieve handlers.

Thin pynetdicom handlers over the service functions of `query.py` (matching, what to retrieve,
permissions) and `retrieve.py` (reading stored instances, the presentation contexts to send
them with). `scp.py` binds `QUERY_RETRIEVE_HANDLERS` and calls `add_query_retrieve_contexts(ae)`.

Statuses (PS3.4 C.4): every failure goes back with an ErrorComment saying why. Unknown C-MOVE
destination: 0xA801 (pynetdicom answers it when the handler yields no address). A calling AE
without the permission: 0xC001. A bad identifier (level, missing unique key, malformed range):
0xA900. The index database unavailable: 0xA700. Sub-operation failures of C-MOVE / C-GET end
with 0xB000 (some failed) or 0xA702 (all failed), and the FailedSOPInstanceUIDList.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class

from integrations.dicom import query, retrieve
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


@_handler("find")
def handle_find(event: Event) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND: one Pending (0xFF00) response per match, then Success (or Cancel)."""
    calling = _calling_ae(event)
    model = query.FIND_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID))
    if model is None:
        yield _status(query.STATUS_IDENTIFIER_MISMATCH, "not a supported C-FIND SOP class"), None
        return
    try:
        identifier = _identifier(event)
        query.require_permission(calling, "find")
        matches = query.find(identifier, model, retrieve_aet=settings.BTT_DICOM_AET)
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


def _select(event: Event, model: str, operation: str) -> list[retrieve.StoredInstance]:
    """Permission check and selection shared by C-MOVE and C-GET; raises QueryError."""
    calling = _calling_ae(event)
    identifier = _identifier(event)
    query.require_permission(calling, operation)
    try:
        items = retrieve.stored_instances(query.instances_to_retrieve(identifier, model))
    except DatabaseError as exc:
        raise QueryError(
            query.STATUS_OUT_OF_RESOURCES, f"Out of resources: index unavailable: {exc}"
        ) from exc
    if len(items) > 65535:
        raise QueryError(
            query.STATUS_OUT_OF_RESOURCES_MATCHES,
            f"{len(items)} instances match: more than 65535 sub-operations, retrieve a lower level",
        )
    return items


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


@_handler("move")
def handle_move(event: Event) -> Iterator[Any]:
    """EVT_C_MOVE: the destination (address, port, association kwargs), the count, the instances."""
    calling = _calling_ae(event)
    model = query.MOVE_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID))
    destination_aet = str(event.move_destination or "").strip()
    destination = query.move_destination(destination_aet)
    if destination is None:
        logger.warning(
            "C-MOVE from %s: move destination %r unknown (or not allowed)", calling, destination_aet
        )
        yield None, None  # pynetdicom answers 0xA801 Move destination unknown
        return
    error: QueryError | None = None
    items: list[retrieve.StoredInstance] = []
    try:
        if model is None:
            raise QueryError(query.STATUS_IDENTIFIER_MISMATCH, "not a supported C-MOVE SOP class")
        items = _select(event, model, "move")
    except QueryError as exc:
        error = exc
    except Exception as exc:
        logger.exception("C-MOVE from %s failed", calling)
        error = QueryError(query.STATUS_UNABLE_TO_PROCESS, f"Unable to process: {type(exc).__name__}: {exc}")
    # pynetdicom associates with the destination before it takes a status: it needs one context
    # even when nothing will be sent (Verification, for a refusal).
    contexts = retrieve.presentation_contexts(items) or [build_context(Verification)]
    kwargs: dict[str, Any] = {"contexts": contexts}
    tls = retrieve.tls_args(destination)
    if tls is not None:
        kwargs["tls_args"] = tls
    _release_db_connection()  # nothing more to read from the database: don't hold it while sending
    yield destination.host, destination.port, kwargs
    if error is not None:
        # pynetdicom has associated with the destination already; it releases it on this status.
        logger.warning("C-MOVE from %s refused: 0x%04X %s", calling, error.status, error.comment)
        yield 1  # one sub-operation: the refusal that follows
        yield error.status_dataset(), None
        return
    logger.info("C-MOVE from %s: %d instances to %s", calling, len(items), destination)
    yield len(items)  # the number of C-STORE sub-operations
    yield from _sub_operations(event, items, "MOVE", None)


@_handler("get")
def handle_get(event: Event) -> Iterator[Any]:
    """EVT_C_GET: the count, then the instances, sent back over the same association."""
    calling = _calling_ae(event)
    model = query.GET_SOP_CLASSES.get(str(event.request.AffectedSOPClassUID))
    try:
        if model is None:
            raise QueryError(query.STATUS_IDENTIFIER_MISMATCH, "not a supported C-GET SOP class")
        items = _select(event, model, "get")
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
    (evt.EVT_C_FIND, handle_find),
    (evt.EVT_C_MOVE, handle_move),
    (evt.EVT_C_GET, handle_get),
]


def add_query_retrieve_contexts(ae: AE) -> None:
    """Add the Query/Retrieve presentation contexts this node supports as an SCP.

    Patient Root and Study Root FIND, MOVE and GET. C-GET sends instances back on the requestor's
    association, so every storage context the AE supports at this point also accepts the
    requestor's SCP/SCU role selection (call this after adding the storage contexts, or call
    `accept_storage_roles(ae)` again afterwards).
    """
    for sop_class in (*query.FIND_SOP_CLASSES, *query.MOVE_SOP_CLASSES, *query.GET_SOP_CLASSES):
        ae.add_supported_context(sop_class, QR_TRANSFER_SYNTAXES)
    accept_storage_roles(ae)


def accept_storage_roles(ae: AE) -> None:
    """Let C-GET requestors take the SCP role for every storage context `ae` supports."""
    for context in ae.supported_contexts:
        if issubclass(uid_to_service_class(context.abstract_syntax), StorageServiceClass):
            ae.add_supported_context(context.abstract_syntax, [], scu_role=True, scp_role=True)
