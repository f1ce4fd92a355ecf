"""An inference result as FHIR: DiagnosticReport, Observations, Device, Provenance, in one transaction.

What is written for one (study, model, model version), all in one transaction Bundle through
`integrations.fhir.bundles.process_bundle` (validated, referentially checked, indexed, atomic):

- `Device` for the model (identifiers `urn:btt-health:ai-model|<name>:<version>` and
  `urn:btt-health:ai-model-sha256|<sha256>`), conditional create: one per model version;
- one `Observation` per finding label of the manifest (status `preliminary`, category imaging,
  code from the manifest, subject, `derivedFrom` the ImagingStudy, `bodySite` from the series'
  Body Part Examined, `valueQuantity` the probability in %, `interpretation` POS/NEG against the
  label's threshold, components: images analysed, supporting images, longest run, threshold, the
  image with the highest probability, the series);
- one `Observation` for the trust score (code `urn:btt-health:ai-pipeline|trust-score`,
  `valueQuantity` in %, one component per factor and weight). The trust score is an Observation
  rather than an extension so that any FHIR client can read and search it (`Observation?code=
  urn:btt-health:ai-pipeline|trust-score&value-quantity=lt50`) and a viewer shows it like any
  result; the report lists it in `result` and quotes it in `conclusion` (docs/trust-score.md);
- the `DiagnosticReport` (status `preliminary`, category, code from the manifest plus the model's
  own code, subject, `effectiveDateTime` of the study, `issued`, `imagingStudy`, `basedOn` the
  ServiceRequest(s) of the accession, `result` the Observations, `conclusion`, `conclusionCode` of
  positive findings);
- a `Provenance` whose targets are the report and its Observations, recorded now, occurred over
  the run, with the model (`author`: the Device, displayed with name, version and sha256) and the
  worker that ran it (`performer`: identifier `urn:btt-health:inference-worker|<worker>`) as
  agents and the ImagingStudy (or the Study Instance UID) as source entity.

Idempotency: every resource but the Provenance is a conditional create on an identifier derived
from study UID + model name + version (`report_identifier`), so a second write matches instead of
duplicating; the Provenance has no identifier in R4, so `write_report` first looks for the report
under a row lock of the inference job (services.py) and writes nothing when it exists. Exactly one
report per (study, model, version) results however often a task runs.
"""

from __future__ import annotations

import uuid
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from django.conf import settings

from ai_pipeline.manifest import Label, Manifest
from ai_pipeline.trust import FindingAssessment, TrustScore
from integrations.fhir.validation import validate_resource

REPORT_SYSTEM = "urn:btt-health:ai-pipeline:report"
OBSERVATION_SYSTEM = "urn:btt-health:ai-pipeline:observation"
DEVICE_SYSTEM = "urn:btt-health:ai-model"
DEVICE_SHA_SYSTEM = "urn:btt-health:ai-model-sha256"
WORKER_SYSTEM = "urn:btt-health:inference-worker"
PIPELINE_SYSTEM = "urn:btt-health:ai-pipeline"
TRUST_FACTOR_SYSTEM = "urn:btt-health:ai-pipeline:trust-factor"
COMPONENT_SYSTEM = "urn:btt-health:ai-pipeline:component"
DICOM_UID_SYSTEM = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
SNOMED = "http://snomed.info/sct"

