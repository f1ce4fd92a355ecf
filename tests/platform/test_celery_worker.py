"""A real Celery worker process executes tasks queued with `transaction.on_commit`."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from django.db import transaction
from kombu import Connection

from btt_health.api_auth.models import ApiClient
from btt_health.tasks import ping
from tests.processes import WORKER_READY, ManagedProcess, ProcessLauncher, child_env, wait_until, worker_argv

AMQP_URL = os.environ.get("BTT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _marker_pid(marker: Path) -> int:
    return int(marker.read_text().split()[1])


def test_ping_runs_in_process() -> None:
    answer = ping.apply().get()
    assert answer["pong"] is True
    assert answer["pid"] == os.getpid()


@pytest.mark.django_db(transaction=True)
def test_ping_queued_on_commit_runs_on_the_worker(
    celery_worker_process: ManagedProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "pong"
    sent: list[str] = []
    with transaction.atomic():
        ApiClient.objects.create(name="on-commit", role="reader", token_hash="0" * 64, token_prefix="x")
        transaction.on_commit(lambda: sent.append(ping.delay(str(marker)).id))
        assert sent == [], "nothing may be queued before the transaction commits"
    assert len(sent) == 1

    wait_until(marker.exists, 60, f"the worker to run ping task {sent[0]}")
    assert _marker_pid(marker) != os.getpid()
    celery_worker_process.wait_for_log(
        rf"Task btt_health\.ping\[{re.escape(sent[0])}\] succeeded", timeout=10
    )


@pytest.mark.django_db(transaction=True)
def test_nothing_is_queued_when_the_transaction_rolls_back(
    celery_worker_process: ManagedProcess, tmp_path: Path
) -> None:
    rolled_back, probe = tmp_path / "rolled-back", tmp_path / "probe"

    def queue_then_fail() -> None:
        with transaction.atomic():
            transaction.on_commit(lambda: ping.delay(str(rolled_back)))
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        queue_then_fail()
    # A task queued after it has run: had the first been sent, the worker would have taken it too.
    ping.delay(str(probe))
    wait_until(probe.exists, 60, "the worker to run the probe ping")
    assert not rolled_back.exists()


def test_a_worker_on_rabbitmq_runs_ping(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str], tmp_path: Path
) -> None:
    """The production broker path over AMQP: a worker on RabbitMQ, a task published there."""
    queue = f"pytest-{uuid.uuid4().hex[:12]}"
    worker = process_launcher.start(
        "celery-worker-amqp",
        worker_argv([queue], nodename="pytest-amqp"),
        child_env(test_database_env, {"CELERY_BROKER_URL": AMQP_URL}),
    )
    try:
        worker.wait_for_log(WORKER_READY)
        marker = tmp_path / "pong-amqp"
        with Connection(AMQP_URL) as connection:
            result = ping.apply_async(args=[str(marker)], queue=queue, connection=connection)
        wait_until(marker.exists, 60, f"the RabbitMQ worker to run ping task {result.id}")
        worker.wait_for_log(rf"Task btt_health\.ping\[{re.escape(result.id)}\] succeeded", timeout=10)
        assert "amqp://" in worker.log()
    finally:
        code = worker.stop()
        with Connection(AMQP_URL) as connection:
            connection.default_channel.queue_delete(queue)
    assert code == 0, worker.log_tail()
