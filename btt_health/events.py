"""Explicit events between the parts of the server: who announces what, with which payload.

Parts talk through the FHIR store and through these events, never through each other's tables
(`../shared/design.md`). An event has a name and a JSON-serialisable payload (a plain dict, so a
subscriber can hand it to a Celery task as is). Producers call `emit`; consumers `subscribe` a
handler, usually in their AppConfig.ready(), or list it in `BTT_EVENT_SUBSCRIBERS`.

Delivery contract (the same for every event):

- Handlers run synchronously in the process that emits, in the order they subscribed. Events are
  emitted by Celery tasks, so handlers run in a worker, inside the emitting task's database
  transaction. A handler should be quick: record what it needs and queue its own Celery task with
  `transaction.on_commit` (so nothing is queued if the emission rolls back).
- At least once: a handler that raises makes `emit` raise `EventDeliveryError`; the producer rolls
  back its transaction (the handlers' writes with it) and emits again later, to every handler. A
  crash after the commit of an emission can also repeat it. Handlers must therefore be
  idempotent, keyed by the payload's `event_id`, which is the same for every delivery of one
  occurrence of the event.
- Handlers get their own copy of the payload.

Events (the payload keys are exactly these; `emit` refuses a payload with missing or extra keys):

`study_received` (`STUDY_RECEIVED`), emitted by the DICOM node (`integrations/dicom/study_complete.py`)
once per completed study: no instance of the study arrived for `BTT_DICOM_STUDY_QUIET_SECONDS`, over
any number of associations. More instances later start a new cycle that ends with another event.

    event_id               "study_received:<study_instance_uid>:<completion_count>"
    study_instance_uid     Study Instance UID (0020,000D)
    patient_id             Patient ID (0010,0020) as received
    issuer_of_patient_id   Issuer of Patient ID (0010,0021), "" when absent
    fhir_patient_id        logical id of the FHIR Patient the ImagingStudy refers to ("" if none)
    accession_number       Accession Number (0008,0050), "" when absent
    modalities             sorted list of the modalities of the study's series, e.g. ["CT"]
    body_parts             sorted list of the series' Body Part Examined values (may be empty)
    sop_class_uids         sorted list of the SOP Class UIDs of the study's instances
    number_of_series       series of the study in the index now
    number_of_instances    instances of the study in the index now
    calling_ae             calling AE title of the association that sent the most recent instance
    completion_count       1 for the first completion, 2, 3, ... when more instances arrived later
    first_received_at      ISO 8601 UTC time the study's first instance was stored
    last_received_at       ISO 8601 UTC time its most recent instance was stored
    completed_at           ISO 8601 UTC time this completion was detected
    fhir_imaging_study_id  logical id of the FHIR ImagingStudy kept for the study ("" if it could
                           not be written; the completion is announced anyway)
    fhir_service_request_ids  logical ids of the ServiceRequests the ImagingStudy is basedOn

`report_finalised` (`REPORT_FINALISED`), emitted by the FHIR store (`integrations/fhir/report_events.py`)
inside the transaction that writes a version of a DiagnosticReport whose status is `final`,
`amended`, `corrected` or `appended` while the previous version's status was another one (or there
was none), and on every version whose status is `amended`, `corrected` or `appended` (each
correction counts). Whatever writes it (the FHIR REST API, a transaction Bundle, the clinician
viewer, a service function) emits it, so a handler that raises fails that write. Subscribers: the
HL7 v2 interface (`integrations/hl7v2/subscribers.py`: one ORU^R01 per configured destination).

    event_id               "report_finalised:<diagnostic_report_id>:<version_id>"
    diagnostic_report_id   logical id of the DiagnosticReport
    version_id             its meta.versionId that carries the status (a string, as in FHIR)
    status                 final, amended, corrected or appended
    fhir_patient_id        logical id of the Patient the report's subject refers to ("" if none)
    imaging_study_ids      logical ids of the ImagingStudies in DiagnosticReport.imagingStudy
    service_request_ids    logical ids of the ServiceRequests in DiagnosticReport.basedOn
    accession_number       the accession number (identifier typed ACSN) of the first of those
                           ServiceRequests, else ImagingStudies, that has one ("" if none)
    finalised_at           ISO 8601 UTC time of that version (its meta.lastUpdated)

Events still to come (named here so the name stays reserved): `consent_changed` (ledger bridge).
It is added to `EVENTS` with its payload when its producer is written.
"""

from __future__ import annotations

import copy
import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

Handler = Callable[[dict], object]


@dataclass(frozen=True)
class Event:
    """A named event and the keys of its payload."""

    name: str
    payload_keys: frozenset[str]

    def __str__(self) -> str:
        return self.name


STUDY_RECEIVED = Event(
    "study_received",
    frozenset(
        {
            "event_id",
            "study_instance_uid",
            "patient_id",
            "issuer_of_patient_id",
            "fhir_patient_id",
            "accession_number",
            "modalities",
            "body_parts",
            "sop_class_uids",
            "number_of_series",
            "number_of_instances",
            "calling_ae",
            "completion_count",
            "first_received_at",
            "last_received_at",
            "completed_at",
            "fhir_imaging_study_id",
            "fhir_service_request_ids",
        }
    ),
)