# DICOM Body Part Examined → SNOMED CT (PS3.16 Annex L), for Observation.bodySite.
BODY_PARTS = {
    "ABDOMEN": ("818983003", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "BRAIN": ("12738006", "Brain"),
    "BREAST": ("76752008", "Breast"),
    "CHEST": ("51185008", "Chest"),
    "HEAD": ("69536005", "Head"),
    "HEART": ("80891009", "Heart"),
    "KIDNEY": ("64033007", "Kidney"),
    "KNEE": ("72696002", "Knee"),
    "LIVER": ("10200004", "Liver"),
    "LUNG": ("39607008", "Lung"),
    "NECK": ("45048000", "Neck"),
    "PELVIS": ("12921003", "Pelvis"),
}

TRUST_CODE = {"system": PIPELINE_SYSTEM, "code": "trust-score", "display": "AI result trust score"}


def report_key(study_instance_uid: str, model_name: str, model_version: str) -> str:
    """`<study uid>:<model>:<version>`: the value of every identifier of one result."""
    return f"{study_instance_uid}:{model_name}:{model_version}"


def report_identifier(study_instance_uid: str, model_name: str, model_version: str) -> tuple[str, str]:
    return REPORT_SYSTEM, report_key(study_instance_uid, model_name, model_version)


def _criteria(system: str, value: str) -> str:
    return urlencode([("identifier", f"{system}|{value}")])


def finding_code(label: Label, model_name: str) -> dict:
    """The Observation.code coding of a finding label (the manifest's, else one under the model)."""
    if label.code is not None:
        return label.code.as_fhir()
    return {
        "system": f"{DEVICE_SYSTEM}:{model_name}",
        "code": label.name,
        "display": label.display or label.name,
    }


def body_site(body_part: str) -> dict | None:
    body_part = (body_part or "").strip().upper()
    if not body_part:
        return None
    site: dict = {"text": body_part}
    if body_part in BODY_PARTS:
        code, display = BODY_PARTS[body_part]
        site["coding"] = [{"system": SNOMED, "code": code, "display": display}]
    return site


def dicom_datetime(date: str, time: str = "", zone: str | None = None) -> str | None:
    """A FHIR dateTime from DICOM DA/TM values (a time gets the zone BTT_DICOM_TIME_ZONE or UTC)."""
    date = (date or "").strip()
    if len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    time = (time or "").strip().split(".")[0]
    if len(time) < 4 or not time.isdigit():
        return day
    time = time.ljust(6, "0")[:6]
    zone = zone or getattr(settings, "BTT_DICOM_TIME_ZONE", "UTC")
    try:
        moment = datetime(
            int(date[:4]), int(date[4:6]), int(date[6:]), int(time[:2]), int(time[2:4]), int(time[4:6]),
            tzinfo=zoneinfo.ZoneInfo(zone),
        )  # fmt: skip
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return day
    return moment.isoformat()


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _percent(value: float) -> dict:
    return {"value": round(100.0 * float(value), 2), "unit": "%", "system": UCUM, "code": "%"}


def _unitless(value: float) -> dict:
    return {"value": round(float(value), 4), "unit": "1", "system": UCUM, "code": "1"}


def _concept(system: str, code: str, text: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": text}], "text": text}


@dataclass
class FindingResult:
    """A finding label's assessment on the series it was decided on."""

    label: Label
    assessment: FindingAssessment
    series_instance_uid: str
    body_part: str = ""
    best_sop_instance_uid: str | None = None


@dataclass
class ReportInput:
    study_instance_uid: str
    model_name: str
    model_version: str
    model_sha256: str
    manifest: Manifest
    worker: str
    findings: list[FindingResult]
    trust: TrustScore
    started_at: datetime
    finished_at: datetime
    images: int
    patient_reference: str | None = None  # "Patient/<id>"
    imaging_study_reference: str | None = None  # "ImagingStudy/<id>"
    service_request_references: list[str] = field(default_factory=list)
    effective: str | None = None  # FHIR dateTime of the study
    providers: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return report_key(self.study_instance_uid, self.model_name, self.model_version)


@dataclass
class ReportResources:
    device: dict
    findings: list[dict]
    trust: dict
    report: dict
    provenance: dict
    full_urls: dict[str, str]

    def all(self) -> list[dict]:
        return [self.device, *self.findings, self.trust, self.report, self.provenance]


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _notes(manifest: Manifest) -> list[dict]:
    notes = [{"text": "Preliminary result produced by an AI model; it must be reviewed by a clinician."}]
    if not manifest.clinical_use:
        notes.append({"text": f"NOT FOR CLINICAL USE. {manifest.intended_use}"})
    return notes


def conclusion_text(data: ReportInput) -> str:
    parts = []
    for finding in data.findings:
        a = finding.assessment
        name = finding.label.display or finding.label.name
        if a.positive:
            parts.append(
                f"{name}: suspected, on {len(a.supporting)} of {a.images} images (longest run {len(a.longest_run)} "
                f"adjacent), highest probability {a.probability:.0%} (threshold {a.threshold:.0%})."
            )
        else:
            parts.append(
                f"{name}: not found in {a.images} images (highest probability {a.probability:.0%}, "
                f"threshold {a.threshold:.0%})."
            )
    t = data.trust
    parts.append(
        f"AI trust score {t.percent:g}% (image quality {t.d_quality:.0%}, model confidence {t.m_confidence:.0%}, "
        f"consensus {t.h_consensus:.0%}, uncertainty {t.u_factor:.0%}, evidence {t.e_evidence:.0%})."
    )
    parts.append(
        f"Preliminary AI result of {data.manifest.title} ({data.model_name} {data.model_version}), "
        "to be reviewed by a clinician."
    )
    if not data.manifest.clinical_use:
        parts.append("NOT FOR CLINICAL USE: research/demonstration model.")
    return " ".join(parts)


def build_resources(data: ReportInput, *, now: datetime | None = None) -> ReportResources:
    """The resources of one result, referring to each other by `urn:uuid:` full URLs."""
    now = now or datetime.now(UTC)
    manifest = data.manifest
    urls = {"device": _urn(), "report": _urn(), "trust": _urn(), "provenance": _urn()}
    effective = data.effective or instant(data.finished_at)
    subject = {"subject": {"reference": data.patient_reference}} if data.patient_reference else {}
    derived = (
        {"derivedFrom": [{"reference": data.imaging_study_reference}]} if data.imaging_study_reference else {}
    )
    imaging_category = [_concept(OBSERVATION_CATEGORY, "imaging", "Imaging")]
    method = {
        "text": (
            f"AI model {data.model_name} {data.model_version} (sha256 {data.model_sha256}); "
            f"test-time augmentation: {', '.join(manifest.input.tta)}"
        )
    }

    device = {
        "resourceType": "Device",
        "identifier": [
            {"system": DEVICE_SYSTEM, "value": f"{data.model_name}:{data.model_version}"},
            {"system": DEVICE_SHA_SYSTEM, "value": data.model_sha256},
        ],
        "status": "active",
        "deviceName": [
            {"name": manifest.title, "type": "user-friendly-name"},
            {"name": data.model_name, "type": "model-name"},
        ],
        "modelNumber": data.model_name,
        "type": {"text": "AI inference model (ONNX)"},
        "version": [{"value": data.model_version}],
        "note": [
            {"text": f"Intended use: {manifest.intended_use}"},
            {"text": f"Licence: {manifest.licence}"},
        ],
    }

    findings = []
    for finding in data.findings:
        a = finding.assessment
        label = finding.label
        url = _urn()
        urls[f"finding:{label.name}"] = url
        components = [
            (("images-analysed", "Images analysed"), {"valueInteger": a.images}),
            (("supporting-images", "Images at or above the threshold"), {"valueInteger": len(a.supporting)}),
            (
                ("longest-run", "Longest run of adjacent supporting images"),
                {"valueInteger": len(a.longest_run)},
            ),
            (("threshold", "Decision threshold"), {"valueQuantity": _percent(a.threshold)}),
            (("series", "Series Instance UID"), {"valueString": finding.series_instance_uid}),
        ]
        if finding.best_sop_instance_uid:
            components.append(
                (("best-image", "SOP Instance UID of the image with the highest probability"),
                 {"valueString": finding.best_sop_instance_uid})
            )  # fmt: skip
        observation = {
            "resourceType": "Observation",
            "identifier": [{"system": OBSERVATION_SYSTEM, "value": f"{data.key}:{label.name}"}],
            "status": "preliminary",
            "category": imaging_category,
            "code": {"coding": [finding_code(label, data.model_name)], "text": label.display or label.name},
            **subject,
            "effectiveDateTime": effective,
            "issued": instant(now),
            "device": {"reference": urls["device"]},
            **derived,
            "valueQuantity": _percent(a.probability),
            "interpretation": [
                _concept(INTERPRETATION, "POS", "Positive")
                if a.positive
                else _concept(INTERPRETATION, "NEG", "Negative")
            ],
            "method": method,
            "note": _notes(manifest),
            "component": [
                {"code": _concept(COMPONENT_SYSTEM, code, text), **value}
                for (code, text), value in components
            ],
        }
        site = body_site(finding.body_part)
        if site:
            observation["bodySite"] = site
        findings.append(observation)

    t = data.trust
    trust_components = [
        ("D_quality", "Image quality (D_quality)", t.d_quality),
        ("M_confidence", "Model confidence (M_confidence)", t.m_confidence),
        ("H_consensus", "Consensus (H_consensus)", t.h_consensus),
        ("U_factor", "Predictive uncertainty (U_factor)", t.u_factor),
        ("E_evidence", "Supporting evidence (E_evidence)", t.e_evidence),
        ("alpha", "Weight alpha", t.weights.alpha),
        ("beta", "Weight beta", t.weights.beta),
        ("gamma", "Weight gamma", t.weights.gamma),
    ]
    trust = {
        "resourceType": "Observation",
        "identifier": [{"system": OBSERVATION_SYSTEM, "value": f"{data.key}:trust-score"}],
        "status": "preliminary",
        "category": imaging_category,
        "code": {"coding": [TRUST_CODE], "text": "AI result trust score"},
        **subject,
        "effectiveDateTime": effective,
        "issued": instant(now),
        "device": {"reference": urls["device"]},
        **derived,
        "valueQuantity": _percent(t.score),
        "method": {
            "text": (
                "T = alpha*(D_quality*M_confidence) + beta*H_consensus*(1-U_factor) + gamma*E_evidence "
                f"(weights of specialty '{t.weights.specialty}', from {t.weights.source}); see docs/trust-score.md"
            )
        },
        "component": [
            {"code": _concept(TRUST_FACTOR_SYSTEM, code, text), "valueQuantity": _unitless(value)}
            for code, text, value in trust_components
        ],
    }

    positive_codes = [
        {"coding": [finding_code(f.label, data.model_name)], "text": f.label.display or f.label.name}
        for f in data.findings
        if f.assessment.positive
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REPORT_SYSTEM, "value": data.key}],
        **(
            {"basedOn": [{"reference": ref} for ref in data.service_request_references]}
            if data.service_request_references
            else {}
        ),
        "status": "preliminary",
        "category": [{"coding": [manifest.report.category.as_fhir()]}],
        "code": {
            "coding": [
                manifest.report.code.as_fhir(),
                {"system": DEVICE_SYSTEM, "code": data.model_name, "display": manifest.title},
            ],
            "text": f"{manifest.title} (AI: {data.model_name} {data.model_version})",
        },
        **subject,
        "effectiveDateTime": effective,
        "issued": instant(now),
        **(
            {"imagingStudy": [{"reference": data.imaging_study_reference}]}
            if data.imaging_study_reference
            else {}
        ),
        "result": [{"reference": urls[f"finding:{f.label.name}"]} for f in data.findings]
        + [{"reference": urls["trust"]}],
        "conclusion": conclusion_text(data),
    }
    if positive_codes:
        report["conclusionCode"] = positive_codes

    source = (
        {"reference": data.imaging_study_reference}
        if data.imaging_study_reference
        else {"identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{data.study_instance_uid}"}}
    )
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": urls["report"]}]
        + [{"reference": urls[f"finding:{f.label.name}"]} for f in data.findings]
        + [{"reference": urls["trust"]}],
        "occurredPeriod": {"start": instant(data.started_at), "end": instant(data.finished_at)},
        "recorded": instant(now),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [
            {
                "type": _concept(PARTICIPANT_TYPE, "author", "Author"),
                "who": {
                    "reference": urls["device"],
                    "display": f"AI model {data.model_name} {data.model_version} (sha256 {data.model_sha256})",
                },
            },
            {
                "type": _concept(PARTICIPANT_TYPE, "performer", "Performer"),
                "who": {
                    "identifier": {"system": WORKER_SYSTEM, "value": data.worker},
                    "display": f"inference worker {data.worker}"
                    + (f" ({', '.join(data.providers)})" if data.providers else ""),
                },
            },
        ],
        "entity": [{"role": "source", "what": source}],
    }
    return ReportResources(device, findings, trust, report, provenance, urls)


