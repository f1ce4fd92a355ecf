"""Celery tasks of the DICOM SCU: sending stored instances to a remote AE, with retries.

`store_to_remote` wraps `scu.store`: idempotent (sending an instance again is harmless: the peer
keeps or replaces it), `acks_late`, on the `default` queue (CELERY_TASK_DEFAULT_QUEUE: Celery
deprecates a `queue` task attribute), retried with exponential backoff when the remote cannot be
reached or answers "out of resources" (`TransientSendError`, and the association failures of
`scu.AssociationFailed`). Permanent refusals (the peer does not take the
SOP class, a compressed syntax it did not accept) are not retried: they are in the result.

Queue it after the data it sends is committed: `queue_store_to_remote(...)` does that with
`transaction.on_commit`. The worker imports this module through `integrations/dicom/tasks.py`.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import DatabaseError, transaction

from integrations.dicom import scu

logger = logging.getLogger(__name__)


class TransientSendError(Exception):
    """Some instances were not stored by the remote for a reason that may pass."""


@shared_task(
    name="dicom.store_to_remote",
    bind=True,
    acks_late=True,
    autoretry_for=(TransientSendError, scu.AssociationFailed, DatabaseError),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def store_to_remote(
    self, ae_title: str, sop_instance_uids: list[str] | None = None, study_instance_uid: str | None = None
) -> dict:
    """C-STORE the named instances (or the whole study) to the remote AE `ae_title`.

    Returns `StoreResult.as_dict()`; raises TransientSendError (so Celery retries, resending
    everything named: harmless) while transient failures remain.
    """
    result = scu.store(ae_title, sop_uids=sop_instance_uids, study_uid=study_instance_uid)
    if result.transient:
        logger.warning(
            "store_to_remote %s: %d transient failures (try %d), retrying",
            ae_title,
            len(result.transient),
            self.request.retries + 1,
        )
        raise TransientSendError(f"{len(result.transient)} instances not stored by {ae_title} yet")
    return result.as_dict()


def queue_store_to_remote(
    ae_title: str, sop_instance_uids: list[str] | None = None, study_instance_uid: str | None = None
) -> None:
    """Queue `store_to_remote` once the current transaction commits (now, outside of one)."""
    if not sop_instance_uids and not study_instance_uid:
        raise ValueError("name the instances to send: sop_instance_uids or study_instance_uid")
    transaction.on_commit(
        lambda: store_to_remote.apply_async(
            args=[ae_title],
            kwargs={"sop_instance_uids": sop_instance_uids, "study_instance_uid": study_instance_uid},
        )
    )
