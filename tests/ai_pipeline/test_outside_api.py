"""Outside jobs, the hospital's side, in process (PostgreSQL test database, Django's test client):
the hand-out (`outside.dispatch_job`) and the two endpoints an outside worker uses.

The analysis posted back is computed for real by the outside worker's own functions
(`outside_worker.study_from_files`, `find_model`, `services.analyse_study`) on the files the
study endpoint served; only the broker hop is left out (the task publish is captured, not run):
tests/ai_pipeline/test_outside_worker.py runs the whole way with real processes.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from ai_pipeline import outside, outside_worker, runtime, services
from ai_pipeline.models import InferenceJob, OutsideDispatch
from ai_pipeline.services import create_job
from integrations.fhir import store
from integrations.fhir.search import find_matches
from tests.ai_pipeline.support import fhir_imaging_study, index_study
from tests.ai_pipeline.test_deidentify import PHI, phi_series

pytestmark = pytest.mark.django_db

State = InferenceJob.State


@pytest.fixture
def outside_job(demo_model, dicom_storage, settings, tmp_path, django_capture_on_commit_callbacks):
    """An outside job of an indexed CT study full of identifying attributes, handed out: (job,
    task payload, datasets, Patient id). The task publish is captured, not sent."""
    settings.BTT_DEID_DIR = tmp_path / "deid"
    settings.BTT_INFERENCE_OUTSIDE_QUEUE = "pytest-outside-unused"
    datasets = phi_series(slices=10)
    uid = index_study(datasets)
    patient = store.create_resource(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:btt-health:patient-id", "value": PHI["PatientID"]}],
        }
    ).stored.logical_id
    imaging = fhir_imaging_study(uid, patient)
    job, _ = create_job(uid, demo_model, outside=True, accession_number=PHI["AccessionNumber"])
    with django_capture_on_commit_callbacks() as callbacks:
        payload = outside.dispatch_job(job.pk)
    assert payload is not None
    assert len(callbacks) == 1  # the publish on the outside queue
    return InferenceJob.objects.get(pk=job.pk), payload, datasets, patient, imaging


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _download(client: Client, payload: dict, tmp_path: Path) -> dict[str, Path]:
    response = client.get(
        payload["study"], headers={**_auth(payload["token"]), "X-BTT-Worker": "w@outside:1"}
    )
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "application/zip"
    folder = tmp_path / "downloaded"
    folder.mkdir()
    files = {}
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as bundle:
        for name in bundle.namelist():
            (folder / name).write_bytes(bundle.read(name))
            files[name.removesuffix(".dcm")] = folder / name
    return files


def _analysis(files: dict[str, Path], payload: dict) -> dict:
    """What the outside worker computes from the download (its own functions, for real)."""
    model = outside_worker.find_model(
        payload["model"]["name"], payload["model"]["version"], payload["model"]["sha256"]
    )
    runner = runtime.get_runner(model)
    images = outside_worker.study_from_files(files)

    from contextlib import contextmanager

    @contextmanager
    def opener(sop):
        with open(files[sop], "rb") as handle:
            yield handle

    return services.analyse_study(images, runner, opener).as_json()


def _identifying(datasets, patient: str, imaging: str) -> list[str]:
    ds = datasets[0]
    return [
        *PHI.values(),
        "Jane",
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.FrameOfReferenceUID),
        *(str(d.SOPInstanceUID) for d in datasets),
        patient,
        imaging,
    ]


def test_the_task_payload_and_the_download_hold_nothing_identifiable(outside_job, tmp_path):
    job, payload, datasets, patient, imaging = outside_job
    assert set(payload) == {"job", "model", "study", "result", "token", "expires_at"}
    assert payload["model"] == {"name": "ct-lesion-demo", "version": "1.0.0", "sha256": job.model_sha256}
    assert payload["study"] == f"/api/ai/outside/jobs/{payload['job']}/study"
    assert str(job.pk) != payload["job"]
    text = json.dumps(payload)
    files = _download(Client(), payload, tmp_path)
    assert len(files) == len(datasets)
    for value in _identifying(datasets, patient, imaging):
        assert value not in text, value
        for path in files.values():
            assert value.encode() not in path.read_bytes(), (value, path.name)
    job.refresh_from_db()
    assert (job.state, job.attempts, job.worker) == (State.RUNNING, 1, "outside w@outside:1")
    assert OutsideDispatch.objects.get(ref=payload["job"]).token_sha256 != payload["token"]


def test_a_wrong_missing_or_expired_token_is_refused_with_a_clear_error(outside_job):
    job, payload, *_ = outside_job
    client = Client()
    study, result = payload["study"], payload["result"]

    response = client.get(study)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"

    for url, call in ((study, client.get), (result, client.post)):
        response = call(url, headers=_auth("not-the-token"))
        assert response.status_code == 403, response.content
        assert response.json() == {
            "error": "forbidden",
            "message": f"the token is not the token of outside job {payload['job']}",
        }
    assert client.get("/api/ai/outside/jobs/" + "0" * 32 + "/study", headers=_auth("x")).status_code == 404

    OutsideDispatch.objects.filter(ref=payload["job"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    for url, call in ((study, client.get), (result, client.post)):
        response = call(url, headers=_auth(payload["token"]))
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
        assert f"the token of outside job {payload['job']} expired at" in response.json()["message"]
    job.refresh_from_db()
    assert job.state == State.QUEUED  # nothing was handed over


def test_a_job_handed_out_again_refuses_the_old_token(outside_job, django_capture_on_commit_callbacks):
    job, first, *_ = outside_job
    with django_capture_on_commit_callbacks():
        second = outside.dispatch_job(job.pk)
    assert second is not None
    assert second["job"] != first["job"]
    response = Client().get(first["study"], headers=_auth(first["token"]))
    assert response.status_code == 403
    assert "was handed out again" in response.json()["message"]
    assert Client().get(second["study"], headers=_auth(second["token"])).status_code == 200


def test_the_result_is_reidentified_written_once_and_the_copy_removed(
    outside_job, tmp_path, django_capture_on_commit_callbacks
):
    job, payload, datasets, patient, imaging = outside_job
    client = Client()
    files = _download(client, payload, tmp_path)
    analysis = _analysis(files, payload)
    assert not {str(d.SOPInstanceUID) for d in datasets} & set(json.dumps(analysis).split('"'))

    body = {"worker": "w@outside:1", "analysis": analysis}
    with django_capture_on_commit_callbacks(execute=True):  # the copy is removed on commit
        response = client.post(
            payload["result"], body, content_type="application/json", headers=_auth(payload["token"])
        )
    assert response.status_code == 200, response.content
    assert response.json() == {"job": payload["job"], "state": "succeeded", "reason": ""}

    job.refresh_from_db()
    assert job.state == State.SUCCEEDED, job.reason
    series_uid = str(datasets[0].SeriesInstanceUID)
    originals = {str(d.SOPInstanceUID) for d in datasets}
    assert job.findings[0]["series"] == series_uid
    assert job.findings[0]["best_image"] in originals
    assert set(job.findings[0]["positive_images"]) <= originals
    assert list(job.quality) == [series_uid]
    assert job.worker == "outside w@outside:1"
    assert (job.inference_seconds or 0) > 0
    report = store.read_resource("DiagnosticReport", job.diagnostic_report_id).as_dict()
    assert report["subject"] == {"reference": f"Patient/{patient}"}
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{imaging}"}]
    assert report["identifier"][0]["value"] == f"{job.study_instance_uid}:ct-lesion-demo:1.0.0"
    assert not Path(OutsideDispatch.objects.get(ref=payload["job"]).folder).exists()

    # A repeated post (the worker did not see the answer) changes nothing.
    before = (job.updated_at, job.diagnostic_report_id)
    again = client.post(
        payload["result"], body, content_type="application/json", headers=_auth(payload["token"])
    )
    assert again.status_code == 200
    assert again.json()["state"] == "succeeded"
    job.refresh_from_db()
    assert (job.updated_at, job.diagnostic_report_id) == before
    reports = find_matches("DiagnosticReport", [("subject", f"Patient/{patient}")])
    assert [r.logical_id for r in reports] == [job.diagnostic_report_id]


def test_a_result_for_an_unknown_series_fails_the_job_with_the_reason(outside_job, tmp_path):
    job, payload, *_ = outside_job
    client = Client()
    analysis = _analysis(_download(client, payload, tmp_path), payload)
    stranger = "2.25.123456789012345678901234567890"
    for finding in analysis["findings"]:
        finding["series_instance_uid"] = stranger
    for series in analysis["series"]:
        series["series_instance_uid"] = stranger

    response = client.post(
        payload["result"],
        {"analysis": analysis},
        content_type="application/json",
        headers=_auth(payload["token"]),
    )
    assert response.status_code == 200
    assert response.json()["state"] == "failed"
    job.refresh_from_db()
    assert job.state == State.FAILED
    assert "not in the de-identified copy of the study" in job.reason
    assert stranger in job.reason
    assert not job.diagnostic_report_id
    assert not find_matches(
        "DiagnosticReport", [("identifier", f"{job.study_instance_uid}:ct-lesion-demo:1.0.0")]
    )


def test_an_error_reported_by_the_outside_worker_fails_the_job(outside_job, tmp_path):
    job, payload, *_ = outside_job
    client = Client()
    _download(client, payload, tmp_path)
    error = "PixelDecodeError: instance 2.25.1: JPEG 2000 cannot be decoded"
    response = client.post(
        payload["result"],
        {"worker": "w@outside:1", "error": error},
        content_type="application/json",
        headers=_auth(payload["token"]),
    )
    assert response.json() == {
        "job": payload["job"],
        "state": "failed",
        "reason": f"the outside worker failed: {error}",
    }
    job.refresh_from_db()
    assert (job.state, job.reason) == (State.FAILED, f"the outside worker failed: {error}")
    assert client.get(payload["study"], headers=_auth(payload["token"])).status_code == 409


def test_a_malformed_result_is_refused_and_changes_nothing(outside_job, tmp_path):
    job, payload, *_ = outside_job
    client = Client()
    _download(client, payload, tmp_path)
    for body in ({}, {"analysis": {}, "error": "x"}):
        response = client.post(
            payload["result"], body, content_type="application/json", headers=_auth(payload["token"])
        )
        assert response.status_code == 400, response.content
    response = client.post(
        payload["result"], b"not json", content_type="application/json", headers=_auth(payload["token"])
    )
    assert response.status_code == 400
    job.refresh_from_db()
    assert job.state == State.RUNNING


def test_an_outside_job_that_cannot_be_sent_fails_before_anything_leaves(
    demo_model, dicom_storage, settings, tmp_path
):
    settings.BTT_DEID_DIR = tmp_path / "deid"
    datasets = phi_series(slices=2)
    datasets[1].BurnedInAnnotation = "YES"
    uid = index_study(datasets)
    job, _ = create_job(uid, demo_model, outside=True)
    assert outside.dispatch_job(job.pk) is None
    job.refresh_from_db()
    assert job.state == State.FAILED
    assert "burned-in annotations" in job.reason
    assert not OutsideDispatch.objects.filter(job=job).exists()
    assert list((tmp_path / "deid").rglob("*.dcm")) == []


def test_an_unreachable_hospital_is_a_transient_error_the_task_retries(demo_model, settings, tmp_path):
    """The outside worker's own code against a port nothing listens on: the task retries it."""
    from ai_pipeline.tasks import run_outside_inference
    from tests.processes import free_port

    settings.BTT_HOSPITAL_URL = f"http://127.0.0.1:{free_port()}"
    settings.BTT_OUTSIDE_WORK_DIR = tmp_path / "work"
    settings.BTT_OUTSIDE_HTTP_TIMEOUT = 5.0
    ref = "0123456789abcdef0123456789abcdef"
    task = outside_worker.OutsideTask.from_payload(
        {
            "job": ref,
            "model": {"name": "ct-lesion-demo", "version": "1.0.0", "sha256": demo_model.sha256},
            "study": f"/api/ai/outside/jobs/{ref}/study",
            "result": f"/api/ai/outside/jobs/{ref}/result",
            "token": "t",
        }
    )
    with pytest.raises(outside_worker.OutsideTransientError, match="Connection refused"):
        outside_worker.run_job(task, worker="w@outside:1")
    assert not (tmp_path / "work" / ref).exists()
    assert outside_worker.OutsideTransientError in run_outside_inference.autoretry_for
    with pytest.raises(ValueError, match="not an outside task payload"):
        outside_worker.OutsideTask.from_payload({**task.__dict__, "job": "../../etc"})
