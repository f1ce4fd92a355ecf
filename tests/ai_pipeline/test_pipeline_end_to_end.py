"""The AI pipeline end to end: DCMTK `storescu` pushes a synthetic CT series to the DICOM node
(`manage.py dicom_scp`), a real Celery worker (PostgreSQL test database, the test broker, quiet
period 1.5 s) completes the study, the `study_received` subscriber routes it to the demo model
(no routing rule: the manifest's applicability, CT) and queues `ai_pipeline.run_inference`, and
the DiagnosticReport becomes readable through a FHIR search. The worker consumes queues of its
own (the node's study-complete queue and an inference queue), so other workers never take its work.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import transaction

from ai_pipeline.models import InferenceJob
from ai_pipeline.registry import sync_registry
from ai_pipeline.subscribers import on_study_received
from ai_pipeline.tasks import queue_inference
from integrations.dicom.models import Study
from integrations.fhir import store
from tests.ai_pipeline.support import ct_series, index_study, write_datasets
from tests.dicom.conftest import DicomNode, run_dcmtk, start_node_process
from tests.processes import WORKER_READY, ManagedProcess, ProcessLauncher, child_env, wait_until, worker_argv

pytestmark = pytest.mark.django_db(transaction=True)

QUIET = 1.5
REPORT_TIMEOUT = 60.0
FHIR_JSON = "application/fhir+json"


@dataclass
class PipelineWorker:
    process: ManagedProcess
    dicom_queue: str
    inference_queue: str

    def node_env(self) -> dict[str, str]:
        return {"BTT_DICOM_TASK_QUEUE": self.dicom_queue, "BTT_DICOM_STUDY_QUIET_SECONDS": str(QUIET)}


@pytest.fixture(scope="module")
def pipeline_worker(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[PipelineWorker]:
    suffix = uuid.uuid4().hex[:10]
    dicom_queue, inference_queue = f"pytest-ai-dicom-{suffix}", f"pytest-ai-inference-{suffix}"
    env = child_env(
        test_database_env,
        {
            "BTT_DICOM_TASK_QUEUE": dicom_queue,
            "BTT_DICOM_STUDY_QUIET_SECONDS": str(QUIET),
            "BTT_INFERENCE_QUEUE": inference_queue,
            "BTT_ONNX_THREADS": "1",
            "BTT_ONNX_PROVIDERS": "cpu",
            "BTT_MODEL_DIR": None,
            "BTT_EVENT_SUBSCRIBERS": None,
        },
    )
    name = "ai-pipeline-worker"
    process = process_launcher.start(name, worker_argv([dicom_queue, inference_queue], nodename=name), env)
    process.wait_for_log(WORKER_READY)
    process.wait_for_log(r"models: \d+ available")
    yield PipelineWorker(process, dicom_queue, inference_queue)
    process.stop()


@pytest.fixture
def pipeline(pipeline_worker: PipelineWorker, settings) -> PipelineWorker:
    """This process queues as the worker consumes, and the demo model is registered (the tables
    are flushed after every transactional test, so the worker's registration at start is gone)."""
    settings.BTT_DICOM_TASK_QUEUE = pipeline_worker.dicom_queue
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = QUIET
    settings.BTT_INFERENCE_QUEUE = pipeline_worker.inference_queue
    result = sync_registry()
    assert any(m.name == "ct-lesion-demo" for m in result.registered), result.refused
    return pipeline_worker


@pytest.fixture
def start_dicom_node(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[Callable[..., DicomNode]]:
    """`start_dicom_node(**env)`: a DICOM node (`manage.py dicom_scp`) stopped when the test ends."""
    nodes: list[DicomNode] = []

    def start(**overrides: str | None) -> DicomNode:
        node = start_node_process(process_launcher, test_database_env, name="ai-dicom-node", **overrides)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def _search(api_client, query: dict) -> list[dict]:
    # Strict handling: an unknown search parameter is an error, not silently ignored.
    response = api_client.get(
        "/fhir/DiagnosticReport", query, headers={"Accept": FHIR_JSON, "Prefer": "handling=strict"}
    )
    assert response.status_code == 200, response.content[:500]
    return [
        entry["resource"]
        for entry in response.json().get("entry", [])
        if entry.get("search", {}).get("mode", "match") == "match"
    ]


def _wait_for_job(uid: str, worker: PipelineWorker) -> InferenceJob:
    def finished() -> bool:
        return InferenceJob.objects.filter(
            study_instance_uid=uid, state__in=[InferenceJob.State.SUCCEEDED, InferenceJob.State.FAILED]
        ).exists()

    wait_until(
        finished, REPORT_TIMEOUT, f"the inference job of {uid} (worker log: {worker.process.log_path})"
    )
    job = InferenceJob.objects.get(study_instance_uid=uid)
    assert job.state == InferenceJob.State.SUCCEEDED, (job.reason, worker.process.log_tail())
    return job


def _wait_for_reports(api_client, query: dict, worker: PipelineWorker) -> list[dict]:
    found: list[dict] = []

    def readable() -> bool:
        found[:] = _search(api_client, query)
        return bool(found)

    wait_until(
        readable, REPORT_TIMEOUT, f"DiagnosticReport?{query} (worker log: {worker.process.log_path})", 0.5
    )
    return found


def test_storescu_ct_study_becomes_a_diagnostic_report(
    pipeline: PipelineWorker,
    start_dicom_node: Callable[..., DicomNode],
    api_client,
    tmp_path: Path,
) -> None:
    node = start_dicom_node(**pipeline.node_env())
    datasets = ct_series(slices=10, patient_id=f"PAT-E2E-{uuid.uuid4().hex[:8]}", accession="ACC-E2E-1")
    uid = str(datasets[0].StudyInstanceUID)
    files = write_datasets(datasets, tmp_path / "series")
    started = time.monotonic()
    sent = run_dcmtk(
        "storescu", "-aet", "CTSCANNER", "-aec", node.aet, node.host, str(node.port), *map(str, files)
    )
    assert sent.returncode == 0, sent.stderr

    job = _wait_for_job(uid, pipeline)
    study = Study.objects.get(study_instance_uid=uid)
    imaging = store.read_resource("ImagingStudy", study.fhir_imaging_study_id).as_dict()
    patient_ref = imaging["subject"]["reference"]

    (report,) = _wait_for_reports(api_client, {"subject": patient_ref}, pipeline)
    elapsed = time.monotonic() - started
    assert report["id"] == job.diagnostic_report_id
    assert report["status"] == "preliminary"
    assert report["subject"]["reference"] == patient_ref
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study.fhir_imaging_study_id}"}]
    by_study = _search(api_client, {"imaging-study": f"ImagingStudy/{study.fhir_imaging_study_id}"})
    assert [r["id"] for r in by_study] == [report["id"]]
    assert job.routing_rule is None
    assert job.model_name == "ct-lesion-demo"
    assert job.event_id == f"study_received:{uid}:1"
    assert job.attempts == 1
    assert job.images
    assert elapsed < REPORT_TIMEOUT, elapsed
    print(f"last C-STORE to readable report: {elapsed:.1f} s", file=sys.stderr)


def _payload(uid: str, patient_id: str, *, event_id: str | None = None) -> dict:
    now = "2026-01-01T00:00:00Z"
    return {
        "event_id": event_id or f"study_received:{uid}:1",
        "study_instance_uid": uid,
        "patient_id": "PAT-DUP",
        "issuer_of_patient_id": "",
        "fhir_patient_id": patient_id,
        "accession_number": "ACC-DUP-1",
        "modalities": ["CT"],
        "body_parts": ["ABDOMEN"],
        "sop_class_uids": ["1.2.840.10008.5.1.4.1.1.2"],
        "number_of_series": 1,
        "number_of_instances": 10,
        "calling_ae": "CTSCANNER",
        "completion_count": 1,
        "first_received_at": now,
        "last_received_at": now,
        "completed_at": now,
        "fhir_imaging_study_id": "",
        "fhir_service_request_ids": [],
    }


def test_event_delivered_twice_gives_one_job_and_one_report(pipeline: PipelineWorker, api_client) -> None:
    uid = index_study(ct_series(slices=10, patient_id="PAT-DUP", accession="ACC-DUP-1"))
    patient = store.create_resource(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:btt-health:patient-id", "value": "PAT-DUP"}],
        }
    ).stored.logical_id
    payload = _payload(uid, patient)

    with transaction.atomic():  # as the emitting task delivers: inside its transaction
        first = on_study_received(dict(payload))
    with transaction.atomic():
        second = on_study_received(dict(payload))
    assert len(first) == 1
    assert second == []
    # A redelivered task message (acks_late) runs the job a second time: still one report.
    queue_inference(first[0].pk, payload)

    job = _wait_for_job(uid, pipeline)
    reports = _wait_for_reports(api_client, {"subject": f"Patient/{patient}"}, pipeline)
    wait_until(
        lambda: pipeline.process.log().count(f"'job': {job.pk},") >= 2,
        REPORT_TIMEOUT,
        f"both runs of job {job.pk} (worker log: {pipeline.process.log_path})",
    )
    reports = _search(api_client, {"subject": f"Patient/{patient}"})
    assert [r["id"] for r in reports] == [job.diagnostic_report_id]
    assert InferenceJob.objects.filter(study_instance_uid=uid).count() == 1
    assert InferenceJob.objects.get(pk=job.pk).attempts == 1


