"""The CapabilityStatement is generated from the implemented types, interactions and parameters."""

import pytest

pytestmark = pytest.mark.django_db


def test_capability_statement_lists_r4_types_with_their_search_parameters(anonymous_fhir):
    statement = anonymous_fhir.get("/metadata").json()

    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {
        "Patient",
        "Observation",
        "ImagingStudy",
        "DiagnosticReport",
        "ServiceRequest",
    } <= resources.keys()
    observation_params = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert observation_params["code"] == "token"
    assert observation_params["date"] == "date"
    assert observation_params["subject"] == "reference"
    assert observation_params["code-value-quantity"] == "composite"
    interactions = {i["code"] for i in resources["Patient"]["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "create",
        "search-type",
        "history-instance",
    } <= interactions
    assert {i["code"] for i in statement["rest"][0]["interaction"]} >= {"transaction", "batch"}
    assert resources["Patient"]["operation"][0]["name"] == "everything"
