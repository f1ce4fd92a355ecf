"""An AI result as DICOM: a Comprehensive 3D SR (TID 1500 measurement report), stored in the node
and sent back to the PACS.

`export_dicom_results(job_id) -> dict` (task `ai_pipeline.export_dicom_results`, queued with
`transaction.on_commit` when a job succeeds and its routing rule, or `BTT_AI_DICOM_SR` for jobs
routed without a rule, asks for DICOM results):

1. builds the SR with highdicom: one TID 1500 Measurement Report whose procedure is the manifest's
   report code, observed by the model as a device (TID 1004: name, version, sha256-derived UID),
   with one TID 1501 measurement group per finding label: the finding code, Present/Absent
   (SCT 52101004 / 2667000) as a qualitative evaluation, the probability and the trust score in
   %, the finding site (SNOMED CT from Body Part Examined), the algorithm (TID 4019: model name and
   version) and the image with the highest probability as source image. Evidence: the instances of
   the series the finding was decided on (headers only). The SR is `preliminary` (not complete, not
   verified: a clinician signs the FHIR report), in the original study of the original patient;
2. stores it in the node (`integrations.dicom.services.store_instance`, calling AE `BTT_DICOM_AET`),
   so it is retrievable like any instance (C-MOVE, WADO-RS) and the study's ImagingStudy lists it;
3. queues `dicom.store_to_remote` (its public `queue_store_to_remote`, with retries) for each
   destination: the rule's `result_destinations`, else `BTT_AI_RESULT_DESTINATIONS`.

Idempotent: the SR's Series and SOP Instance UIDs derive from the report key (study, model,
version), so a second run finds the stored SR and only sends it again (harmless for the PACS).
The job's `dicom_results` records the SR's UIDs and the destinations it was queued to.

A DICOM SEG needs a location mask; the manifest schema has classification outputs only, so no
model can ask for one yet.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path

import highdicom as hd
from django.conf import settings
from django.db import transaction
from pydicom import dcmread
from pydicom.dataset import Dataset

from ai_pipeline import results, study_source
from ai_pipeline.models import InferenceJob
from ai_pipeline.registry import manifest_of

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
LOCAL_SCHEME = "99BTT"  # private coding scheme of this server (PS3.16 8.2: 99 prefix)
_SCHEMES = {
    "http://loinc.org": "LN",
    "http://snomed.info/sct": "SCT",
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "http://unitsofmeasure.org": "UCUM",
}
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
PROBABILITY = hd.sr.CodedConcept("probability", LOCAL_SCHEME, "Probability of finding (AI)")
TRUST = hd.sr.CodedConcept("trust-score", LOCAL_SCHEME, "AI result trust score")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class DicomResultError(Exception):
    """The SR cannot be made (the job has no report, the study's images are gone...)."""


def _uid(seed: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'urn:btt-health:ai-sr:{seed}').int}"


def sr_uids(job: InferenceJob) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the job's SR: the same on every run."""
    key = results.report_key(job.study_instance_uid, job.model_name, job.model_version)
    return _uid(f"{key}:series"), _uid(f"{key}:instance")


def _concept(coding: dict) -> hd.sr.CodedConcept:
    system = coding.get("system", "")
    scheme = _SCHEMES.get(system, LOCAL_SCHEME)
    meaning = coding.get("display") or coding.get("code", "")
    return hd.sr.CodedConcept(str(coding["code"])[:64], scheme, str(meaning)[:64])


def wanted(job: InferenceJob) -> bool:
    """Whether the job's result is also written as DICOM (its rule, else BTT_AI_DICOM_SR)."""
    return job.routing_rule.dicom_sr if job.routing_rule is not None else settings.BTT_AI_DICOM_SR


def destinations(job: InferenceJob) -> list[str]:
    if job.routing_rule is not None and job.routing_rule.destinations:
        return job.routing_rule.destinations
    return list(settings.BTT_AI_RESULT_DESTINATIONS)


# Type 2 attributes of the Patient and General Study modules that the SR copies from its evidence;
# scanners may leave them out (they must send them, empty if unknown), highdicom needs them there.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _evidence(series_uids: set[str], images: study_source.StudyImages) -> list[Dataset]:
    evidence = []
    for ref in images.instances:
        if ref.series_instance_uid in series_uids:
            with study_source.open_instance(ref.sop_instance_uid) as handle:
                ds = dcmread(handle, stop_before_pixels=True)
            for keyword in _TYPE_2:
                if keyword not in ds:
                    setattr(ds, keyword, None)
            evidence.append(ds)
    if not evidence:
        raise DicomResultError(f"study {images.study_instance_uid}: the images the result refers to are gone")
    return evidence


