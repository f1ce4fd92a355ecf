"""Fixtures for the FHIR REST tests: an authenticated client speaking application/fhir+json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from btt_health.api_auth.services import create_api_client

FIXTURES = Path(__file__).parent / "fixtures"
FHIR_JSON = "application/fhir+json"


def load_fixture(name: str) -> dict:
    """A sample resource or Bundle from tests/fhir/fixtures/."""
    return json.loads((FIXTURES / name).read_text())


class FhirTestClient:
    """Django's test client with a bearer token and FHIR JSON bodies; paths are below /fhir."""

    def __init__(self, token: str | None) -> None:
        self.client = Client()
        self.token = token

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        merged = {"Accept": FHIR_JSON}
        if self.token:
            merged["Authorization"] = f"Bearer {self.token}"
        merged.update(headers or {})
        return merged

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any):
        return self.client.get(f"/fhir{path}", params or None, headers=self._headers(headers))

    def head(self, path: str, headers: dict[str, str] | None = None):
        return self.client.head(f"/fhir{path}", headers=self._headers(headers))

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str] | None, content_type: str):
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return getattr(self.client, method)(
            f"/fhir{path}", data=data, content_type=content_type, headers=self._headers(headers)
        )

    def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None, content_type: str = FHIR_JSON
    ):
        return self._send("post", path, body, headers, content_type)

    def put(self, path: str, body: Any, headers: dict[str, str] | None = None, content_type: str = FHIR_JSON):
        return self._send("put", path, body, headers, content_type)

    def patch(
        self,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json-patch+json",
    ):
        return self._send("patch", path, body, headers, content_type)

    def delete(self, path: str, headers: dict[str, str] | None = None):
        return self.client.delete(f"/fhir{path}", headers=self._headers(headers))


@pytest.fixture
def fhir(db) -> FhirTestClient:
    """A FHIR client holding an admin API client's token."""
    _, token = create_api_client("fhir-tests-admin", "admin")
    return FhirTestClient(token)


@pytest.fixture
def fhir_reader(db) -> FhirTestClient:
    """A FHIR client whose API client has the read-only role."""
    _, token = create_api_client("fhir-tests-reader", "reader")
    return FhirTestClient(token)


@pytest.fixture
def anonymous_fhir(db) -> FhirTestClient:
    """A FHIR client sending no Authorization header."""
    return FhirTestClient(None)


@pytest.fixture
def patient_body() -> dict:
    """A Patient as a client would POST it (no id, meta or references)."""
    return load_fixture("patient-create-body.json")


def issues_of(response) -> list[dict]:
    """The OperationOutcome issues of an error response (asserting it is one)."""
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"]
