"""`manage.py create_api_client NAME --role ROLE` prints the token last and keeps only its hash."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.management import CommandError, call_command
from django.test import RequestFactory

from btt_health.api_auth.models import ApiClient
from btt_health.api_auth.services import AuthenticationFailed, authenticate_bearer
from tests.processes import ProcessLauncher


def _create(name: str, role: str) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("create_api_client", name, "--role", role, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


def _authenticate(token: str):
    return authenticate_bearer(
        RequestFactory().get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    )


@pytest.mark.django_db
def test_prints_the_token_as_last_line_and_stores_only_its_hash() -> None:
    stdout, stderr = _create("ehr", "hospital_it")
    token = stdout.strip().splitlines()[-1]
    assert token.startswith("btt_")
    assert len(token) > 40
    assert "shown only once" in stderr

    client = ApiClient.objects.get(name="ehr")
    assert client.role == "hospital_it"
    assert client.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert client.token_prefix == token[:12]
    stored = [str(value) for value in ApiClient.objects.filter(pk=client.pk).values_list()[0]]
    assert not any(token in value for value in stored), "the token itself must not be stored"
    assert _authenticate(token).role == "hospital_it"


@pytest.mark.django_db
def test_running_it_again_issues_a_new_token_and_invalidates_the_old() -> None:
    first = _create("pacs-bridge", "reader")[0].strip().splitlines()[-1]
    second = _create("pacs-bridge", "admin")[0].strip().splitlines()[-1]
    assert first != second
    assert ApiClient.objects.filter(name="pacs-bridge").count() == 1
    with pytest.raises(AuthenticationFailed):
        _authenticate(first)
    assert _authenticate(second).is_admin


@pytest.mark.django_db
def test_unknown_role_is_refused() -> None:
    with pytest.raises(CommandError, match="invalid choice: 'root'"):
        _create("someone", "root")
    assert not ApiClient.objects.filter(name="someone").exists()


@pytest.mark.django_db(transaction=True)
def test_the_command_line_prints_the_token_last(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> None:
    """As an operator runs it: a separate process, whose stdout's last line is the token."""
    result = process_launcher.manage(
        "create_api_client", "cli-client", "--role", "admin", env=test_database_env
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert ApiClient.objects.get(name="cli-client").token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert _authenticate(token).is_admin
