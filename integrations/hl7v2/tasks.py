"""Celery tasks of the HL7 v2 interface: outbound delivery and its recovery sweep.

Thin wrappers over `services.py`. The `OutboundMessage` row is the queue; a task only carries
its id, so a task delivered twice (acks_late after a worker crash, the sweep) finds the row
delivered, or locked by the other delivery, and does nothing.

- `hl7v2.deliver_outbound(message_id)`: one attempt (`services.deliver_outbound`); when it should
  be retried, raises `DeliveryRetry`, which Celery retries with exponential backoff and jitter
  (1, 2, 4 ... s, at most `BTT_HL7_RETRY_BACKOFF_MAX`), up to `BTT_HL7_SEND_MAX_ATTEMPTS` tries in
  all (after which the service has marked the row failed).
- `hl7v2.sweep_outbound()`: queues the delivery of pending messages whose next attempt is more
  than a minute overdue (their task was lost to a broker outage or a worker gone with its
  countdowns). Run when a worker consuming `BTT_HL7_TASK_QUEUE` starts, and from the admin.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import DatabaseError

from integrations.hl7v2 import services
from integrations.hl7v2.services import DeliveryRetry

logger = logging.getLogger(__name__)


@shared_task(
    name="hl7v2.deliver_outbound",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DeliveryRetry, DatabaseError),
    retry_backoff=1,
    retry_backoff_max=settings.BTT_HL7_RETRY_BACKOFF_MAX,
    retry_jitter=True,
    # The first try plus retries: the service counts attempts and fails the row at the limit.
    max_retries=settings.BTT_HL7_SEND_MAX_ATTEMPTS - 1,
)
def deliver_outbound_task(self, message_id: int) -> dict:
    """Deliver one outbound message (see `services.deliver_outbound`)."""
    delivery = services.deliver_outbound(message_id)
    if delivery.retry:
        raise DeliveryRetry(delivery.error)
    return {"message": message_id, "state": delivery.state}


@shared_task(
    name="hl7v2.sweep_outbound",
    acks_late=True,
    autoretry_for=(DatabaseError,),
    retry_backoff=5,
    max_retries=10,
)
def sweep_outbound() -> int:
    """Queue the delivery of overdue pending messages; how many."""
    due = services.due_outbound()
    for message_id in due:
        services._queue_delivery(message_id)
    if due:
        logger.info("re-queued %d overdue outbound HL7 message(s)", len(due))
    return len(due)


@worker_ready.connect
def _sweep_when_a_worker_starts(sender=None, **kwargs) -> None:
    """A worker consuming the HL7 queue re-queues what a crash or broker outage left behind."""
    try:
        consumed = set(sender.app.amqp.queues.consume_from or ()) if sender is not None else set()
    except AttributeError:
        consumed = set()
    if consumed and settings.BTT_HL7_TASK_QUEUE not in consumed:
        return
    try:
        sweep_outbound.apply_async(queue=settings.BTT_HL7_TASK_QUEUE)
    except Exception:  # the broker may be down at start; the next start retries
        logger.exception("could not queue the outbound HL7 sweep")
