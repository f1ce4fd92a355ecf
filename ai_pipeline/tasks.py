"""Celery tasks of the AI pipeline: `ai_pipeline.run_inference`, and model registration at start.

`run_inference(job_id, event, specialty)` runs one InferenceJob (queued by
`subscribers.on_study_received` with `transaction.on_commit`) through
`services.run_inference_for_study`, on the queue `BTT_INFERENCE_QUEUE` (default `inference`,
which `serve`'s worker consumes: it is in `BTT_WORKER_QUEUES`). It is

- idempotent: the service returns a succeeded job as is and writes at most one report per study,
  model and version, so a redelivered message is harmless;
- `acks_late` with `reject_on_worker_lost`: a worker killed mid-task leaves the message to be
  delivered again;
- retried with exponential backoff on `TransientInferenceError` (up to `BTT_INFERENCE_MAX_RETRIES`);
  after the last retry the job is marked failed (`services.mark_job_failed`) with the reason;
- bounded by `BTT_INFERENCE_SOFT_TIME_LIMIT` / `BTT_INFERENCE_TIME_LIMIT` seconds (the soft limit
  raises inside the run, which marks the job failed);
- ordered by priority: the job's FHIR priority (stat, asap, urgent, routine) becomes the message's
  Celery priority (`celery_priority`). Redis sorts 0 first; AMQP brokers sort the highest number
  first (their queue then needs `x-max-priority`); the embedded filesystem broker keeps FIFO order.

A worker registers the models of `BTT_MODEL_DIR` when it is ready (`worker_ready`), so a fresh
stack has the demo model without running `manage.py sync_models` first.
"""

from __future__ import annotations

import logging
import os

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import connections

from ai_pipeline import services
from ai_pipeline.models import InferenceJob
from ai_pipeline.registry import ModelUnavailableError

logger = logging.getLogger(__name__)

_REDIS_PRIORITY = {"stat": 0, "asap": 3, "urgent": 6, "routine": 9}


def celery_priority(priority: str, broker_url: str | None = None) -> int | None:
    """The Celery message priority of a job priority for the configured broker (None: unsupported)."""
    scheme = (broker_url or settings.CELERY_BROKER_URL).split("://", 1)[0].lower()
    level = _REDIS_PRIORITY.get(priority, 9)
    if scheme.startswith(("redis", "rediss", "sentinel")):
        return level  # kombu's Redis transport: 0 is served first (steps 0, 3, 6, 9)
    if scheme.startswith(("amqp", "pyamqp", "amqps", "librabbitmq")):
        return 9 - level  # RabbitMQ: the highest number is served first
    return None


def queue_inference(job_id: int, event: dict | None = None, *, specialty: str | None = None) -> None:
    """Publish `run_inference` for the job (call it from `transaction.on_commit`)."""
    priority = InferenceJob.objects.filter(pk=job_id).values_list("priority", flat=True).first() or "routine"
    options = {"queue": settings.BTT_INFERENCE_QUEUE}
    level = celery_priority(priority)
    if level is not None:
        options["priority"] = level
    run_inference.apply_async(args=[job_id, event, specialty], **options)


@shared_task(
    name="ai_pipeline.run_inference",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(services.TransientInferenceError,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=settings.BTT_INFERENCE_MAX_RETRIES,
    soft_time_limit=settings.BTT_INFERENCE_SOFT_TIME_LIMIT,
    time_limit=settings.BTT_INFERENCE_TIME_LIMIT,
)
def run_inference(self, job_id: int, event: dict | None = None, specialty: str | None = None) -> dict:
    """Run one inference job; the job's outcome as a dict (for the worker log)."""
    try:
        job = InferenceJob.objects.select_related("routing_rule").get(pk=job_id)
    except InferenceJob.DoesNotExist:
        logger.warning("inference job %s is gone; nothing to run", job_id)
        return {"job": job_id, "state": "gone"}
    worker = f"{self.request.hostname or 'celery'}:{os.getpid()}"
    try:
        job = services.run_inference_for_study(
            job.study_instance_uid,
            job.model_name,
            worker=worker,
            model_version=job.model_version,
            priority=job.priority,
            event=event,
            routing_rule=job.routing_rule,
            specialty=specialty,
        )
    except ModelUnavailableError as exc:  # disabled or gone since it was routed: retrying will not help
        job = services.mark_job_failed(job_id, f"{exc.__class__.__name__}: {exc}")
    except services.TransientInferenceError as exc:
        if self.request.retries >= self.max_retries:
            services.mark_job_failed(job_id, f"gave up after {self.request.retries + 1} attempt(s): {exc}")
        raise  # autoretry_for retries it with backoff (or, out of retries, the task fails)
    return {
        "job": job.pk,
        "state": job.state,
        "report": job.diagnostic_report_id,
        "reason": job.reason[:200],
    }


@worker_ready.connect
def _sync_models_when_a_worker_starts(sender=None, **kwargs) -> None:
    """Register the models of BTT_MODEL_DIR when a worker that runs inference starts."""
    try:
        consumed = set(sender.app.amqp.queues.consume_from or ()) if sender is not None else set()
    except AttributeError:
        consumed = set()
    if consumed and settings.BTT_INFERENCE_QUEUE not in consumed:
        return
    from ai_pipeline.registry import sync_registry

    try:
        result = sync_registry()
        logger.info(
            "models: %d available, %d refused, %d missing",
            len(result.registered),
            len(result.refused),
            len(result.missing),
        )
        for folder, reason in result.refused:
            logger.error("model folder %s refused: %s", folder, reason)
    except Exception:  # a worker without a database at start still runs; the next start syncs
        logger.exception("could not register the models of BTT_MODEL_DIR")
    finally:
        connections.close_all()
