"""Sending with retries: the `store_to_remote` Celery task in a real worker, against a peer that is
down at first (DCMTK storescp started later on its port), and a peer that refuses for good.

The worker is a `celery -A btt_health worker` process on the test database and broker, consuming a
queue of its own and importing `integrations.dicom.tasks_scu` (`-I`); the peers are storescp
processes. The instances are stored through the ingest service first (committed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integrations.dicom.models import RemoteAE
from integrations.dicom.tasks_scu import store_to_remote
from tests.dicom.qr_support import make_image, start_storescp, store, transfer_syntax_samples, uid
from tests.processes import WORKER_READY, ManagedProcess, ProcessLauncher, child_env, free_port, worker_argv

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "qr-scu-tests"


@pytest.fixture(scope="module")
def scu_worker(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[ManagedProcess]:
    from tests.dicom.qr_support_db import QR_TEST_TASK_QUEUE

    env = child_env(test_database_env, {"BTT_DICOM_TASK_QUEUE": QR_TEST_TASK_QUEUE})
    argv = [*worker_argv([QUEUE], nodename="qr-scu"), "-I", "integrations.dicom.tasks_scu"]
    worker = process_launcher.start("celery-scu-worker", argv, env)
    worker.wait_for_log(WORKER_READY)
    yield worker
    worker.stop()


@pytest.fixture
def quiet(settings) -> None:
    from tests.dicom.qr_support_db import QR_TEST_TASK_QUEUE

    settings.BTT_DICOM_TASK_QUEUE = QR_TEST_TASK_QUEUE


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def task_lines(worker: ManagedProcess, task_id: str) -> list[str]:
    return [line for line in worker.log().splitlines() if task_id in line]


def test_sending_retries_until_the_peer_is_up(
    scu_worker: ManagedProcess, process_launcher: ProcessLauncher, quiet: None, tmp_path: Path
) -> None:
    images = [
        make_image(patient_id="RETRY", patient_name="Retry^Me", study="retry", series="s", instance=n)
        for n in (1, 2)
    ]
    for ds in images:
        store(ds, tmp_path / "stored")
    port = free_port()
    RemoteAE.objects.create(ae_title="LATEPEER", host="127.0.0.1", port=port)

    task = store_to_remote.apply_async(
        args=["LATEPEER"], kwargs={"study_instance_uid": uid("retry")}, queue=QUEUE
    )

    wait_for(
        lambda: any("Retry in" in line for line in task_lines(scu_worker, task.id)), 60, "the first retry"
    )
    peer = start_storescp(process_launcher, tmp_path / "peer", "LATEPEER", port=port)
    try:
        wait_for(
            lambda: any("succeeded" in line for line in task_lines(scu_worker, task.id)),
            90,
            "the task to succeed",
        )
        assert set(peer.received()) == {str(ds.SOPInstanceUID) for ds in images}
        retries = [line for line in task_lines(scu_worker, task.id) if "Retry in" in line]
        assert retries
        assert "AssociationFailed" in retries[0]
    finally:
        peer.stop()


def test_permanent_refusals_are_reported_not_retried(
    scu_worker: ManagedProcess, process_launcher: ProcessLauncher, quiet: None, tmp_path: Path
) -> None:
    samples = transfer_syntax_samples("refused", patient_id="REFUSED")
    for label in ("explicit-le", "jpeg2000"):
        store(samples[label], tmp_path / "stored")
    peer = start_storescp(process_launcher, tmp_path / "peer", "PLAINPEER")  # uncompressed only
    RemoteAE.objects.create(ae_title="PLAINPEER", host="127.0.0.1", port=peer.port)
    try:
        task = store_to_remote.apply_async(
            args=["PLAINPEER"], kwargs={"study_instance_uid": uid("refused")}, queue=QUEUE
        )
        line = wait_for(
            lambda: next((line for line in task_lines(scu_worker, task.id) if "succeeded" in line), None),
            60,
            "the task to finish",
        )
        assert "'sent': 1" in line
        assert re.search(
            r"accepted no presentation context for Secondary Capture Image Storage stored as JPEG 2000", line
        ), line
        assert not any("Retry in" in line for line in task_lines(scu_worker, task.id))
        assert set(peer.received()) == {str(samples["explicit-le"].SOPInstanceUID)}
    finally:
        peer.stop()
