"""One study as the viewer shows it: patient header, series and their images, the AI reports with
their findings and trust score, and the patient's prior reports. Read only.

Every function takes the user and raises `access.NotVisible` for a study (or image) the user may
not see, exactly as for one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import AbstractBaseUser

from ai_pipeline.jobs import finding_images
from ai_pipeline.models import InferenceJob
from btt_health.console import access
from btt_health.console.worklist import dicom_date, person_name
from integrations.dicom.models import Instance, Study
from integrations.fhir import store
from integrations.fhir.outcomes import FhirError
from integrations.fhir.search import find_matches

TRUST_CODE = ("urn:btt-health:ai-pipeline", "trust-score")
TRUST_FACTOR_SYSTEM = "urn:btt-health:ai-pipeline:trust-factor"
COMPONENT_SYSTEM = "urn:btt-health:ai-pipeline:component"

# What each trust factor means, for the report panel (docs/trust-score.md, in a clinician's words).
TRUST_FACTORS = {
    "D_quality": (
        "Image quality",
        "Product of the image-quality checks of the series: missing or uneven slices, noise, bit depth, "
        "lossy compression, pixel spacing, number of slices. 100 % means no defect was found.",
    ),
    "M_confidence": (
        "Model confidence",
        "How far the model's probabilities on the deciding images are from the decision threshold. "
        "A call right at the threshold has 0 % confidence.",
    ),
    "H_consensus": (
        "Consensus",
        "Share of other opinions on the same finding that agree: prior reports of this patient "
        "(signed ones count fully) and other models run on this study. 50 % when there is none.",
    ),
    "U_factor": (
        "Uncertainty",
        "The larger of the entropy of the deciding probabilities and the disagreement between the "
        "model's runs on flipped images. Lower is better; it reduces the consensus term.",
    ),
    "E_evidence": (
        "Evidence",
        "How much of the study supports the statement: for a finding, how long and consistent the run "
        "of positive slices is; for a negative result, how completely and clearly the study was covered.",
    ),
}
WEIGHTS = {
    "alpha": "weight of quality x confidence",
    "beta": "weight of consensus x certainty",
    "gamma": "weight of evidence",
}


@dataclass
class ImageRef:
    sop_instance_uid: str
    number: int | None
    frames: int


@dataclass
class SeriesView:
    series_instance_uid: str
    number: int | None
    modality: str
    description: str
    body_part: str
    images: list[ImageRef]


@dataclass
class Finding:
    label: str
    positive: bool
    probability: float | None
    threshold: float | None
    series_instance_uid: str
    best_image: str
    supporting_images: int | None
    images: int | None
    longest_run: int | None
    status: str
    positive_images: list[str] = field(default_factory=list)  # SOP Instance UIDs at or above the threshold
    run_images: list[str] = field(default_factory=list)  # those of the longest run


@dataclass
class TrustFactor:
    code: str
    title: str
    value: float
    explanation: str


@dataclass
class ReportView:
    id: str
    version_id: str
    status: str
    title: str
    conclusion: str
    issued: str
    interpreters: list[str]
    findings: list[Finding]
    trust_score: float | None
    trust_factors: list[TrustFactor]
    trust_weights: list[TrustFactor]
    trust_method: str
    notes: list[str]

    @property
    def signed(self) -> bool:
        return self.status in ("final", "amended", "corrected", "appended")


@dataclass
class PriorReport:
    id: str
    status: str
    title: str
    date: str
    conclusion: str
    study_instance_uid: str


@dataclass
class StudyView:
    study_instance_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    fhir_patient_id: str
    study_date: str
    description: str
    accession_number: str
    modalities: str
    series: list[SeriesView]
    reports: list[ReportView]
    priors: list[PriorReport]
    jobs: list[dict] = field(default_factory=list)


def visible_study(user: AbstractBaseUser, study_instance_uid: str) -> Study:
    """The index row of the study, if `user` may see it; NotVisible otherwise."""
    study = (
        Study.objects.filter(access.study_filter(user), study_instance_uid=study_instance_uid)
        .select_related("patient")
        .first()
    )
    if study is None:
        raise access.NotVisible(f"study {study_instance_uid} is not on your worklist")
    return study


def visible_instance(user: AbstractBaseUser, study_uid: str, series_uid: str, sop_uid: str) -> Instance:
    """The index row of an image of a study `user` may see; NotVisible otherwise."""
    study = visible_study(user, study_uid)
    instance = (
        Instance.objects.select_related("series__study")
        .filter(sop_instance_uid=sop_uid, series__series_instance_uid=series_uid, series__study=study)
        .first()
    )
    if instance is None:
        raise access.NotVisible(f"image {sop_uid} is not part of study {study_uid}")
    return instance


def study_view(user: AbstractBaseUser, study_instance_uid: str) -> StudyView:
    """Everything the study page shows (NotVisible for a study the user may not see)."""
    study = visible_study(user, study_instance_uid)
    patient = study.patient
    fhir_patient = _read("Patient", patient.fhir_patient_id) if patient.fhir_patient_id else None
    reports = [_report_view(r) for r in _study_reports(study)]
    report_ids = {r.id for r in reports}
    return StudyView(
        study_instance_uid=study.study_instance_uid,
        patient_name=_patient_name(fhir_patient) or person_name(patient.patient_name) or "(no name)",
        patient_id=patient.patient_id,
        birth_date=(fhir_patient or {}).get("birthDate") or dicom_date(patient.birth_date),
        sex=(fhir_patient or {}).get("gender") or patient.sex,
        fhir_patient_id=patient.fhir_patient_id,
        study_date=dicom_date(study.study_date),
        description=study.study_description,
        accession_number=study.accession_number,
        modalities=study.modalities_in_study.replace("\\", ", "),
        series=_series(study),
        reports=reports,
        priors=_priors(patient.fhir_patient_id, report_ids, study.study_instance_uid),
        jobs=[
            {"model": f"{j.model_name} {j.model_version}", "state": j.state, "reason": j.reason}
            for j in InferenceJob.objects.filter(study_instance_uid=study.study_instance_uid).order_by(
                "queued_at"
            )
        ],
    )


def _read(resource_type: str, logical_id: str) -> dict | None:
    try:
        return store.read_resource(resource_type, logical_id).as_dict()
    except FhirError:
        return None


def _patient_name(patient: dict | None) -> str:
    for name in (patient or {}).get("name") or []:
        if name.get("text"):
            return name["text"]
        family = name.get("family", "")
        given = " ".join(name.get("given") or [])
        if family or given:
            return f"{family}, {given}".strip(", ")
    return ""


def _series(study: Study) -> list[SeriesView]:
    views = []
    for series in study.series.order_by("series_number", "pk"):
        images = [
            ImageRef(sop, number, _frames(tags))
            for sop, number, tags in series.instances.order_by("instance_number", "pk").values_list(
                "sop_instance_uid", "instance_number", "tags"
            )
        ]
        views.append(
            SeriesView(
                series_instance_uid=series.series_instance_uid,
                number=series.series_number,
                modality=series.modality,
                description=series.series_description,
                body_part=series.body_part_examined,
                images=images,
            )
        )
    return views


def _frames(tags: dict) -> int:
    value = ((tags or {}).get("00280008") or {}).get("Value") or [1]
    try:
        return max(1, int(value[0]))
    except (TypeError, ValueError):
        return 1


def _study_reports(study: Study) -> list[store.StoredResource]:
    """The DiagnosticReports of the study: those referring to its ImagingStudy, and those its
    inference jobs wrote (in case the ImagingStudy was missing when they ran)."""
    ids: list[str] = []
    if study.fhir_imaging_study_id:
        records = find_matches(
            "DiagnosticReport", [("imaging-study", f"ImagingStudy/{study.fhir_imaging_study_id}")]
        )
        ids += list(records.values_list("logical_id", flat=True))
    ids += [
        i
        for i in InferenceJob.objects.filter(study_instance_uid=study.study_instance_uid)
        .exclude(diagnostic_report_id="")
        .values_list("diagnostic_report_id", flat=True)
        if i not in ids
    ]
    stored = []
    for logical_id in ids:
        try:
            stored.append(store.read_resource("DiagnosticReport", logical_id))
        except FhirError:
            continue
    return stored


def read_report(report_id: str) -> ReportView:
    """A DiagnosticReport with its findings and trust score (no access check: callers check)."""
    return _report_view(store.read_resource("DiagnosticReport", report_id))


def _report_view(stored: store.StoredResource) -> ReportView:
    report = stored.as_dict()
    findings: list[Finding] = []
    trust_score = None
    factors: list[TrustFactor] = []
    weights: list[TrustFactor] = []
    method = ""
    images = finding_images(stored.logical_id)
    for reference in report.get("result") or []:
        parsed = store.parse_relative_reference(reference.get("reference") or "")
        if parsed is None or parsed[0] != "Observation":
            continue
        observation = _read("Observation", parsed[1])
        if observation is None:
            continue
        codings = (observation.get("code") or {}).get("coding") or []
        if any((c.get("system"), c.get("code")) == TRUST_CODE for c in codings):
            trust_score = (observation.get("valueQuantity") or {}).get("value")
            method = (observation.get("method") or {}).get("text", "")
            for component in observation.get("component") or []:
                code = _component_code(component, TRUST_FACTOR_SYSTEM)
                value = float((component.get("valueQuantity") or {}).get("value") or 0.0)
                if code in TRUST_FACTORS:
                    title, explanation = TRUST_FACTORS[code]
                    factors.append(TrustFactor(code, title, value, explanation))
                elif code in WEIGHTS:
                    weights.append(TrustFactor(code, code, value, WEIGHTS[code]))
            continue
        finding = _finding(observation)
        for coding in codings:
            marked = images.get((coding.get("system", ""), coding.get("code", "")))
            if marked:
                finding.positive_images = marked["positive_images"]
                finding.run_images = marked["run_images"]
                break
        findings.append(finding)
    interpreters = [
        i.get("display") or i.get("reference", "") for i in report.get("resultsInterpreter") or []
    ]
    return ReportView(
        id=stored.logical_id,
        version_id=str(stored.version_id),
        status=report.get("status", ""),
        title=(report.get("code") or {}).get("text", "DiagnosticReport"),
        conclusion=report.get("conclusion", ""),
        issued=report.get("issued", ""),
        interpreters=interpreters,
        findings=findings,
        trust_score=trust_score,
        trust_factors=factors,
        trust_weights=weights,
        trust_method=method,
        notes=[],
    )


def _component_code(component: dict, system: str) -> str:
    for coding in (component.get("code") or {}).get("coding") or []:
        if coding.get("system") == system:
            return coding.get("code", "")
    return ""


def _finding(observation: dict) -> Finding:
    components: dict[str, dict] = {}
    for component in observation.get("component") or []:
        code = _component_code(component, COMPONENT_SYSTEM)
        if code:
            components[code] = component
    interpretation = [
        c.get("code") for i in observation.get("interpretation") or [] for c in i.get("coding") or []
    ]

    def integer(code: str) -> int | None:
        return components.get(code, {}).get("valueInteger")

    threshold = (components.get("threshold", {}).get("valueQuantity") or {}).get("value")
    return Finding(
        label=(observation.get("code") or {}).get("text", "finding"),
        positive="POS" in interpretation,
        probability=(observation.get("valueQuantity") or {}).get("value"),
        threshold=threshold,
        series_instance_uid=components.get("series", {}).get("valueString", ""),
        best_image=components.get("best-image", {}).get("valueString", ""),
        supporting_images=integer("supporting-images"),
        images=integer("images-analysed"),
        longest_run=integer("longest-run"),
        status=observation.get("status", ""),
    )


def _priors(fhir_patient_id: str, exclude: set[str], study_uid: str) -> list[PriorReport]:
    """The patient's other DiagnosticReports, newest first (at most 20)."""
    if not fhir_patient_id:
        return []
    records = find_matches("DiagnosticReport", [("subject", f"Patient/{fhir_patient_id}")])
    priors = []
    for record in records.exclude(logical_id__in=exclude).order_by("-last_updated")[:20]:
        report = store.StoredResource.of(record).as_dict()
        study_uids = _study_uids_of(report)
        priors.append(
            PriorReport(
                id=record.logical_id,
                status=report.get("status", ""),
                title=(report.get("code") or {}).get("text", "DiagnosticReport"),
                date=(report.get("effectiveDateTime") or report.get("issued") or "")[:10],
                conclusion=report.get("conclusion", ""),
                study_instance_uid=study_uids[0] if study_uids else "",
            )
        )
    return priors


def _study_uids_of(report: dict) -> list[str]:
    uids = []
    for reference in report.get("imagingStudy") or []:
        parsed = store.parse_relative_reference(reference.get("reference") or "")
        if parsed is None:
            continue
        imaging = _read("ImagingStudy", parsed[1]) or {}
        for identifier in imaging.get("identifier") or []:
            if identifier.get("system") == "urn:dicom:uid" and identifier.get("value", "").startswith(
                "urn:oid:"
            ):
                uids.append(identifier["value"][len("urn:oid:") :])
    return uids