def validate_resources(resources: ReportResources) -> None:
    """Validate each resource (FhirError naming the element otherwise)."""
    for resource in resources.all():
        validate_resource(resource)


def build_bundle(resources: ReportResources) -> dict:
    """The transaction Bundle writing `resources` (conditional creates, see the module docstring)."""

    def entry(resource: dict, url: str, *, conditional: bool = True) -> dict:
        request = {"method": "POST", "url": resource["resourceType"]}
        if conditional:
            identifier = resource["identifier"][0]
            request["ifNoneExist"] = _criteria(identifier["system"], identifier["value"])
        return {"fullUrl": url, "resource": resource, "request": request}

    urls = resources.full_urls
    entries = [entry(resources.device, urls["device"])]
    for observation in resources.findings:
        name = observation["identifier"][0]["value"].rsplit(":", 1)[1]
        entries.append(entry(observation, urls[f"finding:{name}"]))
    entries.append(entry(resources.trust, urls["trust"]))
    entries.append(entry(resources.report, urls["report"]))
    entries.append(entry(resources.provenance, urls["provenance"], conditional=False))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@dataclass
class WrittenReport:
    diagnostic_report_id: str
    provenance_id: str
    observation_ids: list[str]
    device_id: str
    created: bool  # False: the report existed already and nothing was written


