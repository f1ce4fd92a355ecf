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

Jobs routed to a worker outside the hospital (`InferenceJob.outside`), when
`BTT_INFERENCE_OUTSIDE_QUEUE` is set, are handed out in two steps: `ai_pipeline.dispatch_outside_job`
runs on a hospital worker (the inference queue; `outside.dispatch_job` makes the de-identified copy
and a per-job token), and publishes `ai_pipeline.run_outside_inference` on the outside queue (on
`BTT_OUTSIDE_BROKER_URL` when set, a broker outside workers may use without seeing the hospital's
queues) with a
payload holding only an opaque job id, the model's name, version and sha256, the paths to download
the copy from and post the result to, and the token. That task runs on a worker outside the hospital
(`BTT_OUTSIDE_WORKER`, outside_worker.py: no database, HTTP to `BTT_HOSPITAL_URL` only), retried
with backoff on transient HTTP errors. Without an outside queue, an outside job runs here through
`run_inference` on a de-identified copy. Every publish is recorded on the job (`published_at`,
`publish_count`; `jobs.record_published`).

A worker that consumes the inference queue, when it is ready (`worker_ready`), registers the
models of `BTT_MODEL_DIR` (so a fresh stack has the demo model without `manage.py sync_models`)
and starts the sweep chain: `ai_pipeline.sweep_inference_jobs` runs `jobs.requeue_stuck_jobs` at
once and then every `BTT_INFERENCE_SWEEP_SECONDS` (a countdown the worker holds, so it works on
every broker), one live chain however many workers start (`SweepChain`).
"""

from __future__ import annotations

import logging
import os
import uuid

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from ai_pipeline import dicom_results, jobs, outside, outside_worker, services
from ai_pipeline.models import InferenceJob, SweepChain
from ai_pipeline.registry import ModelUnavailableError
from integrations.dicom.services import StoreRejected

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


def inference_queue(outside: bool) -> str:
    """The queue of a job: BTT_INFERENCE_OUTSIDE_QUEUE for jobs that run outside, when set."""
    if outside and settings.BTT_INFERENCE_OUTSIDE_QUEUE:
        return settings.BTT_INFERENCE_OUTSIDE_QUEUE
    return settings.BTT_INFERENCE_QUEUE


def queue_inference(job_id: int, event: dict | None = None, *, specialty: str | None = None) -> None:
    """Publish `run_inference` for the job (call it from `transaction.on_commit`) and record it.

    A job that runs outside the hospital gets no event payload in its message (it carries Patient
    ID and accession number); the run finds the study's FHIR resources itself. A publish that
    fails raises (and is logged by `on_commit(robust=True)`); the job keeps no `published_at`, so
    the sweep publishes it later.
    """
    row = InferenceJob.objects.filter(pk=job_id).values_list("priority", "outside").first()
    if row is None:
        logger.warning("inference job %s is gone; nothing to queue", job_id)
        return
    priority, outside = row
    options = {"queue": inference_queue(outside)}
    level = celery_priority(priority)
    if level is not None:
        options["priority"] = level
    if outside and settings.BTT_INFERENCE_OUTSIDE_QUEUE:
        # The copy is made here, in the hospital; only it and an opaque id go out (outside.py).
        options["queue"] = settings.BTT_INFERENCE_QUEUE
        dispatch_outside_job.apply_async(args=[job_id], **options)
    else:
        run_inference.apply_async(args=[job_id, None if outside else event, specialty], **options)
    jobs.record_published(job_id)


# How a task that runs a model is delivered, retried and bounded (inside the hospital or outside):
# redelivered if its worker dies, transient failures retried with backoff, within time limits.
_MODEL_RUN_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": settings.BTT_INFERENCE_MAX_RETRIES,
    "soft_time_limit": settings.BTT_INFERENCE_SOFT_TIME_LIMIT,
    "time_limit": settings.BTT_INFERENCE_TIME_LIMIT,
}


@shared_task(
    name="ai_pipeline.run_inference",
    autoretry_for=(services.TransientInferenceError,),
    **_MODEL_RUN_OPTIONS,
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


@shared_task(
    name="ai_pipeline.dispatch_outside_job",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DatabaseError, OSError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=settings.BTT_INFERENCE_MAX_RETRIES,
)
def dispatch_outside_job(job_id: int) -> dict:
    """Hand an outside job to the outside queue (`outside.dispatch_job`); its opaque ref (no token)."""
    payload = outside.dispatch_job(job_id)
    return {"job": job_id, "dispatched_as": payload["job"] if payload else None}


def publish_outside_run(payload: dict, priority: str) -> None:
    """Publish `run_outside_inference` on BTT_INFERENCE_OUTSIDE_QUEUE (from `transaction.on_commit`)."""
    options: dict = {"queue": settings.BTT_INFERENCE_OUTSIDE_QUEUE or settings.BTT_INFERENCE_QUEUE}
    level = celery_priority(priority, settings.BTT_OUTSIDE_BROKER_URL)
    if level is not None:
        options["priority"] = level
    if not settings.BTT_OUTSIDE_BROKER_URL:
        run_outside_inference.apply_async(args=[payload], **options)
        return
    # A broker of its own: outside workers hold its credentials, never the hospital broker's.
    with run_outside_inference.app.connection_for_write(settings.BTT_OUTSIDE_BROKER_URL) as connection:
        run_outside_inference.apply_async(args=[payload], connection=connection, **options)


@shared_task(
    name="ai_pipeline.run_outside_inference",
    autoretry_for=(outside_worker.OutsideTransientError,),
    **_MODEL_RUN_OPTIONS,
)
def run_outside_inference(self, payload: dict) -> dict:
    """On a worker outside the hospital: run the job over HTTP, without the database
    (`outside_worker.run_job`); the hospital's answer (ref, state, reason), or why there is none."""
    task = outside_worker.OutsideTask.from_payload(payload)
    worker = f"{self.request.hostname or 'celery'}:{os.getpid()}"
    try:
        return outside_worker.run_job(task, worker=worker)
    except outside_worker.OutsideRefused as exc:  # nothing to do: the hospital's sweep hands it out again
        logger.warning("outside job %s: %s", task.job, exc)
        return {"job": task.job, "state": "refused", "reason": str(exc)[:500]}


