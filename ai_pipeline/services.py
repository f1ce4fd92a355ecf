"""Running a model on a study: the function the inference task calls, and the job bookkeeping.

    job = run_inference_for_study(study_instance_uid, model_name, worker="celery@gpu-1:1234")

Contract of `run_inference_for_study(study_instance_uid, model_name, *, worker, model_version=None,
priority=None, event=None, routing_rule=None, specialty=None) -> InferenceJob`:

- Picks the model: `model_version`, or the newest enabled, available version of `model_name`;
  raises `ModelUnavailableError` (no job is made) when there is none.
- Claims the job row (study, model name, version), creating it `queued` if needed; a job already
  `succeeded` is returned as is (nothing runs: idempotent). Otherwise it becomes `running`
  (attempts + 1, worker, started_at), also when another worker was running it: that worker may
  have died (acks_late redelivers its task), and the write step below keeps a double run harmless.
- Outside any transaction: loads the model session (cached per process, sha256 checked), lists
  the study's images, decodes and prepares the applicable series (skipping instances without
  pixel data and localizers), runs the model with test-time augmentation, assesses each finding,
  checks image quality, collects other opinions (prior reports, other models) and computes the
  trust score.
- A job marked `outside` (its routing rule runs the model outside the hospital) runs the decoding
  and the model on a de-identified copy of the study (`deidentify.deidentify_study`, removed after
  the run); the series and image UIDs of its findings are mapped back to the originals before
  anything is written, so the report refers to the original study and patient.
- In one transaction holding the job row lock: writes the DiagnosticReport, its Observations, the
  model's Device and the Provenance (results.write_report; nothing is written when the report of
  this study/model/version exists, so exactly one results) and marks the job `succeeded` with the
  report and Provenance ids, trust score, findings, quality and timings; when the job's rule (or
  `BTT_AI_DICOM_SR`) asks for DICOM results, `ai_pipeline.export_dicom_results` is queued on commit.
- Permanent failures (pixel data that cannot be decoded, a model file whose sha256 does not match,
  a model that cannot be loaded or gives the wrong output, no applicable images, the study gone,
  a result the FHIR store refuses) mark the job `failed` with the reason and return it: no report
  is made up, and retrying will not help.
- Transient failures (database connection errors, I/O errors reading instance files) put the job
  back to `queued` with the reason and raise `TransientInferenceError`; the task retries with
  backoff and, when out of retries, calls `mark_job_failed`.
- Anything else (a bug) marks the job `failed` with the error and re-raises it.

The run is two parts, so that a worker outside the hospital can do the first without the database:
`analyse_study(images, runner, opener)` is the model's part, pure computation over the images (series
selection, decoding, preprocessing, inference with test-time augmentation, the per-finding M, U and E
signals, image quality) giving a JSON-safe `StudyAnalysis` (per finding also the SOP Instance UIDs of
every positive image and of the longest run); `record_result(job, model, manifest, analysis, images=...)`
is the hospital's part (FHIR context, prior reports and other models for H_consensus, the trust
score, the FHIR write and the job's summary). `outside.receive_result` calls the second with the
re-identified analysis an outside worker posted.

`create_job` makes the `queued` row when a study is routed (before the task is queued), so the
job's state is visible from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

import numpy as np
import orjson
import pydantic
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.utils import timezone

from ai_pipeline import deidentify, dicom_results, registry, results, runtime, study_source
from ai_pipeline.manifest import Label, Manifest, ManifestError
from ai_pipeline.models import AIModel, InferenceJob, RoutingRule
from ai_pipeline.preprocessing import (
    PixelDecodeError,
    PreparedSeries,
    SeriesBuilder,
    decode_frames,
    has_pixels,
    read_dataset,
)
from ai_pipeline.trust import (
    FindingAssessment,
    Opinion,
    assess_finding,
    consensus,
    get_weights,
    main_statement,
    trust_score,
)
from integrations.fhir.outcomes import FhirError

logger = logging.getLogger(__name__)

State = InferenceJob.State


class NoApplicableImages(Exception):
    """The study has no images the model applies to."""


class TransientInferenceError(Exception):
    """A failure a retry may fix; the job is back to `queued`."""


class AnalysisError(ValueError):
    """An analysis (sent back by an outside worker) that is malformed or does not fit the model."""


PERMANENT_ERRORS = (
    PixelDecodeError,
    registry.RegistryError,  # includes ModelIntegrityError and runtime.ModelLoadError
    runtime.ModelOutputError,
    runtime.ProviderConfigError,
    ManifestError,
    NoApplicableImages,
    AnalysisError,
    study_source.StudyNotFound,
    deidentify.DeidentificationError,
    FileNotFoundError,
)
TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError)


# --- job bookkeeping --------------------------------------------------------------------------


def create_job(
    study_instance_uid: str,
    model: AIModel,
    *,
    priority: str | None = None,
    event_id: str = "",
    accession_number: str = "",
    routing_rule: RoutingRule | None = None,
    outside: bool = False,
) -> tuple[InferenceJob, bool]:
    """The job of (study, model version), created `queued` if new; (job, created)."""
    job, created = InferenceJob.objects.get_or_create(
        study_instance_uid=study_instance_uid,
        model_name=model.name,
        model_version=model.version,
        defaults={
            "model": model,
            "model_sha256": model.sha256,
            "priority": priority or InferenceJob.Priority.ROUTINE,
            "event_id": event_id,
            "accession_number": accession_number,
            "routing_rule": routing_rule,
            "outside": outside,
        },
    )
    return job, created


def mark_job_failed(job_id: int, reason: str) -> InferenceJob:
    """Give up on a job (the task's last retry failed): `failed` with `reason`."""
    with transaction.atomic():
        job = InferenceJob.objects.select_for_update().get(pk=job_id)
        if job.state != State.SUCCEEDED:
            _finish(job, State.FAILED, reason)
        return job


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else max(0.0, (end - start).total_seconds())


def _finish(job: InferenceJob, state: str, reason: str = "") -> None:
    job.state = state
    job.reason = reason[:4000]
    job.finished_at = timezone.now()
    job.run_seconds = _seconds(job.started_at, job.finished_at)
    job.save()


def _claim(
    study_instance_uid: str,
    model: AIModel,
    *,
    worker: str,
    priority: str | None,
    event: Mapping | None,
    routing_rule: RoutingRule | None,
) -> InferenceJob:
    with transaction.atomic():
        job, _ = create_job(
            study_instance_uid,
            model,
            priority=priority,
            event_id=str((event or {}).get("event_id", "")),
            accession_number=str((event or {}).get("accession_number", "")),
            routing_rule=routing_rule,
        )
        job = InferenceJob.objects.select_for_update().get(pk=job.pk)
        if job.state == State.SUCCEEDED:
            return job
        if job.state == State.RUNNING:
            logger.warning(
                "job %s was running on %s (attempt %d); %s takes it over",
                job.pk,
                job.worker,
                job.attempts,
                worker,
            )
        now = timezone.now()
        job.state = State.RUNNING
        job.worker = worker[:255]
        job.attempts += 1
        job.started_at = now
        job.finished_at = None
        job.queue_seconds = _seconds(job.queued_at, now)
        job.model = model
        job.model_sha256 = model.sha256
        if priority:
            job.priority = priority
        job.save()
        return job


# --- the run ----------------------------------------------------------------------------------


@dataclass
class _Timer:
    marks: dict[str, float] = field(default_factory=dict)
    _started: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = self.marks.get(name, 0.0) + now - self._started
        self._started = now


@dataclass
class SeriesOutcome:
    series: PreparedSeries
    probabilities: np.ndarray  # (augmentations, images, labels)
    assessments: dict[str, FindingAssessment]


def _is_localizer(ds) -> bool:
    image_type = ds.get("ImageType")
    values = [
        str(v).upper() for v in (image_type if isinstance(image_type, list | tuple) else [image_type or ""])
    ]
    values = [part for value in values for part in value.split("\\")]
    return "LOCALIZER" in values


def _prepare_series(
    refs: list[study_source.InstanceRef], manifest: Manifest, opener=study_source.open_instance
) -> PreparedSeries | None:
    builder: SeriesBuilder | None = None
    applicability = manifest.applicability
    for ref in refs:
        with opener(ref.sop_instance_uid) as handle:
            ds = read_dataset(handle, name=ref.sop_instance_uid)
        if not has_pixels(ds) or _is_localizer(ds):
            continue
        if not applicability.matches(
            modality=str(ds.get("Modality", ref.modality)),
            body_part=str(ds.get("BodyPartExamined", ref.body_part)),
            sop_class_uid=str(ds.get("SOPClassUID", ref.sop_class_uid)),
        ):
            continue
        try:
            frames = decode_frames(ds, name=ref.sop_instance_uid)
        except PixelDecodeError as exc:
            raise PixelDecodeError(f"series {ref.series_instance_uid}: {exc}") from exc
        for frame in frames:
            if builder is None:
                builder = SeriesBuilder(ref.series_instance_uid, manifest.input)
            builder.add(frame)
    return builder.build(manifest.quality) if builder is not None and len(builder) else None


def _candidate_series(
    images: study_source.StudyImages, manifest: Manifest
) -> list[list[study_source.InstanceRef]]:
    applicability = manifest.applicability
    candidates = []
    for refs in images.series().values():
        usable = [
            ref
            for ref in refs
            if applicability.matches(
                modality=ref.modality, body_part=ref.body_part, sop_class_uid=ref.sop_class_uid
            )
        ]
        if usable:
            candidates.append(usable)
    if not candidates:
        found = sorted({f"{ref.modality or '?'} {ref.sop_class_uid}" for ref in images.instances})
        raise NoApplicableImages(
            f"no series of study {images.study_instance_uid} fits model {manifest.key} "
            f"(it takes modalities {applicability.modalities or 'any'}, SOP classes {applicability.sop_classes or 'any'}; "
            f"the study has {', '.join(found)})"
        )
    return sorted(candidates, key=len, reverse=True)


def _assess(
    series: PreparedSeries, probabilities: np.ndarray, manifest: Manifest
) -> dict[str, FindingAssessment]:
    spacing = series.quality.check("slice_spacing") if series.quality else None
    missing = (
        int((spacing.value or {}).get("missing", 0)) if spacing and isinstance(spacing.value, dict) else 0
    )
    run = manifest.output.min_consecutive_slices if manifest.input.kind == "slice" else 1
    return {
        label.name: assess_finding(
            probabilities[:, :, label.index],
            label=label.name,
            threshold=float(label.threshold),
            min_consecutive=run,
            missing_images=missing,
        )
        for label in manifest.output.findings
    }


def _pick(outcomes: list[SeriesOutcome], label: Label) -> SeriesOutcome:
    """The series a finding is decided on: the positive one with the highest probability, else the
    one that came closest to the threshold."""
    positives = [o for o in outcomes if o.assessments[label.name].positive]
    pool = positives or outcomes
    return max(pool, key=lambda o: o.assessments[label.name].probability)


def _code_key(coding: dict) -> tuple[str, str]:
    return coding.get("system", ""), coding.get("code", "")


_POSITIVE = {"POS", "A", "AA", "H", "HH", "HU", "DET"}
_NEGATIVE = {"NEG", "N", "ND"}
_CONFIRMED = {"final", "amended", "corrected"}


def _interpretation(observation: dict) -> bool | None:
    for concept in observation.get("interpretation") or []:
        for coding in concept.get("coding") or []:
            code = str(coding.get("code", "")).upper()
            if code in _POSITIVE:
                return True
            if code in _NEGATIVE:
                return False
    return None


def _site_codes(site: dict | None) -> set[tuple[str, str]]:
    return {_code_key(c) for c in (site or {}).get("coding") or []}


def collect_opinions(
    code: dict,
    *,
    study_instance_uid: str,
    model_name: str,
    model_version: str,
    patient_reference: str | None,
    body_site: dict | None,
) -> list[Opinion]:
    """Other opinions on the finding `code`: other models/versions on this study (their jobs), and
    prior Observations of the same patient with that code (docs/trust-score.md)."""
    wanted = _code_key(code)
    opinions: list[Opinion] = []
    others = InferenceJob.objects.filter(
        study_instance_uid=study_instance_uid, state=State.SUCCEEDED
    ).exclude(model_name=model_name, model_version=model_version)
    for job in others:
        for finding in job.findings or []:
            if tuple(finding.get("code", ())) == wanted:
                opinions.append(
                    Opinion(
                        "other_model", f"{job.model_name} {job.model_version}", bool(finding["positive"]), 1.0
                    )
                )
    if not patient_reference:
        return opinions
    from integrations.fhir.search import find_matches

    same_study = f"{study_instance_uid}:"
    records = find_matches(
        "Observation", [("subject", patient_reference), ("code", f"{wanted[0]}|{wanted[1]}")]
    )
    ours = _site_codes(body_site)
    for record in records.order_by("-pk")[:50]:
        observation = orjson.loads(record.text)
        if any(
            i.get("system") == results.OBSERVATION_SYSTEM and str(i.get("value", "")).startswith(same_study)
            for i in observation.get("identifier") or []
        ):
            continue  # this study: other models are counted from their jobs above
        status = observation.get("status")
        weight = 1.0 if status in _CONFIRMED else 0.5 if status == "preliminary" else 0.0
        positive = _interpretation(observation)
        theirs = _site_codes(observation.get("bodySite"))
        if weight == 0 or positive is None or (ours and theirs and not ours & theirs):
            continue
        opinions.append(Opinion("prior_report", f"Observation/{record.logical_id}", positive, weight))
    return opinions


@dataclass
class FhirContext:
    patient_reference: str | None = None
    imaging_study_reference: str | None = None
    service_request_references: list[str] = field(default_factory=list)


def resolve_fhir_context(images: study_source.StudyImages, event: Mapping | None = None) -> FhirContext:
    """The study's Patient, ImagingStudy and ServiceRequests in the FHIR store (each checked to exist).

    From the study_received payload when given; else from the ImagingStudy found by its identifier
    (`urn:dicom:uid|urn:oid:<uid>`): its subject and basedOn; else ServiceRequests whose identifier
    is the accession number (any system; of the same patient when it is known).
    """
    from integrations.fhir.search import find_matches
    from integrations.fhir.store import existing_ids

    event = event or {}
    patient = str(event.get("fhir_patient_id") or "")
    imaging = str(event.get("fhir_imaging_study_id") or "")
    requests = [str(i) for i in event.get("fhir_service_request_ids") or []]
    if not imaging:
        record = find_matches(
            "ImagingStudy",
            [("identifier", f"{results.DICOM_UID_SYSTEM}|urn:oid:{images.study_instance_uid}")],
        ).first()
        if record is not None:
            imaging = record.logical_id
            resource = orjson.loads(record.text)
            reference = (resource.get("subject") or {}).get("reference", "")
            if not patient and reference.startswith("Patient/"):
                patient = reference.split("/", 1)[1]
            if not requests:
                requests = [
                    ref["reference"].split("/", 1)[1]
                    for ref in resource.get("basedOn") or []
                    if str(ref.get("reference", "")).startswith("ServiceRequest/")
                ]
    if not requests and images.accession_number:
        params = [("identifier", images.accession_number)]
        if patient:
            params.append(("subject", f"Patient/{patient}"))
        requests = [record.logical_id for record in find_matches("ServiceRequest", params)[:5]]
    context = FhirContext()
    if patient and existing_ids("Patient", [patient]):
        context.patient_reference = f"Patient/{patient}"
    if imaging and existing_ids("ImagingStudy", [imaging]):
        context.imaging_study_reference = f"ImagingStudy/{imaging}"
    present = existing_ids("ServiceRequest", requests) if requests else set()
    context.service_request_references = [f"ServiceRequest/{i}" for i in requests if i in present]
    return context


# --- the model's part: pure computation over the images (no database) -----------------------


@dataclass
class FindingOutcome:
    """One finding label, assessed on the series it was decided on (`_pick`). Image UIDs are SOP
    Instance UIDs of that series (none for volume models)."""

    label: str
    series_instance_uid: str
    body_part: str
    assessment: FindingAssessment
    best_image: str | None = None  # the image with the highest probability
    positive_images: list[str] = field(default_factory=list)  # every image at or above the threshold
    run_images: list[str] = field(default_factory=list)  # the images of the longest run of those


@dataclass
class SeriesSummary:
    """A series the model saw: how many images, and its image-quality checks (D_quality)."""

    series_instance_uid: str
    images: int
    quality_score: float
    quality: dict


@dataclass
class StudyAnalysis:
    """What a model makes of a study before anything identifiable is added: per finding label its
    assessment (the trust score's M, U and E signals) on the series it was decided on, the series'
    quality, the providers that ran the model and the durations of the steps. JSON-safe
    (`as_json`/`from_json`), so a worker outside the hospital sends it back in de-identified UIDs;
    `mapped` re-identifies it."""

    findings: list[FindingOutcome]
    series: list[SeriesSummary]
    providers: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(series.images for series in self.series)

    def uids(self) -> set[str]:
        """Every series and image UID the analysis names."""
        found = {series.series_instance_uid for series in self.series}
        for finding in self.findings:
            found.add(finding.series_instance_uid)
            found.update(finding.positive_images)
            found.update(finding.run_images)
            if finding.best_image:
                found.add(finding.best_image)
        return found

    def mapped(self, to: Callable[[str], str]) -> StudyAnalysis:
        """The same analysis with every series and image UID passed through `to`."""
        return replace(
            self,
            findings=[
                replace(
                    finding,
                    series_instance_uid=to(finding.series_instance_uid),
                    best_image=to(finding.best_image) if finding.best_image else None,
                    positive_images=[to(uid) for uid in finding.positive_images],
                    run_images=[to(uid) for uid in finding.run_images],
                )
                for finding in self.findings
            ],
            series=[
                replace(series, series_instance_uid=to(series.series_instance_uid)) for series in self.series
            ],
        )

    def as_json(self) -> dict:
        return _ANALYSIS.dump_python(self, mode="json")

    @classmethod
    def from_json(cls, data: object) -> StudyAnalysis:
        """Parse an analysis sent as JSON; AnalysisError names what is wrong with it."""
        try:
            return _ANALYSIS.validate_python(data)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'analysis'}: {error['msg']}"
                for error in exc.errors()[:10]
            )
            raise AnalysisError(f"the analysis is not valid: {problems}") from None


