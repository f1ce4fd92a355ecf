"""run_inference_for_study on indexed synthetic CT studies: report, job state, idempotency, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from ai_pipeline import results
from ai_pipeline.models import InferenceJob
from ai_pipeline.registry import ModelUnavailableError
from ai_pipeline.services import create_job, mark_job_failed, run_inference_for_study
from integrations.fhir import store
from integrations.fhir.models import ResourceRecord
from tests.ai_pipeline.support import ct_series, fhir_imaging_study, index_study

pytestmark = pytest.mark.django_db

WORKER = "celery@test-worker:1"


def reports() -> int:
    return ResourceRecord.objects.filter(resource_type="DiagnosticReport", deleted=False).count()


def run(study: str, **kwargs) -> InferenceJob:
    return run_inference_for_study(study, "ct-lesion-demo", worker=WORKER, **kwargs)


def test_a_study_with_a_lesion_gets_a_positive_report(demo_model, dicom_storage):
    study = index_study(ct_series(slices=16, lesion=True))
    job = run(study)
    assert job.state == InferenceJob.State.SUCCEEDED
    assert job.reason == ""
    assert job.attempts == 1
    assert job.worker == WORKER
    assert job.images == 16
    assert job.providers == "CPUExecutionProvider"
    for field in (
        "queue_seconds",
        "run_seconds",
        "load_seconds",
        "preprocess_seconds",
        "inference_seconds",
        "write_seconds",
    ):
        assert getattr(job, field) is not None, field
    assert job.started_at <= job.finished_at
    (finding,) = job.findings
    assert finding["positive"] is True
    assert finding["label"] == "synthetic-lesion"
    assert finding["longest_run"] >= 2
    assert 0 <= job.trust_score <= 100
    assert set(job.trust["factors"]) == {"D_quality", "M_confidence", "H_consensus", "U_factor", "E_evidence"}
    assert job.trust["details"]["consensus"]["neutral"] is True  # nothing to compare with
    report = store.read_resource("DiagnosticReport", job.diagnostic_report_id).as_dict()
    assert report["status"] == "preliminary"
    assert report["identifier"][0]["value"] == f"{study}:ct-lesion-demo:1.0.0"
    assert "suspected" in report["conclusion"]
    provenance = store.read_resource("Provenance", job.provenance_id).as_dict()
    assert WORKER in provenance["agent"][1]["who"]["display"]
    assert demo_model.sha256 in provenance["agent"][0]["who"]["display"]


def test_a_study_without_a_lesion_gets_a_negative_report(demo_model, dicom_storage):
    study = index_study(ct_series(slices=16, lesion=False))
    job = run(study)
    assert job.state == InferenceJob.State.SUCCEEDED
    assert job.findings[0]["positive"] is False
    report = store.read_resource("DiagnosticReport", job.diagnostic_report_id).as_dict()
    assert "not found" in report["conclusion"]
    assert "conclusionCode" not in report


def test_running_twice_gives_one_report_and_a_taken_over_job_too(demo_model, dicom_storage):
    study = index_study(ct_series(slices=8, lesion=False))
    first = run(study)
    again = run(study)
    assert again.pk == first.pk
    assert again.attempts == 1  # succeeded: nothing ran
    # A worker died after writing the report but before marking the job (acks_late redelivers).
    InferenceJob.objects.filter(pk=first.pk).update(state=InferenceJob.State.RUNNING, worker="celery@dead:9")
    redelivered = run(study)
    assert redelivered.state == InferenceJob.State.SUCCEEDED
    assert redelivered.attempts == 2
    assert redelivered.diagnostic_report_id == first.diagnostic_report_id
    assert reports() == 1
    assert ResourceRecord.objects.filter(resource_type="Provenance").count() == 1


def test_the_fhir_context_links_patient_imaging_study_and_order(demo_model, dicom_storage):
    datasets = ct_series(slices=8, lesion=True, accession="ACC-77")
    study = str(datasets[0].StudyInstanceUID)
    patient = store.create_resource({"resourceType": "Patient"}).stored.logical_id
    imaging = fhir_imaging_study(study, patient)
    order = store.create_resource(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "identifier": [{"value": "ACC-77"}],
        }
    ).stored.logical_id
    # A clinician-signed prior report of the same patient found the same lesion.
    store.create_resource(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:btt-health:ai-finding", "code": "synthetic-lesion"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "interpretation": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": "POS",
                        }
                    ]
                }
            ],
        }
    )
    index_study(datasets)
    job = run(study)
    assert job.state == InferenceJob.State.SUCCEEDED, job.reason
    report = store.read_resource("DiagnosticReport", job.diagnostic_report_id).as_dict()
    assert report["subject"] == {"reference": f"Patient/{patient}"}
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{imaging}"}]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]
    consensus = job.trust["details"]["consensus"]
    assert consensus["neutral"] is False
    assert consensus["opinions"][0]["source"] == "prior_report"
    assert job.trust["factors"]["H_consensus"] == 1.0


def test_another_model_version_on_the_same_study_counts_for_consensus(demo_model, dicom_storage):
    study = index_study(ct_series(slices=8, lesion=True))
    other = InferenceJob.objects.create(
        study_instance_uid=study,
        model=demo_model,
        model_name="ct-lesion-demo",
        model_version="0.9.0",
        state=InferenceJob.State.SUCCEEDED,
        findings=[{"code": ["urn:btt-health:ai-finding", "synthetic-lesion"], "positive": False}],
    )
    job = run(study)
    assert job.findings[0]["positive"] is True
    opinions = job.trust["details"]["consensus"]["opinions"]
    assert opinions == [
        {
            "source": "other_model",
            "reference": "ct-lesion-demo 0.9.0",
            "positive": False,
            "weight": 1.0,
            "agrees": False,
        }
    ]
    assert job.trust["factors"]["H_consensus"] == 0.0
    assert other.pk != job.pk


def test_a_missing_slice_lowers_the_image_quality_factor(demo_model, dicom_storage):
    whole = run(index_study(ct_series(slices=12, lesion=False, seed=21, patient_id="P-A")))
    gappy = run(index_study(ct_series(slices=12, lesion=False, seed=21, skip=[6], patient_id="P-B")))
    assert gappy.trust["factors"]["D_quality"] < whole.trust["factors"]["D_quality"]
    series_quality = next(iter(gappy.quality.values()))
    spacing = next(c for c in series_quality["checks"] if c["name"] == "slice_spacing")
    assert spacing["value"]["missing"] == 1


def test_compressed_instances_are_decoded(demo_model, dicom_storage):
    datasets = ct_series(slices=6, lesion=False)
    for ds in datasets:
        ds.compress(RLELossless)
    job = run(index_study(datasets))
    assert job.state == InferenceJob.State.SUCCEEDED, job.reason


def test_undecodable_pixel_data_fails_the_job_without_a_report(demo_model, dicom_storage):
    datasets = ct_series(slices=6, lesion=False)
    broken = datasets[3]
    broken.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    broken.BitsAllocated, broken.BitsStored, broken.HighBit = 8, 8, 7
    broken.PixelData = encapsulate([b"\xff\xd8\xff\xdb garbage \xff\xd9"])
    job = run(index_study(datasets))
    assert job.state == InferenceJob.State.FAILED
    assert "PixelDecodeError" in job.reason
    assert str(broken.SOPInstanceUID) in job.reason
    assert "JPEG Baseline (Process 1)" in job.reason
    assert job.diagnostic_report_id == ""
    assert reports() == 0


def test_a_tampered_model_file_fails_the_job(demo_model, dicom_storage):
    study = index_study(ct_series(slices=4, lesion=False))
    model_file = Path(demo_model.path) / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\x00")
    job = run(study)
    assert job.state == InferenceJob.State.FAILED
    assert "sha256 mismatch" in job.reason
    assert reports() == 0


def test_a_study_the_index_does_not_know_fails_the_job(demo_model, dicom_storage):
    job = run("1.2.3.999")
    assert job.state == InferenceJob.State.FAILED
    assert "is not in the DICOM index" in job.reason


def test_a_study_the_model_does_not_fit_fails_the_job(demo_model, dicom_storage):
    datasets = ct_series(slices=3, lesion=False)
    for ds in datasets:
        ds.Modality = "MR"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    job = run(index_study(datasets))
    assert job.state == InferenceJob.State.FAILED
    assert "no series of study" in job.reason
    assert "takes modalities ['CT']" in job.reason


def test_a_disabled_model_makes_no_job(demo_model, dicom_storage):
    demo_model.enabled = False
    demo_model.save()
    with pytest.raises(ModelUnavailableError, match="disabled"):
        run("1.2.3")
    assert not InferenceJob.objects.exists()


def test_jobs_are_created_queued_and_can_be_given_up(demo_model):
    job, created = create_job("1.2.3.4", demo_model, priority="stat", event_id="study_received:1.2.3.4:1")
    assert created
    assert job.state == InferenceJob.State.QUEUED
    assert job.priority_rank == 0
    again, created_again = create_job("1.2.3.4", demo_model)
    assert again.pk == job.pk
    assert created_again is False
    failed = mark_job_failed(job.pk, "gave up after 5 retries: broker unreachable")
    assert failed.state == InferenceJob.State.FAILED
    assert failed.reason.startswith("gave up")
    assert results.find_report_id("1.2.3.4", "ct-lesion-demo", "1.0.0") is None
