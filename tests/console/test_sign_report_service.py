"""Sign-off through the service layer (btt_health/console/services.py) on a report the AI pipeline
wrote for a synthetic CT (the demo model run in this process; PostgreSQL test database)."""

from __future__ import annotations

import pytest

from btt_health import events
from btt_health.console import access, accounts, services
from integrations.fhir import store
from integrations.fhir.search import find_matches
from tests.console.support import make_user, processed_study

pytestmark = pytest.mark.django_db


@pytest.fixture
def hospital():
    return accounts.create_organization("St Test Hospital", ae_titles="ST-CT")


@pytest.fixture
def made(hospital, settings, tmp_path):
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "dicom"
    return processed_study(hospital, patient_id="PAT-SIGN-1", accession="ACC-SIGN-1", priority="urgent")


@pytest.fixture
def finalised():
    """The report_finalised payloads emitted (a subscriber like the HL7 interface's)."""
    seen: list[dict] = []
    handler = seen.append
    events.subscribe(events.REPORT_FINALISED, handler)
    yield seen
    events.unsubscribe(events.REPORT_FINALISED, handler)


def test_sign_makes_the_report_final_with_interpreter_version_and_provenance(hospital, made, finalised):
    clinician = make_user("carla.sign", "clinician", hospital)
    report_id = made.job.diagnostic_report_id
    before = store.read_resource("DiagnosticReport", report_id)
    assert before.as_dict()["status"] == "preliminary"

    result = services.sign_report(report_id, clinician, "Lesion confirmed.\nFollow-up CT in 3 months.",
                                  expected_version=before.version_id)  # fmt: skip

    after = store.read_resource("DiagnosticReport", report_id)
    report = after.as_dict()
    assert after.version_id == before.version_id + 1 == int(result.version_id)
    assert report["status"] == "final"
    assert report["conclusion"] == "Lesion confirmed.\nFollow-up CT in 3 months."
    practitioner_id = accounts.ensure_practitioner(clinician)
    assert report["resultsInterpreter"] == [
        {"reference": f"Practitioner/{practitioner_id}", "display": "Carla Tester"}
    ]
    practitioner = store.read_resource("Practitioner", practitioner_id).as_dict()
    assert practitioner["identifier"] == [{"system": "urn:btt-health:user", "value": "carla.sign"}]
    # The findings the clinician signed are clinician-confirmed now (the trust score counts them so).
    for reference in report["result"]:
        observation_id = reference["reference"].split("/")[1]
        assert store.read_resource("Observation", observation_id).as_dict()["status"] == "final"
    provenance = store.read_resource("Provenance", result.provenance_id).as_dict()
    assert provenance["target"] == [
        {"reference": f"DiagnosticReport/{report_id}/_history/{after.version_id}"}
    ]
    assert provenance["agent"][0]["who"]["reference"] == f"Practitioner/{practitioner_id}"
    assert provenance["agent"][0]["type"]["coding"][0]["code"] == "verifier"
    assert provenance["activity"]["text"] == "sign"
    assert provenance["signature"][0]["type"][0]["code"] == services.VERIFICATION_SIGNATURE
    found = find_matches("Provenance", [("target", f"DiagnosticReport/{report_id}")])
    assert result.provenance_id in set(found.values_list("logical_id", flat=True))
    # The FHIR store announced it (btt_health/events.py), once, for this version.
    assert [(p["diagnostic_report_id"], p["version_id"], p["status"]) for p in finalised] == [
        (report_id, result.version_id, "final")
    ]
    assert finalised[0]["accession_number"] == "ACC-SIGN-1"
    assert finalised[0]["service_request_ids"] == [made.order_id]


def test_amend_makes_a_new_amended_version_and_needs_a_reason(hospital, made, finalised):
    clinician = make_user("carla.amend", "clinician", hospital)
    report_id = made.job.diagnostic_report_id
    signed = services.sign_report(report_id, clinician, "First reading.")
    with pytest.raises(services.SignOffError, match="already signed"):
        services.sign_report(report_id, clinician, "Again.")
    with pytest.raises(services.SignOffError, match="why"):
        services.amend_report(report_id, clinician, "Corrected reading.", "")
    with pytest.raises(services.ReportConflict):
        services.amend_report(report_id, clinician, "Corrected.", "typo", expected_version=1)

    amended = services.amend_report(report_id, clinician, "Corrected reading.", "laterality corrected",
                                    expected_version=signed.version_id)  # fmt: skip

    report = store.read_resource("DiagnosticReport", report_id).as_dict()
    assert report["status"] == "amended"
    assert report["conclusion"] == "Corrected reading."
    assert int(amended.version_id) == int(signed.version_id) + 1
    provenance = store.read_resource("Provenance", amended.provenance_id).as_dict()
    assert provenance["activity"]["text"] == "amend"
    assert provenance["reason"] == [{"text": "laterality corrected"}]
    assert [p["status"] for p in finalised] == ["final", "amended"]


def test_only_clinicians_of_the_patients_organization_sign(hospital, made):
    report_id = made.job.diagnostic_report_id
    elsewhere = accounts.create_organization("Other Clinic")
    outsider = make_user("olga.outside", "clinician", elsewhere)
    it_user = make_user("ivan.it", "hospital_it", hospital)
    with pytest.raises(access.NotVisible):
        services.sign_report(report_id, outsider, "Not mine.")
    with pytest.raises(services.SignOffError, match="only clinicians"):
        services.sign_report(report_id, it_user, "IT cannot sign.")
    with pytest.raises(services.SignOffError, match="empty"):
        services.sign_report(report_id, make_user("carla.empty", "clinician", hospital), "   ")
    assert store.read_resource("DiagnosticReport", report_id).as_dict()["status"] == "preliminary"
