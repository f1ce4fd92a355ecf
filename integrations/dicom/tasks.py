"""Celery tasks of the DICOM node: study-complete checks and ImagingStudy refreshes.

Thin wrappers over `study_complete.py` (where the contracts are). All run on the queue
`BTT_DICOM_TASK_QUEUE` (default `default`), are idempotent, `acks_late`, and retry with
exponential backoff on database errors (and, for the check, on a failing event subscriber).
They are queued with `transaction.on_commit` by `study_complete.instance_stored`, or re-queue
themselves (`queue_check`, `queue_refresh`) while a study is still being received.

Countdowns are handled by the worker (the message carries an ETA; the worker holds it until
then), so they work the same on the embedded filesystem broker, Redis and RabbitMQ. A single hop
waits at most `MAX_COUNTDOWN_SECONDS`; a longer quiet period is reached in several hops (keeps
messages well inside Redis' visibility timeout).
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import DatabaseError

from btt_health.events import EventDeliveryError
from integrations.dicom import (
    study_complete,
    tasks_scu,  # noqa: F401  (registers dicom.store_to_remote with the worker)
)

logger = logging.getLogger(__name__)

MAX_COUNTDOWN_SECONDS = 600.0

_RETRY = {
    "acks_late": True,
    "retry_backoff": 1,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 20,
}


@shared_task(
    name="dicom.check_study_complete",
    bind=True,
    autoretry_for=(DatabaseError, EventDeliveryError),
    **_RETRY,
)
def check_study_complete(self, study_instance_uid: str, cycle: int | None = None) -> dict:
    """Complete the study if no instance arrived for the quiet period, else re-check later.

    See `study_complete.check_completion`. Returns the outcome as a dict (for the worker log).
    """
    result = study_complete.check_completion(study_instance_uid, cycle)
    if result.outcome == "waiting":
        queue_check(study_instance_uid, cycle, countdown=result.wait_seconds)
    return {"study": study_instance_uid, "outcome": result.outcome, "emitted": result.emitted}


@shared_task(
    name="dicom.refresh_imaging_study",
    bind=True,
    autoretry_for=(DatabaseError,),
    **_RETRY,
)
def refresh_imaging_study(self, study_instance_uid: str, cycle: int, synced_up_to: str | None = None) -> dict:
    """While a study is received, rewrite its ImagingStudy every
    `BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS` when instances arrived (debounced; completion writes
    it too). See `study_complete.refresh_while_receiving`.
    """
    result = study_complete.refresh_while_receiving(study_instance_uid, cycle, synced_up_to)
    if result.outcome == "stalled":
        queue_check(study_instance_uid, cycle, countdown=0)
    elif result.outcome != "done":
        queue_refresh(
            study_instance_uid,
            cycle,
            countdown=settings.BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS,
            synced_up_to=result.synced_up_to,
        )
    return {"study": study_instance_uid, "outcome": result.outcome}


@shared_task(name="dicom.recover_stalled_studies", autoretry_for=(DatabaseError,), **_RETRY)
def recover_stalled_studies() -> int:
    """Re-queue checks of studies whose cycle looks lost or whose event is still due (how many)."""
    return len(study_complete.recover_stalled_studies())


def queue_check(study_instance_uid: str, cycle: int | None, *, countdown: float) -> None:
    """Publish `check_study_complete` now (call it from `transaction.on_commit` inside a transaction)."""
    check_study_complete.apply_async(
        args=[study_instance_uid, cycle],
        countdown=max(0.0, min(countdown, MAX_COUNTDOWN_SECONDS)),
        queue=settings.BTT_DICOM_TASK_QUEUE,
    )


def queue_refresh(
    study_instance_uid: str, cycle: int, *, countdown: float, synced_up_to: str | None = None
) -> None:
    """Publish `refresh_imaging_study` now (from `transaction.on_commit` inside a transaction)."""
    refresh_imaging_study.apply_async(
        args=[study_instance_uid, cycle, synced_up_to],
        countdown=max(0.0, min(countdown, MAX_COUNTDOWN_SECONDS)),
        queue=settings.BTT_DICOM_TASK_QUEUE,
    )


@worker_ready.connect
def _recover_when_a_worker_starts(sender=None, **kwargs) -> None:
    """A worker that consumes the DICOM queue re-queues what a crash or broker outage left behind."""
    try:
        consumed = set(sender.app.amqp.queues.consume_from or ()) if sender is not None else set()
    except AttributeError:
        consumed = set()
    if consumed and settings.BTT_DICOM_TASK_QUEUE not in consumed:
        return
    try:
        recover_stalled_studies.apply_async(queue=settings.BTT_DICOM_TASK_QUEUE)
    except Exception:  # the broker may be down at start; the next start or instance retries
        logger.exception("could not queue the stalled-study recovery")