_ANALYSIS = pydantic.TypeAdapter(StudyAnalysis)


def _unique(uids: list[str]) -> list[str]:
    return list(dict.fromkeys(uids))


def analyse_study(
    images: study_source.StudyImages,
    runner: runtime.ModelRunner,
    opener: Callable = study_source.open_instance,
    *,
    timer: _Timer | None = None,
    study_name: str | None = None,
) -> StudyAnalysis:
    """The model's part of a run, pure computation over the images `opener` gives (no database):
    pick the series the manifest applies to, decode and prepare them, run the model (plain on
    every image, test-time augmentation on the deciding ones), assess each finding and the image
    quality. Both the hospital's workers and a worker outside the hospital (on a de-identified
    copy) call it. Raises the PERMANENT_ERRORS of a study or model that cannot be used
    (NoApplicableImages, PixelDecodeError, ModelOutputError...); `study_name` names the study in
    those messages (default: its UID as `images` has it)."""
    manifest = runner.manifest
    timer = timer or _Timer()
    candidates = _candidate_series(images, manifest)
    prepared: list[PreparedSeries] = []
    for refs in candidates:
        series = _prepare_series(refs, manifest, opener)
        if series is not None:
            prepared.append(series)
            if manifest.input.series_selection == "largest":
                break
    if not prepared:
        raise NoApplicableImages(
            f"study {study_name or images.study_instance_uid}: no image of the fitting series can be used by "
            f"{manifest.key} (no pixel data, or localizers only)"
        )
    timer.lap("preprocess")

    outcomes = []
    for series in prepared:
        plain = runner.predict(series.inputs)
        tta = runner.predict_tta(series.inputs, focus=runtime.focus_images(plain, manifest), plain=plain)
        outcomes.append(
            SeriesOutcome(series, tta.probabilities, _assess(series, tta.probabilities, manifest))
        )
    timer.lap("inference")

    slices = manifest.input.kind == "slice"
    findings = []
    for label in manifest.output.findings:
        outcome = _pick(outcomes, label)
        assessment = outcome.assessments[label.name]
        frames = outcome.series.frames
        findings.append(
            FindingOutcome(
                label=label.name,
                series_instance_uid=outcome.series.series_instance_uid,
                body_part=outcome.series.body_part,
                assessment=assessment,
                best_image=frames[assessment.best_index].sop_instance_uid if slices else None,
                positive_images=_unique([frames[i].sop_instance_uid for i in assessment.supporting])
                if slices
                else [],
                run_images=_unique([frames[i].sop_instance_uid for i in assessment.longest_run])
                if slices
                else [],
            )
        )
    summaries = []
    for series in prepared:
        assert series.quality is not None  # SeriesBuilder.build always assesses it
        summaries.append(
            SeriesSummary(
                series.series_instance_uid, series.count, series.quality.score, series.quality.as_dict()
            )
        )
    return StudyAnalysis(
        findings=findings,
        series=summaries,
        providers=list(runner.providers),
        timings={name: round(seconds, 4) for name, seconds in timer.marks.items()},
    )


