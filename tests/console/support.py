"""Helpers of the console tests: organizations, users and studies the way production makes them.

`processed_study` builds a study as the server would have it after the AI pipeline ran: a FHIR
Patient managed by an organization and an order (ServiceRequest) with the accession number, a
synthetic CT in the DICOM index and instance storage (`tests/ai_pipeline/support.index_study`),
its ImagingStudy written by the DICOM node's own upkeep (`sync_imaging_study`, which links the
Patient), and the demo model run on it in this process (`run_inference_for_study`): the
preliminary DiagnosticReport, Observations, trust score and Provenance are the pipeline's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ai_pipeline.models import AIModel, InferenceJob
from ai_pipeline.registry import sync_registry
from ai_pipeline.services import run_inference_for_study
from btt_health.console import accounts, demo
from btt_health.console.models import Organization
from integrations.dicom.imaging_study import sync_imaging_study
from integrations.dicom.models import Study
from tests.ai_pipeline.support import ct_series, index_study

PASSWORD = "S3cure-test-passw0rd!"


def make_user(username: str, role: str, *organizations: Organization, password: str = PASSWORD):
    return accounts.create_user(
        username, password, role, first_name=username.split(".")[0].title(), last_name="Tester",
        organizations=list(organizations),
    )  # fmt: skip


@dataclass
class MadeStudy:
    study_instance_uid: str
    patient_id: str
    fhir_patient_id: str
    order_id: str
    job: InferenceJob | None


def indexed_study(
    organization: Organization | None,
    *,
    patient_id: str,
    accession: str,
    priority: str = "routine",
    family: str = "Tester",
    given: str = "Pat",
    slices: int = 8,
    calling_ae: str = "CT-SCANNER",
    lesion: bool = True,
    study_date: str | None = None,
    modality: str = "CT",
    seed: int = 7,
    size: int = 256,
) -> MadeStudy:
    """A study in the index with its Patient (managed by `organization` when given), order and
    ImagingStudy; no AI run."""
    patient = demo.DemoPatient(
        patient_id, family, given, "1970-01-01", "female", accession, priority, ("24627-2", "CT Chest")
    )
    fhir_patient_id = order_id = ""
    if organization is not None:
        fhir_patient_id = demo.ensure_patient(patient, organization)
        order_id = demo.ensure_order(patient, f"Patient/{fhir_patient_id}")
    datasets = ct_series(
        slices=slices, size=size, patient_id=patient_id, accession=accession, lesion=lesion, seed=seed
    )
    for ds in datasets:
        ds.PatientName = f"{family}^{given}"
        ds.Modality = modality
        if study_date:
            ds.StudyDate = study_date
    uid = index_study(datasets, calling_ae=calling_ae)
    study = Study.objects.get(study_instance_uid=uid)
    if modality != "CT":
        Study.objects.filter(pk=study.pk).update(modalities_in_study=modality)
        study.series.update(modality=modality)
    sync_imaging_study(study)
    study.refresh_from_db()
    return MadeStudy(uid, patient_id, study.patient.fhir_patient_id, order_id, None)


def add_job(
    study_instance_uid: str, state: str, *, trust_score: float | None = None, reason: str = ""
) -> InferenceJob:
    """An inference job row of the demo model for a study, in `state` (the worklist's AI status)."""
    from django.utils import timezone

    sync_registry()
    model = AIModel.objects.get(name="ct-lesion-demo")
    now = timezone.now()
    return InferenceJob.objects.create(
        study_instance_uid=study_instance_uid, model=model, model_name=model.name, model_version=model.version,
        state=state, trust_score=trust_score, reason=reason,
        finished_at=now if state in ("succeeded", "failed") else None,
    )  # fmt: skip


def processed_study(organization: Organization | None, **kwargs) -> MadeStudy:
    """`indexed_study`, then the demo model run on it: its preliminary AI report is in the store."""
    made = indexed_study(organization, **kwargs)
    result = sync_registry()
    assert any(m.name == "ct-lesion-demo" for m in result.registered), result.refused
    made.job = run_inference_for_study(made.study_instance_uid, "ct-lesion-demo", worker="pytest@console")
    assert made.job.state == InferenceJob.State.SUCCEEDED, made.job.reason
    return made
