"""Inference jobs as the API and the admin see them: listing, one job as JSON, retry, the sweep.

One function per operation (the views in `api.py`, the admin and the tasks call them):

- `job_as_dict(job, detail=False)`: the JSON form of a job (state, reason, timings and durations,
  model, study, priority, attempts, worker, report and Provenance ids; `detail` adds the trust
  score's factors, the findings and the image-quality checks).
- `filter_jobs(study=, state=, model=, version=, priority=, accession=, outside=)`: the jobs
  matching every filter given, newest first; `JobQueryError` names a bad value.
- `retry_job(job_id, requested_by=)`: a `failed` job goes back to `queued` and its task is queued
  again after the commit. Only failed jobs (`JobNotRetryable` otherwise: a queued or running job
  will run, a succeeded one has its report) and only while its model version is still runnable.
- `finding_images(diagnostic_report_id)`: per finding code (system, code) of the report's job, the
  SOP Instance UIDs of its positive images and of their longest run (what the viewer marks).
- `record_published(job_id)`: the task message of a job was handed to the broker (its time and
  count), which is what the sweep goes by.
- `requeue_stuck_jobs()`: the sweep. Re-publishes the task of jobs that are `queued` but whose
  message was never published (the publish after the commit failed: broker down) or was published
  longer than `BTT_INFERENCE_REQUEUE_AFTER` ago without the job starting (a message lost), and of
  jobs `running` for longer than the task's hard time limit plus a grace period (the worker died
  and the message did not come back). Idempotent: a re-published job gets a new `published_at`,
  so the next sweep leaves it alone; the task itself is idempotent, so a message that turns up
  after all only finds a job that is running or done. Rows are taken with
  `select_for_update(skip_locked=True)`, so concurrent sweeps never publish one job twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from ai_pipeline.models import InferenceJob
from ai_pipeline.registry import ModelUnavailableError, RegistryError, get_runnable_model

logger = logging.getLogger(__name__)

State = InferenceJob.State


class JobQueryError(ValueError):
    """A filter value that cannot be used (unknown state, priority...)."""


class JobNotFound(LookupError):
    """No inference job has that id."""


class JobNotRetryable(Exception):
    """The job cannot be retried now; the message says why."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def job_as_dict(job: InferenceJob, *, detail: bool = False) -> dict:
    """The job as JSON (see the module docstring); `detail` adds trust factors, findings and quality."""
    data = {
        "id": job.pk,
        "state": job.state,
        "reason": job.reason,
        "study_instance_uid": job.study_instance_uid,
        "accession_number": job.accession_number,
        "model": {"name": job.model_name, "version": job.model_version, "sha256": job.model_sha256},
        "priority": job.priority,
        "outside": job.outside,
        "attempts": job.attempts,
        "worker": job.worker,
        "event_id": job.event_id,
        "routing_rule": job.routing_rule.name if job.routing_rule_id and job.routing_rule else None,
        "queued_at": _iso(job.queued_at),
        "published_at": _iso(job.published_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "durations": {
            "queue_seconds": job.queue_seconds,
            "run_seconds": job.run_seconds,
            "load_seconds": job.load_seconds,
            "preprocess_seconds": job.preprocess_seconds,
            "inference_seconds": job.inference_seconds,
            "write_seconds": job.write_seconds,
        },
        "images": job.images,
        "providers": job.providers,
        "trust_score": job.trust_score,
        "diagnostic_report": (
            {"id": job.diagnostic_report_id, "reference": f"DiagnosticReport/{job.diagnostic_report_id}"}
            if job.diagnostic_report_id
            else None
        ),
        "provenance_id": job.provenance_id or None,
        "dicom_results": job.dicom_results or None,
    }
    if detail:
        data["trust"] = job.trust
        data["findings"] = job.findings
        data["quality"] = job.quality
    return data


def filter_jobs(
    *,
    study: str | None = None,
    state: str | None = None,
    model: str | None = None,
    version: str | None = None,
    priority: str | None = None,
    accession: str | None = None,
    outside: str | None = None,
) -> QuerySet[InferenceJob]:
    """The jobs matching every filter given (comma-separated lists for state and priority)."""
    jobs = InferenceJob.objects.select_related("routing_rule").order_by("-queued_at", "-pk")
    if study:
        jobs = jobs.filter(study_instance_uid=study.strip())
    if state:
        states = [s.strip() for s in state.split(",") if s.strip()]
        unknown = sorted(set(states) - set(State.values))
        if unknown:
            raise JobQueryError(f"unknown state {', '.join(unknown)}; use {', '.join(State.values)}")
        jobs = jobs.filter(state__in=states)
    if model:
        name, _, model_version = model.strip().partition(":")
        jobs = jobs.filter(model_name=name)
        if model_version:
            jobs = jobs.filter(model_version=model_version)
    if version:
        jobs = jobs.filter(model_version=version.strip())
    if priority:
        priorities = [p.strip() for p in priority.split(",") if p.strip()]
        unknown = sorted(set(priorities) - set(InferenceJob.Priority.values))
        if unknown:
            raise JobQueryError(
                f"unknown priority {', '.join(unknown)}; use {', '.join(InferenceJob.Priority.values)}"
            )
        jobs = jobs.filter(priority__in=priorities)
    if accession:
        jobs = jobs.filter(accession_number=accession.strip())
    if outside:
        if outside.lower() not in ("true", "false"):
            raise JobQueryError(f"outside must be true or false, got {outside!r}")
        jobs = jobs.filter(outside=outside.lower() == "true")
    return jobs


def get_job(job_id: int) -> InferenceJob:
    """The job `job_id` (JobNotFound otherwise)."""
    job = InferenceJob.objects.select_related("routing_rule").filter(pk=job_id).first()
    if job is None:
        raise JobNotFound(f"no inference job {job_id}")
    return job


def retry_job(job_id: int, *, requested_by: str) -> InferenceJob:
    """Put a failed job back to `queued` and queue its task after the commit (see the module docstring)."""
    from ai_pipeline.tasks import queue_inference

    with transaction.atomic():
        job = InferenceJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            raise JobNotFound(f"no inference job {job_id}")
        if job.state != State.FAILED:
            raise JobNotRetryable(f"job {job_id} is {job.state}; only failed jobs can be retried")
        try:
            get_runnable_model(job.model_name, job.model_version)
        except (ModelUnavailableError, RegistryError) as exc:
            raise JobNotRetryable(f"job {job_id}: {exc}") from None
        previous = job.reason
        job.state = State.QUEUED
        job.reason = f"retry requested by {requested_by} (it had failed: {previous})"[:4000]
        job.queued_at = timezone.now()
        job.published_at = None
        job.started_at = job.finished_at = None
        job.queue_seconds = job.run_seconds = None
        job.save()
        # No event payload: the run finds the study's Patient, ImagingStudy and orders itself.
        transaction.on_commit(lambda: queue_inference(job.pk), robust=True)
    logger.info("job %s: retry requested by %s", job_id, requested_by)
    return job


def finding_images(diagnostic_report_id: str) -> dict[tuple[str, str], dict[str, list[str]]]:
    """{(code system, code): {"positive_images": [...], "run_images": [...]}} of the job that wrote
    the DiagnosticReport (empty when no job did, or for jobs recorded before images were kept)."""
    job = InferenceJob.objects.filter(diagnostic_report_id=diagnostic_report_id).only("findings").first()
    found: dict[tuple[str, str], dict[str, list[str]]] = {}
    for finding in (job.findings if job is not None else None) or []:
        code = finding.get("code") or ()
        if len(code) != 2:
            continue
        found[(str(code[0]), str(code[1]))] = {
            "positive_images": [str(uid) for uid in finding.get("positive_images") or []],
            "run_images": [str(uid) for uid in finding.get("run_images") or []],
        }
    return found


def record_published(job_id: int) -> None:
    """The job's task message was handed to the broker now."""
    InferenceJob.objects.filter(pk=job_id).update(
        published_at=timezone.now(), publish_count=F("publish_count") + 1
    )


@dataclass
class SweepResult:
    unpublished: list[int] = field(default_factory=list)  # queued, message never published
    lost: list[int] = field(default_factory=list)  # queued, published long ago, never started
    overdue: list[int] = field(default_factory=list)  # running past the hard time limit

    @property
    def requeued(self) -> list[int]:
        return [*self.unpublished, *self.lost, *self.overdue]

    def as_dict(self) -> dict:
        return {"unpublished": self.unpublished, "lost": self.lost, "overdue": self.overdue}


def stuck_jobs_filter(now: datetime | None = None) -> Q:
    """The condition of the jobs `requeue_stuck_jobs` re-publishes (see the module docstring)."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.BTT_INFERENCE_PUBLISH_GRACE)
    lost_after = timedelta(seconds=settings.BTT_INFERENCE_REQUEUE_AFTER)
    overdue_after = timedelta(
        seconds=settings.BTT_INFERENCE_TIME_LIMIT + settings.BTT_INFERENCE_PUBLISH_GRACE
    )
    queued = Q(state=State.QUEUED)
    unpublished = queued & Q(published_at__isnull=True, queued_at__lt=now - grace)
    lost = queued & Q(published_at__lt=now - lost_after)
    overdue = Q(state=State.RUNNING, started_at__lt=now - overdue_after) & (
        Q(published_at__isnull=True) | Q(published_at__lt=now - overdue_after)
    )
    return unpublished | lost | overdue


def requeue_stuck_jobs(*, now: datetime | None = None, limit: int = 500) -> SweepResult:
    """The sweep (see the module docstring): re-publish the tasks of stuck jobs; what it did."""
    from ai_pipeline.tasks import queue_inference

    now = now or timezone.now()
    result = SweepResult()
    with transaction.atomic():
        jobs = list(
            InferenceJob.objects.select_for_update(skip_locked=True)
            .filter(stuck_jobs_filter(now))
            .order_by("queued_at")[:limit]
        )
        for job in jobs:
            if job.state == State.RUNNING:
                result.overdue.append(job.pk)
                why = f"running on {job.worker} since {job.started_at:%Y-%m-%d %H:%M:%S} past the time limit"
            elif job.published_at is None:
                result.unpublished.append(job.pk)
                why = "its task was never published"
            else:
                result.lost.append(job.pk)
                why = f"its task (published {job.published_at:%Y-%m-%d %H:%M:%S}) never started"
            logger.warning("sweep: job %s re-queued: %s", job.pk, why)
        if jobs:
            # Claimed by the sweep now, so a concurrent or repeated sweep skips them.
            InferenceJob.objects.filter(pk__in=[job.pk for job in jobs]).update(published_at=now)
            for job in jobs:
                transaction.on_commit(lambda pk=job.pk: queue_inference(pk), robust=True)
    return result