@shared_task(
    name="ai_pipeline.export_dicom_results",
    acks_late=True,
    autoretry_for=(DatabaseError, OSError, StoreRejected),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def export_dicom_results(job_id: int) -> dict:
    """Write the job's result as a DICOM SR, store it in the node and queue it to the PACS
    (`dicom_results.export_dicom_results`; idempotent: the SR's UIDs come from the report key)."""
    return dicom_results.export_dicom_results(job_id)


def queue_dicom_results(job_id: int) -> None:
    """Publish `export_dicom_results` (call it from `transaction.on_commit`) on the inference queue."""
    export_dicom_results.apply_async(args=[job_id], queue=settings.BTT_INFERENCE_QUEUE)


@shared_task(
    name="ai_pipeline.sweep_inference_jobs",
    bind=True,
    acks_late=True,
    autoretry_for=(DatabaseError,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=10,
)
def sweep_inference_jobs(self, chain: str | None = None, queue: str | None = None) -> dict:
    """Re-publish stuck jobs (`jobs.requeue_stuck_jobs`); with `chain`, schedule the next sweep.

    A worker that starts begins a new chain (`start_sweep_chain`); a sweep of an older chain
    sweeps once more and ends, so there is one live chain however many workers started.
    """
    result = jobs.requeue_stuck_jobs()
    if chain is not None and settings.BTT_INFERENCE_SWEEP_SECONDS > 0:
        with transaction.atomic():
            current = SweepChain.objects.select_for_update().filter(name="inference").first()
            if current is not None and current.token == chain:
                current.last_swept_at = timezone.now()
                current.save(update_fields=["last_swept_at", "updated_at"])
                transaction.on_commit(
                    lambda: sweep_inference_jobs.apply_async(
                        kwargs={"chain": chain, "queue": queue},
                        queue=queue or settings.BTT_INFERENCE_QUEUE,
                        countdown=settings.BTT_INFERENCE_SWEEP_SECONDS,
                    )
                )
    return {"requeued": result.as_dict(), "chain": chain}


def start_sweep_chain(queue: str | None = None) -> str:
    """Make a new sweep chain current and queue its first sweep now; the chain's token."""
    token = uuid.uuid4().hex
    with transaction.atomic():
        SweepChain.objects.update_or_create(name="inference", defaults={"token": token})
        transaction.on_commit(
            lambda: sweep_inference_jobs.apply_async(
                kwargs={"chain": token, "queue": queue}, queue=queue or settings.BTT_INFERENCE_QUEUE
            )
        )
    return token


def _consumed_queues(sender) -> set[str]:
    try:
        return set(sender.app.amqp.queues.consume_from or ()) if sender is not None else set()
    except AttributeError:
        return set()


@worker_ready.connect
def _sync_models_when_a_worker_starts(sender=None, **kwargs) -> None:
    """Register the models of BTT_MODEL_DIR when a worker that runs inference starts, and start
    the sweep of stuck jobs (it runs on this worker's inference queue)."""
    if settings.BTT_OUTSIDE_WORKER:  # outside the hospital: no database to register models in
        return
    consumed = _consumed_queues(sender)
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
    try:
        start_sweep_chain(settings.BTT_INFERENCE_QUEUE)
    except Exception:  # broker or database down at start: the next worker start sweeps
        logger.exception("could not start the sweep of stuck inference jobs")
    finally:
        connections.close_all()