REPORT_FINALISED = Event(
    "report_finalised",
    frozenset(
        {
            "event_id",
            "diagnostic_report_id",
            "version_id",
            "status",
            "fhir_patient_id",
            "imaging_study_ids",
            "service_request_ids",
            "accession_number",
            "finalised_at",
        }
    ),
)

EVENTS: dict[str, Event] = {event.name: event for event in (STUDY_RECEIVED, REPORT_FINALISED)}


class EventDeliveryError(Exception):
    """A handler raised while an event was emitted; the cause is the handler's exception."""

    def __init__(self, event: Event, handler: Handler, payload: Mapping) -> None:
        self.event = event
        self.handler = handler
        self.event_id = payload.get("event_id", "")
        super().__init__(f"handler {_describe(handler)} failed on {event.name} {self.event_id}")


_lock = threading.Lock()
_handlers: dict[str, list[Handler]] = {name: [] for name in EVENTS}
_configured_loaded = False


def get_event(event: Event | str) -> Event:
    """The `Event` named `event` (or `event` itself); ValueError for an unknown name."""
    if isinstance(event, Event):
        if EVENTS.get(event.name) is not event:
            raise ValueError(f"unknown event {event.name!r}")
        return event
    try:
        return EVENTS[event]
    except KeyError:
        raise ValueError(f"unknown event {event!r}; known: {', '.join(sorted(EVENTS))}") from None


def subscribe(event: Event | str, handler: Handler | None = None):
    """Call `handler(payload)` on every emission of `event`. Usable as a decorator.

    Subscribing the same handler twice is a no-op (AppConfig.ready may run more than once in
    tests). Returns the handler.
    """
    target = get_event(event)

    def register(func: Handler) -> Handler:
        with _lock:
            handlers = _handlers[target.name]
            if func not in handlers:
                handlers.append(func)
        return func

    return register if handler is None else register(handler)


def unsubscribe(event: Event | str, handler: Handler) -> bool:
    """Remove `handler` from `event`; whether it was subscribed."""
    target = get_event(event)
    with _lock:
        handlers = _handlers[target.name]
        if handler in handlers:
            handlers.remove(handler)
            return True
    return False


def subscribers(event: Event | str) -> list[Handler]:
    """The handlers of `event`, in calling order (those of `BTT_EVENT_SUBSCRIBERS` included)."""
    target = get_event(event)
    _load_configured_subscribers()
    with _lock:
        return list(_handlers[target.name])


def emit(event: Event | str, payload: Mapping) -> int:
    """Call every handler of `event` with a copy of `payload`; the number of handlers called.

    Raises ValueError when the payload's keys are not the event's, and `EventDeliveryError`
    (from the handler's exception) as soon as a handler raises; later handlers are not called
    then. The caller decides what a failure means (the producers here roll back and retry).
    """
    target = get_event(event)
    keys = set(payload)
    if keys != target.payload_keys:
        missing = sorted(target.payload_keys - keys)
        extra = sorted(keys - target.payload_keys)
        raise ValueError(f"{target.name} payload: missing {missing}, unexpected {extra}")
    handlers = subscribers(target)
    for handler in handlers:
        try:
            handler(copy.deepcopy(dict(payload)))
        except Exception as exc:
            logger.exception(
                "event %s %s: handler %s failed", target.name, payload.get("event_id"), _describe(handler)
            )
            raise EventDeliveryError(target, handler, payload) from exc
    logger.info("event %s %s delivered to %d handler(s)", target.name, payload.get("event_id"), len(handlers))
    return len(handlers)


def _describe(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


def _load_configured_subscribers() -> None:
    """Subscribe the handlers named in `BTT_EVENT_SUBSCRIBERS` (once per process).

    Each entry is `event=package.module.function`; a bad entry raises ImproperlyConfigured naming it.
    """
    global _configured_loaded
    if _configured_loaded:
        return
    from django.conf import settings

    entries = list(getattr(settings, "BTT_EVENT_SUBSCRIBERS", ()))
    resolved: list[tuple[str, Handler]] = []
    for entry in entries:
        name, _, path = entry.partition("=")
        module_name, _, attribute = path.strip().rpartition(".")
        if name.strip() not in EVENTS or not module_name or not attribute:
            raise ImproperlyConfigured(
                f"BTT_EVENT_SUBSCRIBERS: {entry!r} is not 'event=package.module.function' "
                f"with event one of {', '.join(sorted(EVENTS))}"
            )
        try:
            handler = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ImproperlyConfigured(
                f"BTT_EVENT_SUBSCRIBERS: cannot import {path.strip()!r}: {exc}"
            ) from exc
        if not callable(handler):
            raise ImproperlyConfigured(f"BTT_EVENT_SUBSCRIBERS: {path.strip()!r} is not callable")
        resolved.append((name.strip(), handler))
    for name, handler in resolved:
        subscribe(name, handler)
    _configured_loaded = True
