"""URLs of the inference-job API, mounted at /api/ai/ (btt_health/urls.py)."""

from django.urls import path

from ai_pipeline import api

urlpatterns = [
    path("jobs", api.job_list, name="ai-job-list"),
    path("jobs/<int:job_id>", api.job_detail, name="ai-job-detail"),
    path("jobs/<int:job_id>/retry", api.job_retry, name="ai-job-retry"),
]
