"""The admin console shows models (enable, disable, re-scan), routing rules, jobs and trust weights."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from ai_pipeline.models import AIModel, InferenceJob, RoutingRule, TrustWeights

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("ai-admin", "ai@example.org", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_the_pages_render(admin_client, demo_model):
    RoutingRule.objects.create(name="ct", model_name="ct-lesion-demo", modality="CT")
    InferenceJob.objects.create(
        study_instance_uid="1.2.3", model=demo_model, model_name="ct-lesion-demo", model_version="1.0.0"
    )
    TrustWeights.objects.create(specialty="radiology", alpha=0.5, beta=0.25, gamma=0.25)
    for path in ("aimodel", "routingrule", "inferencejob", "trustweights"):
        response = admin_client.get(f"/admin/ai_pipeline/{path}/")
        assert response.status_code == 200, path
    job = InferenceJob.objects.get()
    assert admin_client.get(f"/admin/ai_pipeline/inferencejob/{job.pk}/change/").status_code == 200
    assert b"ct-lesion-demo" in admin_client.get("/admin/ai_pipeline/aimodel/").content


def test_models_are_disabled_and_rescanned_from_the_admin(admin_client, demo_model):
    url = "/admin/ai_pipeline/aimodel/"
    response = admin_client.post(url, {"action": "disable", "_selected_action": [demo_model.pk]}, follow=True)
    assert response.status_code == 200
    assert AIModel.objects.get().enabled is False
    response = admin_client.post(url, {"action": "rescan", "_selected_action": [demo_model.pk]}, follow=True)
    assert b"1 model(s) available, 0 refused, 0 missing" in response.content
    assert AIModel.objects.get().enabled is False  # a re-scan keeps the switch
