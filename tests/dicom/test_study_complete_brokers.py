"""The completion check's countdowns on every broker the server supports.

Countdowns are ETAs that the worker holds, so they should work the same on the embedded filesystem
transport (the README's run command), Redis and RabbitMQ: a worker on each receives a check that
is due too early, re-queues itself through its own broker for the time left, and completes the
study with one event. (Redis is what test_study_complete_events.py runs on.)
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from kombu import Connection

from integrations.dicom.tasks import check_study_complete
from tests.dicom.test_study_complete_support import (
    SeriesSpec,
    new_uid,
    start_study_complete_worker,
    store_instances,
)
from tests.processes import ProcessLauncher

pytestmark = pytest.mark.django_db(transaction=True)

AMQP_URL = os.environ.get("BTT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _filesystem_broker(data_dir: Path) -> tuple[dict[str, str | None], Connection]:
    broker = data_dir / "broker"
    options = {
        "data_folder_in": str(broker / "queue"),
        "data_folder_out": str(broker / "queue"),
        "processed_folder": str(broker / "processed"),
        "control_folder": str(broker / "control"),
        "store_processed": False,
    }
    for folder in ("queue", "processed", "control"):
        (broker / folder).mkdir(parents=True, exist_ok=True)
    return {"CELERY_BROKER_URL": None, "BTT_DATA_DIR": str(data_dir)}, Connection(
        "filesystem://", transport_options=options
    )


@pytest.mark.parametrize("broker", ["filesystem", "amqp"])
def test_a_check_due_too_early_requeues_itself_and_completes(
    broker: str,
    process_launcher: ProcessLauncher,
    test_database_env: dict[str, str],
    tmp_path: Path,
    settings,
) -> None:
    if broker == "filesystem":
        env, connection = _filesystem_broker(tmp_path / "data")
    else:
        env, connection = {"CELERY_BROKER_URL": AMQP_URL}, Connection(AMQP_URL)
    worker = start_study_complete_worker(
        process_launcher,
        test_database_env,
        tmp_path / "events.jsonl",
        quiet=1.0,
        name=f"study-complete-{broker}",
        extra_env=env,
    )
    # The hook's own on-commit publish goes to a Redis queue no worker reads; this test sends the
    # check itself, through the worker's broker.
    void_queue = f"pytest-void-{uuid.uuid4().hex[:8]}"
    settings.BTT_DICOM_TASK_QUEUE = void_queue
    try:
        uid = new_uid()
        store_instances(uid, [SeriesSpec(count=2)])
        with connection:
            sent = check_study_complete.apply_async(args=[uid, 0], queue=worker.queue, connection=connection)

        (event,) = worker.wait_for_events(uid, 1)

        assert event["number_of_instances"] == 2
        # The subscriber runs before the task ends and logs: wait for the log lines.
        worker.process.wait_for_log(
            rf"check_study_complete\[{re.escape(sent.id)}\] succeeded .*'waiting'", 10
        )
        worker.process.wait_for_log(
            r"check_study_complete\[[0-9a-f-]+\] succeeded .*'completed', 'emitted': True", 10
        )
        log = worker.process.log()
        if broker == "amqp":
            assert "amqp://" in log
        worker.assert_no_more_events(uid, 1, settle=1.5)
    finally:
        code = worker.process.stop()
        redis.Redis.from_url(django_settings.CELERY_BROKER_URL).delete(void_queue)
        if broker == "amqp":
            with Connection(AMQP_URL) as amqp:
                amqp.default_channel.queue_delete(worker.queue)
    assert code == 0, worker.process.log_tail()
