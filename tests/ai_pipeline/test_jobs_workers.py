"""Jobs brought back to life with a real worker (PostgreSQL test database, the test broker, a
Celery worker process on a queue of its own): a failed job retried through the API runs again,
and the sweep (`manage.py requeue_inference_jobs`, and the one a worker runs when it starts)
re-publishes jobs whose message was never published, was lost, or whose worker died."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from ai_pipeline.models import AIModel, InferenceJob
from ai_pipeline.registry import sync_registry
from ai_pipeline.services import create_job
from tests.ai_pipeline.support import ct_series, index_study
from tests.ai_pipeline.workers import InferenceWorker, start_inference_worker
from tests.processes import ProcessLauncher, run_manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 90.0


@pytest.fixture(scope="module")
def worker(process_launcher: ProcessLauncher, test_database_env: dict[str, str]) -> Iterator[InferenceWorker]:
    started = start_inference_worker(process_launcher, test_database_env, "ai-jobs-worker")
    yield started
    started.process.stop()


@pytest.fixture
def model(worker: InferenceWorker, settings) -> AIModel:
    """This process queues where the worker consumes; the demo model is registered (tables are
    flushed after every transactional test)."""
    settings.BTT_INFERENCE_QUEUE = worker.queue
    result = sync_registry()
    assert result.ok, result.refused
    return AIModel.objects.get(name="ct-lesion-demo")


def _finished(job_id: int, worker: InferenceWorker) -> InferenceJob:
    def done() -> InferenceJob | None:
        job = InferenceJob.objects.get(pk=job_id)
        return job if job.state in (InferenceJob.State.SUCCEEDED, InferenceJob.State.FAILED) else None

    job = wait_until(done, TIMEOUT, f"job {job_id} to finish (worker log: {worker.process.log_path})")
    assert isinstance(job, InferenceJob)
    return job


def test_a_failed_job_retried_through_the_api_runs_again_and_writes_its_report(
    model: AIModel, worker: InferenceWorker, api_client
) -> None:
    datasets = ct_series(slices=8, patient_id="PAT-RETRY", accession="ACC-RETRY")
    uid = str(datasets[0].StudyInstanceUID)
    job, _ = create_job(uid, model, accession_number="ACC-RETRY")
    from ai_pipeline.tasks import queue_inference

    queue_inference(job.pk)  # the study is not in the index yet: a permanent failure
    failed = _finished(job.pk, worker)
    assert failed.state == InferenceJob.State.FAILED
    assert "is not in the DICOM index" in failed.reason
    shown = api_client.get(f"/api/ai/jobs/{job.pk}").json()
    assert shown["state"] == "failed"
    assert shown["reason"] == failed.reason

    index_study(datasets)  # what was missing arrives; the job is retried through the API
    response = api_client.post(f"/api/ai/jobs/{job.pk}/retry")
    assert response.status_code == 202, response.content

    done = _finished(job.pk, worker)
    assert done.state == InferenceJob.State.SUCCEEDED, (done.reason, worker.process.log_tail())
    assert done.attempts == 2
    assert done.publish_count == 2
    shown = api_client.get(f"/api/ai/jobs/{job.pk}").json()
    assert shown["state"] == "succeeded"
    assert shown["reason"] == ""
    assert shown["diagnostic_report"]["id"] == done.diagnostic_report_id
    assert shown["started_at"] >= shown["queued_at"]


def _stuck_job(
    model: AIModel, *, state: str, age: timedelta, published: bool, slices: int = 8
) -> InferenceJob:
    uid = index_study(
        ct_series(slices=slices, patient_id=f"PAT-{uuid.uuid4().hex[:6]}", accession="ACC-SWEEP")
    )
    job, _ = create_job(uid, model)
    past = timezone.now() - age
    InferenceJob.objects.filter(pk=job.pk).update(
        state=state,
        queued_at=past,
        published_at=past if published else None,
        publish_count=1 if published else 0,
        started_at=past if state == InferenceJob.State.RUNNING else None,
        attempts=1 if state == InferenceJob.State.RUNNING else 0,
        worker="celery@gone:4242" if state == InferenceJob.State.RUNNING else "",
    )
    return InferenceJob.objects.get(pk=job.pk)


def test_the_sweep_command_requeues_stuck_jobs_once(model: AIModel, worker: InferenceWorker) -> None:
    """Unpublished (publish failed), lost (published 2 h ago, never started) and overdue (running
    on a dead worker past the time limit) jobs are re-published; fresh ones are left alone."""
    unpublished = _stuck_job(model, state="queued", age=timedelta(minutes=5), published=False)
    lost = _stuck_job(model, state="queued", age=timedelta(hours=2), published=True)
    overdue = _stuck_job(model, state="running", age=timedelta(hours=2), published=True)
    fresh = _stuck_job(model, state="queued", age=timedelta(seconds=5), published=False)
    busy = _stuck_job(model, state="running", age=timedelta(minutes=1), published=True)

    # Run as an operator runs it, with the worker's configuration (database, broker, queue).
    done = run_manage("requeue_inference_jobs", env=worker.env)
    assert done.returncode == 0, done.stderr
    assert f"unpublished: re-queued job(s) {unpublished.pk}" in done.stdout
    assert f"lost: re-queued job(s) {lost.pk}" in done.stdout
    assert f"overdue: re-queued job(s) {overdue.pk}" in done.stdout
    assert "3 job(s) re-queued" in done.stdout

    # Idempotent: the re-published jobs are no longer stuck.
    again = run_manage("requeue_inference_jobs", env=worker.env)
    assert "0 job(s) re-queued" in again.stdout, again.stdout + again.stderr

    for job, attempts in ((unpublished, 1), (lost, 1), (overdue, 2)):
        finished = _finished(job.pk, worker)
        assert finished.state == InferenceJob.State.SUCCEEDED, (finished.reason, worker.process.log_tail())
        assert finished.attempts == attempts
        assert finished.diagnostic_report_id
    for job in (fresh, busy):
        row = InferenceJob.objects.get(pk=job.pk)
        assert (row.state, row.publish_count) == (job.state, job.publish_count)


def test_a_worker_that_starts_sweeps_stuck_jobs(
    model: AIModel, process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> None:
    """A job left `queued` without a published message (the broker was down at commit) is run
    once a worker starts: nobody calls the sweep by hand."""
    job = _stuck_job(model, state="queued", age=timedelta(minutes=10), published=False)
    starting = start_inference_worker(process_launcher, test_database_env, "ai-sweep-at-start")
    try:
        finished = _finished(job.pk, starting)
        assert finished.state == InferenceJob.State.SUCCEEDED, (finished.reason, starting.process.log_tail())
        assert finished.publish_count == 1
        assert "ai-sweep-at-start" in finished.worker
        starting.process.wait_for_log(rf"sweep: job {job.pk} re-queued: its task was never published")
    finally:
        starting.process.stop()
