"""A worker outside the hospital, for real: DCMTK `storescu` pushes a CT study full of identifying
attributes to a running stack (`manage.py serve`: HTTP, DICOM node, a hospital worker; PostgreSQL
test database, Redis), a routing rule sends the demo model outside, and a separate Celery worker
process (`BTT_OUTSIDE_WORKER=true`) runs it. That worker's database is an empty SQLite file of its
own, its data and model folders are its own, and its only link to the hospital is the broker
message and HTTP to the stack (`BTT_HOSPITAL_URL`). It keeps its downloads and the task payload it
received (`BTT_OUTSIDE_KEEP_DOWNLOADS`), which the test searches byte by byte for anything
identifying; the DiagnosticReport is written for the original patient and study.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from ai_pipeline.models import AIModel, InferenceJob, OutsideDispatch, RoutingRule
from ai_pipeline.registry import sync_registry
from ai_pipeline.services import create_job
from integrations.dicom.models import Study
from integrations.fhir import store
from integrations.fhir.search import find_matches
from tests.ai_pipeline.support import copy_demo_model, ct_series, index_study, write_datasets
from tests.ai_pipeline.test_deidentify import PHI, phi_series
from tests.ai_pipeline.workers import inference_env
from tests.dicom.conftest import run_dcmtk
from tests.processes import (
    WORKER_READY,
    ManagedProcess,
    ProcessLauncher,
    Stack,
    child_env,
    free_port,
    run_manage,
    stack_broker_url,
    start_stack,
    wait_until,
    worker_argv,
)

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 120.0


@dataclass
class OutsideSite:
    stack: Stack  # the hospital: serve with HTTP, the DICOM node and a worker
    worker: ManagedProcess  # the worker outside the hospital
    database: Path  # its (empty) SQLite database
    work: Path  # where it keeps its downloads and task payloads


@pytest.fixture(scope="module")
def site(
    process_launcher: ProcessLauncher,
    test_database_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OutsideSite]:
    tmp = tmp_path_factory.mktemp("outside")
    suffix = uuid.uuid4().hex[:10]
    dicom_queue, inference_queue, outside_queue = (
        f"pytest-od-dicom-{suffix}",
        f"pytest-od-inference-{suffix}",
        f"pytest-od-outside-{suffix}",
    )
    hospital_broker = stack_broker_url(test_database_env.get("CELERY_BROKER_URL"))
    # On Redis the outside worker gets a database of its own: it never sees the hospital's queues.
    outside_broker = stack_broker_url(hospital_broker) or ""
    env = child_env(
        test_database_env,
        {
            "CELERY_BROKER_URL": hospital_broker,
            "BTT_HTTP_HOST": "127.0.0.1",
            "BTT_HTTP_PORT": str(free_port()),
            "BTT_DICOM_HOST": "127.0.0.1",
            "BTT_DICOM_PORT": str(free_port()),
            "BTT_HTTP_WORKERS": "1",
            "BTT_WORKER_CONCURRENCY": "1",
            "BTT_RUN_MLLP": "false",
            "BTT_WORKER_QUEUES": f"{dicom_queue},{inference_queue}",
            "BTT_DICOM_TASK_QUEUE": dicom_queue,
            "BTT_DICOM_STUDY_QUIET_SECONDS": "1.5",
            "BTT_INFERENCE_QUEUE": inference_queue,
            "BTT_INFERENCE_OUTSIDE_QUEUE": outside_queue,
            "BTT_OUTSIDE_BROKER_URL": outside_broker,
            "BTT_ONNX_THREADS": "1",
            "BTT_ONNX_PROVIDERS": "cpu",
            "BTT_MODEL_DIR": None,
            "BTT_EVENT_SUBSCRIBERS": None,
        },
    )
    stack = start_stack(process_launcher, "outside-hospital", env)

    database = tmp / "outside.sqlite3"
    database.touch()
    work = tmp / "outside-work"
    models = tmp / "outside-models"
    models.mkdir()
    copy_demo_model(models)
    worker_env = inference_env(
        child_env(test_database_env, {"CELERY_BROKER_URL": outside_broker or hospital_broker}),
        f"pytest-od-unused-{suffix}",
        {
            "DATABASE_URL": f"sqlite:///{database}",
            "BTT_DATA_DIR": str(tmp / "outside-data"),
            "BTT_MODEL_DIR": str(models),
            "BTT_OUTSIDE_WORKER": "true",
            "BTT_HOSPITAL_URL": stack.base_url,
            "BTT_OUTSIDE_WORK_DIR": str(work),
            "BTT_OUTSIDE_KEEP_DOWNLOADS": "true",
        },
    )
    worker = process_launcher.start(
        "outside-worker", worker_argv([outside_queue], nodename="outside"), worker_env
    )
    worker.wait_for_log(WORKER_READY)
    yield OutsideSite(stack, worker, database, work)
    worker.stop()
    stack.process.stop()


@pytest.fixture
def outside_rule(site: OutsideSite) -> RoutingRule:
    """The demo model registered and routed outside (tables are flushed after every transactional test)."""
    assert sync_registry().ok
    return RoutingRule.objects.create(
        name="ct-outside", model_name="ct-lesion-demo", modality="CT", outside=True
    )


def _finished(uid: str, site: OutsideSite) -> InferenceJob:
    def done() -> InferenceJob | None:
        job = InferenceJob.objects.filter(study_instance_uid=uid).first()
        return job if job and job.state in (InferenceJob.State.SUCCEEDED, InferenceJob.State.FAILED) else None

    job = wait_until(
        done,
        TIMEOUT,
        f"the outside job of {uid} (logs: {site.stack.process.log_path}, {site.worker.log_path})",
    )
    assert isinstance(job, InferenceJob)
    assert job.state == InferenceJob.State.SUCCEEDED, (job.reason, site.worker.log_tail())
    return job


def test_an_outside_worker_without_the_database_gets_only_the_deidentified_copy(
    site: OutsideSite, outside_rule: RoutingRule, tmp_path: Path
) -> None:
    stack, worker, work = site.stack, site.worker, site.work
    datasets = phi_series(slices=10)
    uid = str(datasets[0].StudyInstanceUID)
    files = write_datasets(datasets, tmp_path / "series")
    node_aet, node_port = stack.env.get("BTT_DICOM_AET", "BTTHEALTH"), stack.env["BTT_DICOM_PORT"]
    sent = run_dcmtk(
        "storescu", "-aet", "CTSCANNER", "-aec", node_aet, "127.0.0.1", node_port, *map(str, files)
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr

    def finished() -> InferenceJob | None:
        job = InferenceJob.objects.filter(study_instance_uid=uid).first()
        return job if job and job.state in (InferenceJob.State.SUCCEEDED, InferenceJob.State.FAILED) else None

    job = wait_until(
        finished, TIMEOUT, f"the outside job of {uid} (logs: {stack.process.log_path}, {worker.log_path})"
    )
    assert isinstance(job, InferenceJob)
    assert job.state == InferenceJob.State.SUCCEEDED, (job.reason, worker.log_tail())
    assert job.outside
    assert job.worker.startswith("outside outside-")
    assert job.attempts == 1

    # The report is the original patient's, on the original study, series and images.
    study = Study.objects.get(study_instance_uid=uid)
    imaging = store.read_resource("ImagingStudy", study.fhir_imaging_study_id).as_dict()
    patient = imaging["subject"]["reference"]
    reports = [r.logical_id for r in find_matches("DiagnosticReport", [("subject", patient)])]
    assert reports == [job.diagnostic_report_id]
    report = store.read_resource("DiagnosticReport", job.diagnostic_report_id).as_dict()
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study.fhir_imaging_study_id}"}]
    assert job.findings[0]["series"] == str(datasets[0].SeriesInstanceUID)
    assert job.findings[0]["best_image"] in {str(ds.SOPInstanceUID) for ds in datasets}
    dispatch = OutsideDispatch.objects.get(job=job)
    assert not Path(dispatch.folder).exists()  # the hospital's copy is gone

    # Nothing identifying reached the worker: neither in the payload it received nor in a
    # byte of what it downloaded.
    (task_file,) = work.glob(f"{dispatch.ref}/task.json")
    task = json.loads(task_file.read_text())
    assert set(task) == {"job", "model", "study", "result", "token", "expires_at"}
    assert task["job"] == dispatch.ref
    downloaded = [p for p in (work / dispatch.ref).rglob("*") if p.is_file()]
    assert len([p for p in downloaded if p.suffix == ".dcm"]) == len(datasets)
    assert any(p.name == "study.zip" for p in downloaded)
    identifying = [
        *PHI.values(),
        "Jane",
        uid,
        str(datasets[0].SeriesInstanceUID),
        str(datasets[0].FrameOfReferenceUID),
        *(str(ds.SOPInstanceUID) for ds in datasets),
        patient.split("/")[1],
        study.fhir_imaging_study_id,
    ]
    for path in downloaded:
        data = path.read_bytes()
        for value in identifying:
            assert value.encode() not in data, f"{value!r} reached the outside worker in {path.name}"

    # ... and it never used a database: its SQLite file is still empty (no table made, nothing
    # written), and it logged no database error.
    assert site.database.stat().st_size == 0
    log = worker.log()
    assert "no such table" not in log
    assert "OperationalError" not in log


def test_the_sweep_hands_a_stuck_outside_job_out_again(site: OutsideSite, outside_rule: RoutingRule) -> None:
    """An outside job left `running` by an outside worker that vanished, past the time limit, is
    handed out again by the sweep (`manage.py requeue_inference_jobs`, as an operator runs it):
    a new copy and token, the old token refused, and the report written on the second attempt."""
    model = AIModel.objects.get(name="ct-lesion-demo")
    uid = index_study(ct_series(slices=10, patient_id="PAT-OUTSIDE-SWEEP", accession="ACC-OUT-SWEEP"))
    job, _ = create_job(uid, model, routing_rule=outside_rule, outside=True)
    past = timezone.now() - timedelta(hours=2)
    InferenceJob.objects.filter(pk=job.pk).update(
        state=InferenceJob.State.RUNNING,
        queued_at=past,
        published_at=past,
        publish_count=1,
        started_at=past,
        attempts=1,
        worker="outside gone@elsewhere:4242",
    )

    done = run_manage("requeue_inference_jobs", env=site.stack.env)
    assert done.returncode == 0, done.stderr
    assert f"overdue: re-queued job(s) {job.pk}" in done.stdout

    finished = _finished(uid, site)
    assert finished.attempts == 2
    assert finished.worker.startswith("outside outside-")
    assert finished.diagnostic_report_id
    (dispatch,) = OutsideDispatch.objects.filter(job=job)
    assert dispatch.result_at is not None
