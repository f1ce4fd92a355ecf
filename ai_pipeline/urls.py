"""URLs of the inference-job API and of outside workers, mounted at /api/ai/ (btt_health/urls.py)."""

from django.urls import path

from ai_pipeline import api, outside_api

urlpatterns = [
    path("jobs", api.job_list, name="ai-job-list"),
    path("jobs/<int:job_id>", api.job_detail, name="ai-job-detail"),
    path("jobs/<int:job_id>/retry", api.job_retry, name="ai-job-retry"),
    path("outside/jobs/<str:ref>/study", outside_api.study, name="ai-outside-study"),
    path("outside/jobs/<str:ref>/result", outside_api.result, name="ai-outside-result"),
]
