"""`python manage.py createsuperuser` (design contract) makes a user who counts as admin in the
console and the viewer, without a profile (PostgreSQL test database)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from btt_health.console import accounts
from btt_health.console.models import Role

pytestmark = pytest.mark.django_db


def test_createsuperuser_gives_an_admin_of_the_console_and_viewer(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "Super-secret-pw-1")
    call_command("createsuperuser", "--noinput", "--username", "root", "--email", "root@example.org")
    user = get_user_model().objects.get(username="root")
    assert accounts.role_of(user) == Role.ADMIN
    client = Client()
    assert client.login(username="root", password="Super-secret-pw-1")
    assert client.get("/admin/status").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/viewer/api/worklist").json()["total"] == 0
