"""/healthz and /readyz: readiness is 503 naming the part that does not answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from django.test import Client

from btt_health.celery import app as celery_app
from tests.processes import free_port


@pytest.fixture
def broker_url_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Point the Celery app (which /readyz checks) at another broker URL for one test."""
    original = celery_app.conf.broker_url

    def override(url: str) -> None:
        # Celery prefers the CELERY_BROKER_URL variable to its configuration: set both.
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        monkeypatch.delenv("CELERY_BROKER_WRITE_URL", raising=False)
        celery_app.conf.broker_url = url

    yield override
    celery_app.conf.broker_url = original


def test_healthz_answers_without_credentials(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_when_database_and_broker_answer(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
@pytest.mark.django_db
def test_readyz_is_503_naming_the_broker_when_it_does_not_answer(
    client: Client, broker_url_override, scheme: str
) -> None:
    suffix = "/0" if scheme == "redis" else "//"
    broker_url_override(f"{scheme}://guest:guest@127.0.0.1:{free_port()}{suffix}")  # nothing listens there
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 20, "a dead broker must not hang the readiness probe"
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("broker unreachable:")
    assert "guest:guest" not in body["checks"]["broker"], "credentials must not leak into the probe's answer"
