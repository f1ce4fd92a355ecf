"""STAT before routine, end to end, on Redis and on RabbitMQ.

Four routine jobs and then one STAT job (the order's priority) are published while no worker
consumes the queue (`manage.py requeue_inference_jobs` publishes them, oldest first, as the sweep
does after a broker outage); then a real worker starts (concurrency 1, prefetch multiplier 1,
acks_late) and takes the STAT job before every routine one. Redis sorts by kombu's priority steps
(0 first); RabbitMQ by the queue's `x-max-priority` (CELERY_TASK_QUEUE_MAX_PRIORITY), highest first.
The embedded filesystem transport has no priorities (README, docs/architecture.md).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone
from kombu import Connection

from ai_pipeline.models import AIModel, InferenceJob
from ai_pipeline.registry import sync_registry
from ai_pipeline.services import create_job
from tests.ai_pipeline.support import ct_series, index_study
from tests.ai_pipeline.workers import AMQP_URL, inference_env, new_queue, start_inference_worker
from tests.processes import ProcessLauncher, run_manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

AMQP = os.environ.get("BTT_TEST_AMQP_URL", AMQP_URL)


@pytest.fixture(params=["redis", "amqp"])
def broker(request) -> Iterator[tuple[str, str]]:
    """(broker URL, queue): the test broker's Redis, or RabbitMQ; the queue is removed afterwards."""
    queue = new_queue("pytest-ai-priority")
    url = django_settings.CELERY_BROKER_URL if request.param == "redis" else AMQP
    if request.param == "redis" and not url.startswith("redis"):
        pytest.fail(f"the Redis case needs CELERY_BROKER_URL on Redis (scripts/test.sh sets it), got {url}")
    yield url, queue
    if request.param == "redis":
        client = redis.Redis.from_url(url)
        client.delete(queue, *[f"{queue}\x06\x16{step}" for step in (3, 6, 9)])
    else:
        with Connection(url) as connection:
            connection.default_channel.queue_delete(queue)


def test_a_stat_job_starts_before_routine_jobs_queued_earlier(
    broker: tuple[str, str], process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> None:
    url, queue = broker
    assert sync_registry().ok
    model = AIModel.objects.get(name="ct-lesion-demo")
    start = timezone.now() - timedelta(minutes=10)
    jobs: list[InferenceJob] = []
    for index, priority in enumerate(["routine", "routine", "routine", "routine", "stat"]):
        uid = index_study(
            ct_series(slices=6, patient_id=f"PAT-PRIO-{uuid.uuid4().hex[:6]}", accession=f"ACC-P{index}")
        )
        job, _ = create_job(uid, model, priority=priority)
        # Never published yet, queued one after another: the STAT one last.
        InferenceJob.objects.filter(pk=job.pk).update(queued_at=start + timedelta(seconds=index))
        jobs.append(job)
    env = inference_env(test_database_env, queue, {"CELERY_BROKER_URL": url})

    published = run_manage("requeue_inference_jobs", env=env)
    assert published.returncode == 0, published.stderr
    assert "5 job(s) re-queued" in published.stdout, published.stdout + published.stderr

    worker = start_inference_worker(
        process_launcher, test_database_env, f"ai-priority-{url.split(':')[0]}", queue=queue,
        overrides={"CELERY_BROKER_URL": url},
    )  # fmt: skip
    try:

        def all_done() -> bool:
            return (
                not InferenceJob.objects.filter(pk__in=[j.pk for j in jobs])
                .exclude(state="succeeded")
                .exists()
            )

        wait_until(all_done, 120, f"the five jobs to succeed (worker log: {worker.process.log_path})", 0.2)
    finally:
        worker.process.stop()
    rows = {job.pk: job for job in InferenceJob.objects.filter(pk__in=[j.pk for j in jobs])}
    by_start = sorted(rows.values(), key=lambda job: job.started_at)
    assert [job.priority for job in by_start] == ["stat", "routine", "routine", "routine", "routine"], [
        (job.pk, job.priority, job.started_at.isoformat()) for job in by_start
    ]
    assert all(job.publish_count == 1 and job.attempts == 1 for job in rows.values())
    assert url.split("://")[0] in worker.process.log()  # the worker really used that broker
