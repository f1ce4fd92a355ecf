"""The running stack answers its health probes and guards its API with bearer tokens."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30


def test_healthz_is_200(e2e_base_url: str) -> None:
    response = requests.get(f"{e2e_base_url}/healthz", timeout=TIMEOUT_S)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_200_with_database_and_broker_ok(e2e_base_url: str) -> None:
    response = requests.get(f"{e2e_base_url}/readyz", timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_capability_statement_needs_no_token(e2e_base_url: str) -> None:
    response = requests.get(f"{e2e_base_url}/fhir/metadata", timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "CapabilityStatement"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer btt_this-is-not-a-token", "Basic dXNlcjpwYXNz"],
    ids=["no-token", "bad-token", "not-bearer"],
)
def test_api_calls_without_a_valid_token_are_401(e2e_base_url: str, authorization: str | None) -> None:
    headers = {"Accept": "application/fhir+json"}
    if authorization:
        headers["Authorization"] = authorization
    response = requests.get(f"{e2e_base_url}/fhir/Patient", headers=headers, timeout=TIMEOUT_S)
    assert response.status_code == 401, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_the_harness_token_is_accepted(e2e_base_url: str, e2e_token: str) -> None:
    response = requests.get(
        f"{e2e_base_url}/fhir/Patient",
        headers={"Authorization": f"Bearer {e2e_token}", "Accept": "application/fhir+json"},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "Bundle"