# --- the hospital's part: context, trust score, the FHIR write ------------------------------------


def _finding_summary(label: Label, outcome: FindingOutcome, model_name: str) -> dict:
    code = results.finding_code(label, model_name)
    assessment = outcome.assessment
    return {
        "label": label.name,
        "code": [code["system"], code["code"]],
        "positive": assessment.positive,
        "probability": round(assessment.probability, 4),
        "series": outcome.series_instance_uid,
        **{k: v for k, v in assessment.as_dict().items() if k not in ("label", "positive", "probability")},
        "best_image": outcome.best_image,
        "positive_images": outcome.positive_images,
        "run_images": outcome.run_images,
    }


def _run(
    job: InferenceJob,
    model: AIModel,
    *,
    worker: str,
    event: Mapping | None,
    specialty: str | None,
    timer: _Timer,
) -> InferenceJob:
    runner = runtime.get_runner(model)
    manifest = runner.manifest
    images = study_source.study_images(job.study_instance_uid)
    timer.lap("load")

    # A job that runs outside the hospital sees only a de-identified copy of the study: from here
    # to the end of the inference, `source` holds stand-in UIDs and no patient data; the analysis
    # is mapped back to the original UIDs before anything is written.
    copy: deidentify.DeidentifiedCopy | None = None
    source, opener = images, study_source.open_instance
    if job.outside:
        applicability = manifest.applicability
        copy = deidentify.deidentify_study(
            images,
            keep=lambda ref: applicability.matches(
                modality=ref.modality, body_part=ref.body_part, sop_class_uid=ref.sop_class_uid
            ),
        )
        source, opener = copy.images, copy.open_instance
    try:
        analysis = analyse_study(source, runner, opener, timer=timer, study_name=job.study_instance_uid)
    finally:
        if copy is not None:
            copy.remove()
    if copy is not None:
        analysis = analysis.mapped(copy.original_uid)
    return record_result(
        job,
        model,
        manifest,
        analysis,
        images=images,
        worker=worker,
        event=event,
        specialty=specialty,
        timer=timer,
    )