def build_sr(job: InferenceJob) -> Dataset:
    """The Comprehensive 3D SR of a succeeded job (see the module docstring)."""
    if job.state != InferenceJob.State.SUCCEEDED or not job.findings:
        raise DicomResultError(f"job {job.pk} has no result to write as DICOM ({job.state})")
    manifest = manifest_of(job.model)
    images = study_source.study_images(job.study_instance_uid)
    evidence = _evidence({f["series"] for f in job.findings}, images)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    labels = {label.name: label for label in manifest.output.findings}
    algorithm = hd.sr.AlgorithmIdentification(name=job.model_name, version=job.model_version)
    groups = []
    for finding in job.findings:
        label = labels[finding["label"]]
        code = _concept(results.finding_code(label, job.model_name))
        series = [ds for ds in evidence if str(ds.SeriesInstanceUID) == finding["series"]]
        site = results.body_site(str(series[0].get("BodyPartExamined", ""))) if series else None
        best = finding.get("best_image")
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_uid(f"{job.study_instance_uid}:{job.model_name}:{job.model_version}:{label.name}"),
                    identifier=f"{job.model_name} {job.model_version}: {label.name}"[:64],
                ),
                finding_type=code,
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(_concept(site["coding"][0]))]
                if site and site.get("coding")
                else None,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=code, value=PRESENT if finding["positive"] else ABSENT)
                ],
                measurements=[
                    hd.sr.Measurement(
                        name=PROBABILITY, value=round(100 * float(finding["probability"]), 2), unit=PERCENT
                    ),
                    hd.sr.Measurement(name=TRUST, value=float(job.trust_score or 0.0), unit=PERCENT),
                ],
                source_images=[hd.sr.SourceImageForMeasurementGroup(str(by_uid[best].SOPClassUID), best)]
                if best in by_uid
                else None,
            )
        )
    device = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid(f"model:{job.model_sha256}"),
            name=f"{job.model_name} {job.model_version}"[:64],
            manufacturer_name="BTT Health AI pipeline",
            model_name=job.model_name[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_concept(manifest.report.code.as_fhir()),
        imaging_measurements=groups,
    )
    series_uid, sop_uid = sr_uids(job)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="BTT Health",
        is_complete=False,
        is_final=False,
        is_verified=False,
        series_description=f"AI {job.model_name} {job.model_version} (preliminary)"[:64],
    )


def _stored(sop_uid: str) -> bool:
    from integrations.dicom.services import InstanceNotFound, instance_file

    try:
        instance_file(sop_uid)
    except InstanceNotFound:
        return False
    return True


def export_dicom_results(job_id: int) -> dict:
    """Make, store and send the job's SR (see the module docstring); what was done."""
    from integrations.dicom.services import store_instance
    from integrations.dicom.tasks_scu import queue_store_to_remote

    job = InferenceJob.objects.select_related("routing_rule", "model").get(pk=job_id)
    series_uid, sop_uid = sr_uids(job)
    outcome = "existed"
    if not _stored(sop_uid):
        sr = build_sr(job)
        folder = Path(settings.BTT_DATA_DIR)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".dcm", delete=False) as handle:
            path = Path(handle.name)
        try:
            sr.save_as(path, enforce_file_format=True)
            outcome = store_instance(path=path, consume=True, calling_ae=settings.BTT_DICOM_AET).outcome
        finally:
            path.unlink(missing_ok=True)
    sent_to = destinations(job)
    with transaction.atomic():
        locked = InferenceJob.objects.select_for_update().get(pk=job_id)
        locked.dicom_results = {
            "sr_series_instance_uid": series_uid,
            "sr_sop_instance_uid": sop_uid,
            "sr_sop_class_uid": COMPREHENSIVE_3D_SR,
            "stored": outcome,
            "sent_to": sent_to,
        }
        locked.save(update_fields=["dicom_results", "updated_at"])
        for ae_title in sent_to:
            queue_store_to_remote(ae_title, sop_instance_uids=[sop_uid])
    logger.info(
        "job %s: DICOM SR %s %s, queued to %s", job_id, sop_uid, outcome, ", ".join(sent_to) or "no one"
    )
    return {"job": job_id, "sr": sop_uid, "stored": outcome, "sent_to": sent_to}