def find_report_id(study_instance_uid: str, model_name: str, model_version: str) -> str | None:
    """The logical id of the DiagnosticReport of this (study, model, version), if one exists."""
    from integrations.fhir.search import find_matches

    system, value = report_identifier(study_instance_uid, model_name, model_version)
    record = find_matches("DiagnosticReport", [("identifier", f"{system}|{value}")]).first()
    return record.logical_id if record is not None else None


def write_report(data: ReportInput) -> WrittenReport:
    """Write the result's resources in one transaction (call inside the job's row lock)."""
    from integrations.fhir.bundles import process_bundle

    existing = find_report_id(data.study_instance_uid, data.model_name, data.model_version)
    if existing is not None:
        return WrittenReport(existing, "", [], "", created=False)
    resources = build_resources(data)
    validate_resources(resources)
    response = process_bundle(
        build_bundle(resources),
        base_url=settings.BTT_FHIR_BASE_URL or "http://localhost/fhir",
        principal=None,
        prefer_return="minimal",
    )
    ids: dict[str, list[str]] = {}
    for answer in response.get("entry", []):
        location = answer["response"]["location"]
        resource_type, logical_id = (
            location.split("/")[-4:-2] if "/_history/" in location else location.split("/")[-2:]
        )
        ids.setdefault(resource_type, []).append(logical_id)
    return WrittenReport(
        diagnostic_report_id=ids["DiagnosticReport"][0],
        provenance_id=ids["Provenance"][0],
        observation_ids=ids.get("Observation", []),
        device_id=ids["Device"][0],
        created=True,
    )