def record_result(
    job: InferenceJob,
    model: AIModel,
    manifest: Manifest,
    analysis: StudyAnalysis,
    *,
    images: study_source.StudyImages,
    worker: str,
    event: Mapping | None = None,
    specialty: str | None = None,
    timer: _Timer | None = None,
) -> InferenceJob:
    """Turn the analysis of a running job (in the study's original UIDs) into its report.

    Looks up the study's Patient, ImagingStudy and orders, collects other opinions (prior reports
    of the patient, other models on the study) for H_consensus, computes the trust score, and in
    one transaction under the job's row lock writes the DiagnosticReport with its Observations,
    Device and Provenance (nothing when the report of this study/model/version exists) and marks
    the job `succeeded` with its summary; queues the DICOM results on commit when asked. Raises
    AnalysisError when the analysis does not fit the model's manifest (a label missing or unknown,
    a finding on a series it does not describe)."""
    timer = timer or _Timer()
    labels = {label.name: label for label in manifest.output.findings}
    by_label = {finding.label: finding for finding in analysis.findings}
    if sorted(by_label) != sorted(labels) or len(by_label) != len(analysis.findings):
        raise AnalysisError(
            f"the analysis has findings {sorted(f.label for f in analysis.findings)}, "
            f"model {manifest.key} has labels {sorted(labels)}"
        )
    described = {series.series_instance_uid: series for series in analysis.series}
    outcomes = [by_label[name] for name in labels]
    for outcome in outcomes:
        if outcome.series_instance_uid not in described:
            raise AnalysisError(
                f"finding {outcome.label} is on series {outcome.series_instance_uid}, which the analysis does not describe"
            )
    context = resolve_fhir_context(images, event)
    findings = [
        results.FindingResult(
            labels[outcome.label],
            outcome.assessment,
            outcome.series_instance_uid,
            outcome.body_part,
            outcome.best_image,
        )
        for outcome in outcomes
    ]
    summaries = [_finding_summary(labels[outcome.label], outcome, model.name) for outcome in outcomes]
    main = main_statement([f.assessment for f in findings])
    main_finding = next(f for f in findings if f.assessment is main)
    main_series = described[main_finding.series_instance_uid]
    opinions = collect_opinions(
        results.finding_code(main_finding.label, model.name),
        study_instance_uid=job.study_instance_uid,
        model_name=model.name,
        model_version=model.version,
        patient_reference=context.patient_reference,
        body_site=results.body_site(main_finding.body_part),
    )
    agreement = consensus(main.positive, opinions)
    weights = get_weights(
        specialty or (job.routing_rule.specialty if job.routing_rule else "") or manifest.specialty
    )
    trust = trust_score(
        d_quality=main_series.quality_score,
        m_confidence=main.confidence,
        h_consensus=agreement.value,
        u_factor=main.uncertainty,
        e_evidence=main.evidence,
        weights=weights,
        details={
            "statement": main.label,
            "positive": main.positive,
            "series": main_series.series_instance_uid,
            "quality": main_series.quality,
            "finding": main.as_dict(),
            "consensus": {"neutral": agreement.neutral, "opinions": agreement.opinions},
        },
    )
    images_seen = analysis.images
    finished = timezone.now()
    data = results.ReportInput(
        study_instance_uid=job.study_instance_uid,
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        manifest=manifest,
        worker=worker,
        findings=findings,
        trust=trust,
        started_at=job.started_at or finished,
        finished_at=finished,
        images=images_seen,
        patient_reference=context.patient_reference,
        imaging_study_reference=context.imaging_study_reference,
        service_request_references=context.service_request_references,
        effective=results.dicom_datetime(images.study_date, images.study_time),
        providers=analysis.providers,
    )
    with transaction.atomic():
        job = InferenceJob.objects.select_for_update().get(pk=job.pk)
        if job.state == State.SUCCEEDED and job.diagnostic_report_id:
            return job  # another worker finished it meanwhile
        written = results.write_report(data)
        timer.lap("write")
        job.diagnostic_report_id = written.diagnostic_report_id
        job.accession_number = job.accession_number or images.accession_number[:64]
        if written.created:
            job.provenance_id = written.provenance_id
        job.images = images_seen
        job.providers = ", ".join(analysis.providers)[:200]
        job.trust_score = trust.percent
        job.trust = trust.as_dict()
        job.findings = summaries
        job.quality = {series.series_instance_uid: series.quality for series in analysis.series}
        job.load_seconds = round(timer.marks.get("load", 0.0), 4)
        job.preprocess_seconds = round(timer.marks.get("preprocess", 0.0), 4)
        job.inference_seconds = round(timer.marks.get("inference", 0.0), 4)
        job.write_seconds = round(timer.marks.get("write", 0.0), 4)
        _finish(
            job, State.SUCCEEDED, "" if written.created else "the report existed already; nothing was written"
        )
        if dicom_results.wanted(job):
            from ai_pipeline.tasks import queue_dicom_results

            transaction.on_commit(partial(queue_dicom_results, job.pk), robust=True)
    logger.info(
        "job %s: %s %s on %s -> DiagnosticReport/%s (trust %s%%, %d images, %.2f s inference)",
        job.pk, model.name, model.version, job.study_instance_uid, job.diagnostic_report_id,
        job.trust_score, images_seen, job.inference_seconds or 0.0,
    )  # fmt: skip
    return job


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, FhirError):
        text = f"the FHIR store refused the result: {exc}"
    return f"{exc.__class__.__name__}: {text}"