def test_a_stat_order_gets_the_highest_celery_priority() -> None:
    from ai_pipeline.tasks import celery_priority

    assert celery_priority("stat", "redis://x") < celery_priority("routine", "redis://x")
    assert celery_priority("stat", "amqp://x") > celery_priority("routine", "amqp://x")
    assert celery_priority("stat", "filesystem://") is None


def test_worker_process_killed_mid_task_is_redelivered_and_gives_one_report(
    pipeline: PipelineWorker, api_client
) -> None:
    """The pool process running the job is SIGKILLed while the job is `running`: the message
    (acks_late, reject_on_worker_lost) is delivered again and exactly one report results."""
    uid = index_study(ct_series(slices=120, patient_id="PAT-KILL", accession="ACC-KILL-1"))
    patient = store.create_resource(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:btt-health:patient-id", "value": "PAT-KILL"}],
        }
    ).stored.logical_id
    with transaction.atomic():
        (job,) = on_study_received(_payload(uid, patient, event_id=f"study_received:{uid}:1"))

    running: list[InferenceJob] = []

    def is_running() -> bool:
        running[:] = InferenceJob.objects.filter(pk=job.pk, state=InferenceJob.State.RUNNING)
        return bool(running)

    wait_until(is_running, REPORT_TIMEOUT, f"job {job.pk} running", 0.02)
    pid = int(running[0].worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)

    done = _wait_for_job(uid, pipeline)
    assert done.attempts == 2, done.attempts
    reports = _wait_for_reports(api_client, {"subject": f"Patient/{patient}"}, pipeline)
    assert [r["id"] for r in reports] == [done.diagnostic_report_id]
