"""Bearer-token authentication of API requests: missing, malformed, unknown and revoked tokens."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from btt_health.api_auth import services
from btt_health.api_auth.models import ApiClient
from btt_health.api_auth.services import AuthenticationFailed, authenticate_bearer, create_api_client


def _request(authorization: str | None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return RequestFactory().get("/fhir/Patient", headers=headers)


@pytest.fixture(autouse=True)
def _empty_token_cache():
    services._cache.clear()
    yield
    services._cache.clear()


@pytest.mark.django_db
def test_a_valid_token_gives_the_clients_principal() -> None:
    _, token = create_api_client("lab", "reader")
    principal = authenticate_bearer(_request(f"Bearer {token}"))
    assert principal.name == "lab"
    assert principal.role == "reader"
    assert principal.may("Patient", "read")
    assert not principal.may("Patient", "write")
    assert not principal.is_admin
    # The scheme is case-insensitive (RFC 7235) and surrounding blanks do not matter.
    assert authenticate_bearer(_request(f"bearer  {token} ")).name == "lab"


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "Authorization header must be 'Bearer <token>'"),
        ("Bearer", "Authorization header must be 'Bearer <token>'"),
        ("Bearer    ", "Authorization header must be 'Bearer <token>'"),
        ("Bearer btt_not-a-real-token", "bearer token is not valid or has been revoked"),
    ],
)
@pytest.mark.django_db
def test_missing_malformed_or_unknown_tokens_are_refused(authorization: str | None, message: str) -> None:
    create_api_client("someone", "admin")
    with pytest.raises(AuthenticationFailed, match=message):
        authenticate_bearer(_request(authorization))


@pytest.mark.django_db
def test_a_revoked_token_is_refused() -> None:
    _, token = create_api_client("old-ehr", "admin")
    ApiClient.objects.filter(name="old-ehr").update(is_active=False)
    with pytest.raises(AuthenticationFailed, match="not valid or has been revoked"):
        authenticate_bearer(_request(f"Bearer {token}"))


@pytest.mark.django_db
def test_a_token_revoked_after_use_stops_working_when_the_cache_entry_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(services._cache, "ttl", 0.0)  # entries expire at once
    _, token = create_api_client("old-pacs", "admin")
    assert authenticate_bearer(_request(f"Bearer {token}")).name == "old-pacs"
    ApiClient.objects.filter(name="old-pacs").update(is_active=False)
    with pytest.raises(AuthenticationFailed, match="not valid or has been revoked"):
        authenticate_bearer(_request(f"Bearer {token}"))


@pytest.mark.django_db
def test_the_api_client_fixture_sends_the_admin_token(api_client, api_token: str) -> None:
    request = api_client.get("/healthz").wsgi_request
    assert request.headers["Authorization"] == f"Bearer {api_token}"
    assert authenticate_bearer(request).is_admin
    without = api_client.get("/healthz", HTTP_AUTHORIZATION="").wsgi_request
    with pytest.raises(AuthenticationFailed, match="missing Authorization header"):
        authenticate_bearer(without)
