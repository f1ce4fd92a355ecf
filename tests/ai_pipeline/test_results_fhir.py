"""Results as FHIR: a valid DiagnosticReport, Observations, Device and Provenance, written atomically and once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ai_pipeline import results
from ai_pipeline.manifest import load_manifest
from ai_pipeline.trust import Weights, assess_finding, trust_score
from integrations.fhir import store
from integrations.fhir.models import ResourceRecord
from integrations.fhir.outcomes import FhirError
from integrations.fhir.search import find_matches
from tests.ai_pipeline.support import DEMO_MODEL, fhir_imaging_study

pytestmark = pytest.mark.django_db

MANIFEST = load_manifest(DEMO_MODEL)
LABEL = MANIFEST.output.findings[0]
STUDY = "1.2.826.0.1.3680043.8.498.1"


def create(resource: dict) -> str:
    return store.create_resource(resource).stored.logical_id


@pytest.fixture
def fhir_context() -> dict:
    patient = create({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "P-1"}]})
    imaging = fhir_imaging_study(STUDY, patient)
    order = create(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "identifier": [{"value": "ACC-1"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "36813-4"}]},
        }
    )
    return {"patient": patient, "imaging": imaging, "order": order}


def report_input(context: dict | None = None, *, positive: bool = True, worker: str = "celery@gpu-1:4242"):
    probabilities = np.array([0.01, 0.02, 0.8, 0.95, 0.9, 0.03]) if positive else np.full(6, 0.02)
    assessment = assess_finding(probabilities, label=LABEL.name, threshold=0.5, min_consecutive=2)
    trust = trust_score(
        d_quality=0.95,
        m_confidence=assessment.confidence,
        h_consensus=0.5,
        u_factor=assessment.uncertainty,
        e_evidence=assessment.evidence,
        weights=Weights(0.5, 0.25, 0.25, "radiology", "built-in"),
    )
    started = datetime(2024, 6, 11, 10, 20, tzinfo=UTC)
    context = context or {}
    return results.ReportInput(
        study_instance_uid=STUDY,
        model_name=MANIFEST.name,
        model_version=MANIFEST.version,
        model_sha256=MANIFEST.sha256,
        manifest=MANIFEST,
        worker=worker,
        findings=[results.FindingResult(LABEL, assessment, "1.2.3.4", "ABDOMEN", "1.2.3.4.5")],
        trust=trust,
        started_at=started,
        finished_at=started + timedelta(seconds=2),
        images=6,
        patient_reference=f"Patient/{context['patient']}" if context else None,
        imaging_study_reference=f"ImagingStudy/{context['imaging']}" if context else None,
        service_request_references=[f"ServiceRequest/{context['order']}"] if context else [],
        effective=results.dicom_datetime("20240611", "101500", "UTC"),
        providers=["CPUExecutionProvider"],
    )


def test_the_resources_are_valid_fhir(fhir_context):
    resources = results.build_resources(report_input(fhir_context))
    results.validate_resources(resources)  # raises FhirError otherwise
    report = resources.report
    assert report["status"] == "preliminary"
    assert report["subject"] == {"reference": f"Patient/{fhir_context['patient']}"}
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{fhir_context['imaging']}"}]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{fhir_context['order']}"}]
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "18748-4",
        "display": "Diagnostic imaging study",
    }
    assert report["effectiveDateTime"] == "2024-06-11T10:15:00+00:00"
    assert len(report["result"]) == 2  # the finding and the trust score
    assert "Synthetic focal lesion (phantom): suspected" in report["conclusion"]
    assert "AI trust score" in report["conclusion"]
    assert "NOT FOR CLINICAL USE" in report["conclusion"]
    assert report["conclusionCode"][0]["coding"][0]["code"] == "synthetic-lesion"


def test_the_finding_observation_has_value_interpretation_and_body_site():
    (finding,) = results.build_resources(report_input()).findings
    assert finding["status"] == "preliminary"
    assert finding["code"]["coding"][0]["code"] == "synthetic-lesion"
    assert finding["valueQuantity"] == {
        "value": 95.0,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    assert finding["interpretation"][0]["coding"][0]["code"] == "POS"
    assert finding["bodySite"]["coding"][0]["display"] == "Abdomen"
    components = {c["code"]["coding"][0]["code"]: c for c in finding["component"]}
    assert components["supporting-images"]["valueInteger"] == 3
    assert components["images-analysed"]["valueInteger"] == 6
    assert components["best-image"]["valueString"] == "1.2.3.4.5"
    assert "subject" not in finding  # no patient known
    negative = results.build_resources(report_input(positive=False)).findings[0]
    assert negative["interpretation"][0]["coding"][0]["code"] == "NEG"


def test_the_trust_score_is_an_observation_with_each_factor():
    data = report_input()
    trust = results.build_resources(data).trust
    assert trust["code"]["coding"][0] == results.TRUST_CODE
    assert trust["valueQuantity"]["value"] == round(100 * data.trust.score, 2)
    factors = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in trust["component"]}
    assert set(factors) == {
        "D_quality",
        "M_confidence",
        "H_consensus",
        "U_factor",
        "E_evidence",
        "alpha",
        "beta",
        "gamma",
    }
    assert factors["D_quality"] == 0.95
    assert factors["alpha"] == 0.5


def test_the_provenance_names_model_version_sha256_and_worker():
    resources = results.build_resources(report_input())
    provenance = resources.provenance
    author, performer = provenance["agent"]
    assert author["who"]["reference"] == resources.full_urls["device"]
    assert f"ct-lesion-demo 1.0.0 (sha256 {MANIFEST.sha256})" in author["who"]["display"]
    assert performer["who"]["identifier"] == {"system": results.WORKER_SYSTEM, "value": "celery@gpu-1:4242"}
    assert provenance["occurredPeriod"] == {
        "start": "2024-06-11T10:20:00.000Z",
        "end": "2024-06-11T10:20:02.000Z",
    }
    assert provenance["entity"][0]["what"]["identifier"]["value"] == f"urn:oid:{STUDY}"
    device = resources.device
    assert {"system": results.DEVICE_SHA_SYSTEM, "value": MANIFEST.sha256} in device["identifier"]
    assert device["version"] == [{"value": "1.0.0"}]


def test_the_result_is_stored_through_the_fhir_store(fhir_context):
    written = results.write_report(report_input(fhir_context))
    assert written.created
    report = store.read_resource("DiagnosticReport", written.diagnostic_report_id).as_dict()
    assert report["meta"]["versionId"] == "1"
    result_ids = {ref["reference"].split("/")[1] for ref in report["result"]}
    assert result_ids == set(written.observation_ids)
    provenance = store.read_resource("Provenance", written.provenance_id).as_dict()
    targets = {ref["reference"] for ref in provenance["target"]}
    assert f"DiagnosticReport/{written.diagnostic_report_id}" in targets
    assert provenance["agent"][0]["who"]["reference"] == f"Device/{written.device_id}"
    found = find_matches("DiagnosticReport", [("subject", f"Patient/{fhir_context['patient']}")])
    assert [r.logical_id for r in found] == [written.diagnostic_report_id]
    assert results.find_report_id(STUDY, MANIFEST.name, MANIFEST.version) == written.diagnostic_report_id


def test_writing_twice_leaves_exactly_one_report(fhir_context):
    first = results.write_report(report_input(fhir_context))
    second = results.write_report(report_input(fhir_context, worker="celery@gpu-2:1"))
    assert second.created is False
    assert second.diagnostic_report_id == first.diagnostic_report_id
    counts = {
        t: ResourceRecord.objects.filter(resource_type=t).count()
        for t in ("DiagnosticReport", "Observation", "Provenance", "Device")
    }
    assert counts == {"DiagnosticReport": 1, "Observation": 2, "Provenance": 1, "Device": 1}


def test_the_bundle_itself_is_idempotent_without_the_provenance():
    """Even written as a Bundle twice (no existence check), the conditional creates match."""
    from integrations.fhir.bundles import process_bundle

    for _ in range(2):
        resources = results.build_resources(report_input())
        bundle = results.build_bundle(resources)
        bundle["entry"] = bundle["entry"][:-1]  # the Provenance has no identifier to match on
        process_bundle(bundle, base_url="http://test/fhir", principal=None)
    assert ResourceRecord.objects.filter(resource_type="DiagnosticReport").count() == 1
    assert ResourceRecord.objects.filter(resource_type="Observation").count() == 2


def test_a_failing_write_leaves_nothing_behind():
    data = report_input({"patient": "does-not-exist", "imaging": "nope", "order": "nope"})
    with pytest.raises(FhirError):
        results.write_report(data)
    assert not ResourceRecord.objects.filter(
        resource_type__in=["DiagnosticReport", "Observation", "Device"]
    ).exists()


def test_dicom_dates_become_fhir_datetimes():
    assert results.dicom_datetime("20240611", "", "UTC") == "2024-06-11"
    assert results.dicom_datetime("20240611", "0930", "Europe/Berlin") == "2024-06-11T09:30:00+02:00"
    assert results.dicom_datetime("20240611", "093015.123", "UTC") == "2024-06-11T09:30:15+00:00"
    assert results.dicom_datetime("2024", "", "UTC") is None
