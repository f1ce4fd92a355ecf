"""A transaction Bundle as EHRs export it (Synthea style) posted with fhirpy, then searched for.

The fixture `fixtures/synthea_style_transaction.json` holds one patient's record: Organization and
Practitioner (conditional creates with `ifNoneExist`, as Synthea writes them), Patient,
Encounters, Conditions, Observations, a DiagnosticReport, MedicationRequests and an Immunization,
all linked to each other by `urn:uuid:` fullUrls. After the post, every link must point at the
server-assigned ids and the searches by patient must find exactly what the bundle held.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome

pytestmark = pytest.mark.e2e

# Seconds each fhirpy request may take: a whole export is written in one transaction.
TIMEOUT_S = 60
FIXTURE = Path(__file__).parent / "fixtures" / "synthea_style_transaction.json"
MRN_SYSTEM = "http://hospital.smarthealthit.org"
# Search parameter linking each clinical type to the patient.
PATIENT_PARAM = {
    "Encounter": "subject",
    "Condition": "subject",
    "Observation": "subject",
    "DiagnosticReport": "subject",
    "MedicationRequest": "subject",
    "Immunization": "patient",
}


@pytest.fixture
def fhir_timeout_s() -> float:
    """Overrides conftest's: the transactions here take longer than single requests."""
    return TIMEOUT_S


def export_bundle() -> tuple[dict, str]:
    """The fixture with a fresh medical record number, so each run's patient can be told apart."""
    bundle = json.loads(FIXTURE.read_text())
    mrn = uuid.uuid4().hex
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            for identifier in entry["resource"]["identifier"]:
                if identifier.get("system") in (MRN_SYSTEM, "https://github.com/synthetichealth/synthea"):
                    identifier["value"] = mrn
    return bundle, mrn


def _locations(bundle: dict, reply: dict) -> dict[str, str]:
    """fullUrl -> 'Type/id' of what the server stored for each entry, from entry.response.location."""
    mapping = {}
    for sent, answered in zip(bundle["entry"], reply["entry"], strict=True):
        location = answered["response"]["location"]
        parts = location.split("/_history/")[0].rstrip("/").split("/")
        mapping[sent["fullUrl"]] = f"{parts[-2]}/{parts[-1]}"
    return mapping