def run_inference_for_study(
    study_instance_uid: str,
    model_name: str,
    *,
    worker: str,
    model_version: str | None = None,
    priority: str | None = None,
    event: Mapping | None = None,
    routing_rule: RoutingRule | None = None,
    specialty: str | None = None,
) -> InferenceJob:
    """Run `model_name` on the study and write its report; see the module docstring for the contract."""
    model = registry.get_runnable_model(model_name, model_version)
    job = _claim(
        study_instance_uid, model, worker=worker, priority=priority, event=event, routing_rule=routing_rule
    )
    if job.state == State.SUCCEEDED:
        return job
    timer = _Timer()
    try:
        return _run(job, model, worker=worker, event=event, specialty=specialty, timer=timer)
    except PERMANENT_ERRORS as exc:
        reason = _describe(exc)
    except FhirError as exc:
        if exc.status >= 500 or exc.status == 409:
            _requeue(job, _describe(exc))
            raise TransientInferenceError(_describe(exc)) from exc
        reason = _describe(exc)
    except TRANSIENT_ERRORS as exc:
        _requeue(job, _describe(exc))
        raise TransientInferenceError(f"job {job.pk}: {_describe(exc)}") from exc
    except Exception as exc:
        _fail(job, f"internal error: {_describe(exc)}")
        raise
    logger.error("job %s failed: %s", job.pk, reason)
    return _fail(job, reason)


def _fail(job: InferenceJob, reason: str) -> InferenceJob:
    with transaction.atomic():
        job = InferenceJob.objects.select_for_update().get(pk=job.pk)
        if job.state != State.SUCCEEDED:
            _finish(job, State.FAILED, reason)
        return job


def _requeue(job: InferenceJob, reason: str) -> None:
    try:
        with transaction.atomic():
            job = InferenceJob.objects.select_for_update().get(pk=job.pk)
            if job.state != State.SUCCEEDED:
                job.state = State.QUEUED
                job.reason = f"attempt {job.attempts} failed, to be retried: {reason}"[:4000]
                # The task's retry publishes a new message now: the sweep counts from here.
                job.published_at = timezone.now()
                job.save(update_fields=["state", "reason", "published_at", "updated_at"])
    except DatabaseError:  # the database itself is what failed: the retry will claim the job again
        logger.warning("job %s: could not record the transient failure: %s", job.pk, reason)
