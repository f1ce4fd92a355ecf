"""The inference-job API (/api/ai/jobs) and the jobs in the admin: states, filters, paging, auth,
retry. Jobs here are made by running the real pipeline on indexed synthetic studies
(`run_inference_for_study`) or by `services.create_job` as the subscriber makes them; the retry
that a worker then runs is in test_jobs_retry_worker.py."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from ai_pipeline.models import InferenceJob
from ai_pipeline.services import create_job, mark_job_failed, run_inference_for_study
from btt_health.api_auth.services import create_api_client
from tests.ai_pipeline.support import ct_series, index_study
from tests.conftest import BearerClient

pytestmark = pytest.mark.django_db

WORKER = "celery@api-test:1"


@pytest.fixture
def reader() -> BearerClient:
    _, token = create_api_client("pytest-reader", "reader")
    return BearerClient(token)


@pytest.fixture
def succeeded(demo_model, dicom_storage) -> InferenceJob:
    study = index_study(ct_series(slices=8, lesion=True, accession="ACC-API-1"))
    return run_inference_for_study(study, "ct-lesion-demo", worker=WORKER)


@pytest.fixture
def failed(demo_model) -> InferenceJob:
    job, _ = create_job(
        "1.2.826.0.1.3680043.8.498.999", demo_model, priority="stat", accession_number="ACC-F"
    )
    return mark_job_failed(
        job.pk, "StudyNotFound: study 1.2.826.0.1.3680043.8.498.999 is not in the DICOM index"
    )


def test_a_succeeded_job_shows_state_timings_model_and_report(api_client, succeeded):
    response = api_client.get(f"/api/ai/jobs/{succeeded.pk}")
    assert response.status_code == 200, response.content
    job = response.json()
    assert job["id"] == succeeded.pk
    assert job["state"] == "succeeded"
    assert job["reason"] == ""
    assert job["study_instance_uid"] == succeeded.study_instance_uid
    assert job["accession_number"] == "ACC-API-1"
    assert job["model"] == {"name": "ct-lesion-demo", "version": "1.0.0", "sha256": succeeded.model_sha256}
    assert job["priority"] == "routine"
    assert job["attempts"] == 1
    assert job["worker"] == WORKER
    assert job["diagnostic_report"] == {
        "id": succeeded.diagnostic_report_id,
        "reference": f"DiagnosticReport/{succeeded.diagnostic_report_id}",
    }
    assert job["provenance_id"] == succeeded.provenance_id
    for moment in ("queued_at", "started_at", "finished_at"):
        assert job[moment], moment
    assert job["started_at"] <= job["finished_at"]
    durations = job["durations"]
    assert durations["run_seconds"] >= durations["inference_seconds"] > 0
    assert set(durations) == {
        "queue_seconds", "run_seconds", "load_seconds", "preprocess_seconds", "inference_seconds", "write_seconds",
    }  # fmt: skip
    assert job["trust_score"] == succeeded.trust_score
    assert set(job["trust"]["factors"]) == {
        "D_quality",
        "M_confidence",
        "H_consensus",
        "U_factor",
        "E_evidence",
    }
    assert job["findings"][0]["label"] == "synthetic-lesion"
    assert job["images"] == 8


def test_a_failed_job_shows_its_reason(api_client, failed):
    job = api_client.get(f"/api/ai/jobs/{failed.pk}").json()
    assert job["state"] == "failed"
    assert job["reason"].startswith("StudyNotFound: study 1.2.826.0.1.3680043.8.498.999")
    assert job["diagnostic_report"] is None
    assert job["priority"] == "stat"
    assert job["finished_at"] is not None


def test_jobs_are_listed_newest_first_filtered_and_paged(api_client, succeeded, failed, demo_model):
    queued, _ = create_job("1.2.826.0.1.3680043.8.498.1000", demo_model, priority="urgent")

    listing = api_client.get("/api/ai/jobs").json()
    assert listing["count"] == 3
    assert [j["id"] for j in listing["results"]] == [queued.pk, failed.pk, succeeded.pk]
    assert (listing["next"], listing["previous"]) == (None, None)

    def ids(query: dict) -> list[int]:
        response = api_client.get("/api/ai/jobs", query)
        assert response.status_code == 200, response.content
        return [j["id"] for j in response.json()["results"]]

    assert ids({"state": "failed"}) == [failed.pk]
    assert ids({"state": "queued,succeeded"}) == [queued.pk, succeeded.pk]
    assert ids({"study": succeeded.study_instance_uid}) == [succeeded.pk]
    assert ids({"model": "ct-lesion-demo"}) == [queued.pk, failed.pk, succeeded.pk]
    assert ids({"model": "ct-lesion-demo:1.0.0", "priority": "stat"}) == [failed.pk]
    assert ids({"model": "other-model"}) == []
    assert ids({"accession": "ACC-API-1"}) == [succeeded.pk]
    assert ids({"outside": "false"}) == [queued.pk, failed.pk, succeeded.pk]

    first = api_client.get("/api/ai/jobs", {"page_size": 2, "state": "queued,failed,succeeded"}).json()
    assert [j["id"] for j in first["results"]] == [queued.pk, failed.pk]
    assert first["pages"] == 2
    assert "page=2" in first["next"]
    assert "state=queued%2Cfailed%2Csucceeded" in first["next"]
    second = api_client.get(first["next"]).json()
    assert [j["id"] for j in second["results"]] == [succeeded.pk]
    assert second["next"] is None
    assert "page=1" in second["previous"]
    assert api_client.get("/api/ai/jobs", {"page": 9}).json()["results"] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"state": "done"}, "unknown state done"),
        ({"priority": "now"}, "unknown priority now"),
        ({"page_size": "1000"}, "page_size must be at most 500"),
        ({"page": "0"}, "page must be a positive integer"),
        ({"colour": "red"}, "unknown parameter colour"),
        ({"outside": "maybe"}, "outside must be true or false"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_problem(api_client, query, message):
    response = api_client.get("/api/ai/jobs", query)
    assert response.status_code == 400
    assert response.json()["error"] == "bad request"
    assert message in response.json()["message"]


def test_the_api_needs_a_bearer_token_and_write_access_to_retry(api_client, reader, failed):
    anonymous = Client()
    response = anonymous.get("/api/ai/jobs")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert Client(headers={"Authorization": "Bearer btt_wrong"}).get("/api/ai/jobs").status_code == 401
    assert api_client.get("/api/ai/jobs/999999").status_code == 404
    assert api_client.delete(f"/api/ai/jobs/{failed.pk}").status_code == 405
    assert api_client.get(f"/api/ai/jobs/{failed.pk}/retry").status_code == 405

    # A read-only client sees the jobs but may not retry them.
    assert reader.get("/api/ai/jobs").json()["count"] == 1
    response = reader.post(f"/api/ai/jobs/{failed.pk}/retry")
    assert response.status_code == 403
    assert InferenceJob.objects.get(pk=failed.pk).state == InferenceJob.State.FAILED


def test_retry_queues_a_failed_job_again_and_refuses_other_states(
    api_client, failed, succeeded, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_client.post(f"/api/ai/jobs/{failed.pk}/retry")
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["state"] == "queued"
    assert job["reason"].startswith(
        "retry requested by API client pytest-admin (it had failed: StudyNotFound"
    )
    assert (job["started_at"], job["finished_at"]) == (None, None)
    assert len(callbacks) == 1  # the task is published after the commit (the worker test runs it)

    again = api_client.post(f"/api/ai/jobs/{failed.pk}/retry")
    assert again.status_code == 409
    assert "is queued; only failed jobs can be retried" in again.json()["message"]
    assert api_client.post(f"/api/ai/jobs/{succeeded.pk}/retry").status_code == 409
    assert api_client.post("/api/ai/jobs/999999/retry").status_code == 404


def test_retry_is_refused_while_the_model_is_disabled(api_client, failed, demo_model):
    demo_model.enabled = False
    demo_model.save()
    response = api_client.post(f"/api/ai/jobs/{failed.pk}/retry")
    assert response.status_code == 409
    assert "disabled" in response.json()["message"]
    assert InferenceJob.objects.get(pk=failed.pk).state == InferenceJob.State.FAILED


# --- the admin ------------------------------------------------------------------------------------


@pytest.fixture
def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("jobs-admin", "jobs@example.org", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_filters_jobs_and_retries_failed_ones(
    admin_client, failed, succeeded, django_capture_on_commit_callbacks
):
    url = "/admin/ai_pipeline/inferencejob/"
    page = admin_client.get(url, {"state__exact": "failed"})
    assert page.status_code == 200
    assert failed.study_instance_uid.encode() in page.content
    assert succeeded.study_instance_uid.encode() not in page.content
    assert admin_client.get(url, {"priority__exact": "stat", "outside__exact": "0"}).status_code == 200

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            url, {"action": "retry", "_selected_action": [failed.pk, succeeded.pk]}, follow=True
        )
    assert b"1 job(s) queued again" in response.content
    assert b"is succeeded; only failed jobs can be retried" in response.content
    assert len(callbacks) == 1
    job = InferenceJob.objects.get(pk=failed.pk)
    assert job.state == InferenceJob.State.QUEUED
    assert job.reason.startswith("retry requested by admin user jobs-admin")
    assert InferenceJob.objects.get(pk=succeeded.pk).state == InferenceJob.State.SUCCEEDED
