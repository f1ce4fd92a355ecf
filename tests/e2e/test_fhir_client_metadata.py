"""`/fhir/metadata` is readable by fhirpy without a token, and says what the server does."""

from __future__ import annotations

import asyncio

import pytest
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30


def test_sync_client_reads_the_capability_statement_without_a_token(fhir_base_url: str) -> None:
    anonymous = SyncFHIRClient(fhir_base_url, requests_config={"timeout": TIMEOUT_S})

    statement = anonymous.execute("metadata", method="get")

    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert "application/fhir+json" in statement["format"] or "json" in statement["format"]
    (rest,) = statement["rest"]
    assert rest["mode"] == "server"
    system = {i["code"] for i in rest.get("interaction", [])}
    assert {"transaction", "batch"} <= system
    resources = {r["type"]: r for r in rest["resource"]}
    for resource_type in ("Patient", "Observation", "Encounter", "DiagnosticReport", "ImagingStudy"):
        assert resource_type in resources, resource_type
    observation = resources["Observation"]
    interactions = {i["code"] for i in observation["interaction"]}
    assert {"read", "vread", "create", "update", "delete", "search-type"} <= interactions
    params = {p["name"]: p["type"] for p in observation["searchParam"]}
    assert params.get("code") == "token"
    assert params.get("date") == "date"
    assert params.get("subject") == "reference"


def test_async_client_reads_the_capability_statement_without_a_token(fhir_base_url: str) -> None:
    async def read() -> dict:
        anonymous = AsyncFHIRClient(fhir_base_url)
        return await anonymous.execute("metadata", method="get")

    statement = asyncio.run(read())
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"


def test_without_a_token_only_metadata_is_open(fhir_base_url: str) -> None:
    anonymous = SyncFHIRClient(fhir_base_url, requests_config={"timeout": TIMEOUT_S})
    with pytest.raises(AuthorizationError):
        anonymous.resources("Patient").limit(1).fetch()
    with pytest.raises(AuthorizationError):
        anonymous.resource("Patient", name=[{"family": "Nobody"}]).save()