def test_synthea_style_export_is_stored_with_every_link_resolved(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    bundle, _ = export_bundle()
    assert 30 <= len(bundle["entry"]) <= 60
    sent_types = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])

    reply = fhir_client.execute("/", method="post", data=bundle)

    assert responses[-1].status_code == 200, responses[-1].text
    assert reply["resourceType"] == "Bundle"
    assert reply["type"] == "transaction-response"
    assert len(reply["entry"]) == len(bundle["entry"]), "one response entry per request entry, in order"
    for sent, answered in zip(bundle["entry"], reply["entry"], strict=True):
        status = answered["response"]["status"]
        if sent["request"].get("ifNoneExist"):
            # The clinic may already be known from an earlier export: then it is matched, not created.
            assert status.startswith(("200", "201")), status
        else:
            assert status.startswith("201"), status
        assert answered["response"]["location"].split("/")[-4] == sent["resource"]["resourceType"]
    ids = _locations(bundle, reply)
    patient_ref = next(ref for ref in ids.values() if ref.startswith("Patient/"))
    patient_id = patient_ref.split("/")[1]

    # Searching by the new patient finds exactly what the bundle held, type by type.
    found: dict[str, list] = {}
    for resource_type, param in PATIENT_PARAM.items():
        found[resource_type] = (
            fhir_client.resources(resource_type).search(**{param: patient_ref}).limit(100).fetch_all()
        )
        assert len(found[resource_type]) == sent_types[resource_type], resource_type
    assert {o.id for o in found["Observation"]} == {
        ref.split("/")[1] for ref in ids.values() if ref.startswith("Observation/")
    }
    summary = fhir_client.resources("Observation").search(patient=patient_id, _summary="count").fetch_raw()
    assert summary["total"] == sent_types["Observation"]

    # No urn:uuid survives: every reference names a stored resource.
    encounter_refs = {ref for ref in ids.values() if ref.startswith("Encounter/")}
    observation_refs = {ref for ref in ids.values() if ref.startswith("Observation/")}
    organization_ref = next(ref for ref in ids.values() if ref.startswith("Organization/"))
    practitioner_ref = next(ref for ref in ids.values() if ref.startswith("Practitioner/"))
    condition_refs = {ref for ref in ids.values() if ref.startswith("Condition/")}
    for resources in found.values():
        for resource in resources:
            assert "urn:uuid:" not in json.dumps(resource.serialize()), resource.id
            if "encounter" in resource:
                assert resource["encounter"]["reference"] in encounter_refs
    for encounter in found["Encounter"]:
        assert encounter["subject"]["reference"] == patient_ref
        assert encounter["serviceProvider"]["reference"] == organization_ref
        assert encounter["participant"][0]["individual"]["reference"] == practitioner_ref
    (report,) = found["DiagnosticReport"]
    assert {r["reference"] for r in report["result"]} <= observation_refs
    assert len(report["result"]) == 4
    for request in found["MedicationRequest"]:
        assert request["requester"]["reference"] == practitioner_ref
        assert request["reasonReference"][0]["reference"] in condition_refs

    # The stored resources read back like any other.
    patient = fhir_client.get("Patient", patient_id)
    assert patient["name"][0]["family"] == "Kuhlman484"
    assert patient["meta"]["versionId"] == "1"


def test_conditional_creates_match_the_clinic_on_a_second_export(fhir_client: SyncFHIRClient) -> None:
    first, _ = export_bundle()
    second, _ = export_bundle()

    ids_first = _locations(first, fhir_client.execute("/", method="post", data=first))
    reply = fhir_client.execute("/", method="post", data=second)
    ids_second = _locations(second, reply)

    by_type = {e["resource"]["resourceType"]: e for e in second["entry"]}
    for resource_type in ("Organization", "Practitioner"):
        full_url = by_type[resource_type]["fullUrl"]
        assert ids_second[full_url] == ids_first[full_url], f"{resource_type} was created twice"
        answered = reply["entry"][second["entry"].index(by_type[resource_type])]
        assert answered["response"]["status"].startswith("200")
    patient_url = by_type["Patient"]["fullUrl"]
    assert ids_second[patient_url] != ids_first[patient_url], "each export's patient is new"
    practitioners = (
        fhir_client.resources("Practitioner")
        .search(identifier="http://hl7.org/fhir/sid/us-npi|9999990001")
        .limit(10)
        .fetch()
    )
    assert [f"Practitioner/{p.id}" for p in practitioners] == [ids_first[by_type["Practitioner"]["fullUrl"]]]


def test_a_transaction_with_one_invalid_entry_writes_nothing(
    fhir_client: SyncFHIRClient, responses: list[requests.Response]
) -> None:
    bundle, mrn = export_bundle()
    broken = copy.deepcopy(bundle)
    index, entry = next(
        (i, e) for i, e in enumerate(broken["entry"]) if e["resource"]["resourceType"] == "Observation"
    )
    entry["resource"]["effectiveDateTime"] = "last tuesday"

    with pytest.raises(OperationOutcome) as raised:
        fhir_client.execute("/", method="post", data=broken)

    assert responses[-1].status_code == 400
    outcome = raised.value.resource
    assert outcome["resourceType"] == "OperationOutcome"
    expressions = [x for issue in outcome["issue"] for x in issue.get("expression", [])]
    assert any("effectiveDateTime" in x for x in expressions), outcome
    # All or nothing: not even the valid entries before the broken one were kept.
    assert fhir_client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|{mrn}").fetch() == []
    assert index > 0
