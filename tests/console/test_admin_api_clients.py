"""API clients made from the admin console: the token is issued by the service and shown once;
a new token replaces the old one (Django test client on the PostgreSQL test database)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from btt_health.api_auth.models import ApiClient
from tests.conftest import BearerClient
from tests.console.support import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def _token(response) -> str:
    match = re.search(r"(btt_[A-Za-z0-9_-]+)", response.content.decode())
    assert match, response.content.decode()[:2000]
    return match.group(1)


def test_adding_an_api_client_in_the_admin_shows_a_working_token_once():
    make_user("ada.admin", "admin")
    browser = Client()
    assert browser.login(username="ada.admin", password=PASSWORD)
    added = browser.post(
        "/admin/api_auth/apiclient/add/", {"name": "ehr-bridge", "role": "hospital_it"}, follow=True
    )
    assert added.status_code == 200
    token = _token(added)
    client = ApiClient.objects.get(name="ehr-bridge")
    assert client.role == "hospital_it"
    assert client.token_prefix == token[:12]
    assert (
        BearerClient(token).get("/fhir/Patient", headers={"Accept": "application/fhir+json"}).status_code
        == 200
    )

    renewed = browser.post(
        "/admin/api_auth/apiclient/",
        {"action": "issue_new_token", "_selected_action": [client.pk]},
        follow=True,
    )
    new_token = _token(renewed)
    assert new_token != token
    assert BearerClient(token).get("/fhir/Patient").status_code == 401
    assert (
        BearerClient(new_token).get("/fhir/Patient", headers={"Accept": "application/fhir+json"}).status_code
        == 200
    )
