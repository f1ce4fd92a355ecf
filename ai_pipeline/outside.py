"""Outside jobs, the hospital's side: hand a job to a worker outside the hospital and take its
result back. Everything identifiable stays here; the outside worker (outside_worker.py) gets only
a de-identified copy of the study and an opaque job id, and never uses the database.

One function per operation (the task `ai_pipeline.dispatch_outside_job` and the views of
`outside_api.py` call them):

- `dispatch_job(job_id) -> dict | None`: for an outside job (`InferenceJob.outside`, queued when
  `BTT_INFERENCE_OUTSIDE_QUEUE` is set), on a hospital worker: checks that the model can run and
  that the study has images it applies to, writes the de-identified copy of those images
  (`deidentify.deidentify_study`: PS3.15 basic profile, UIDs remapped consistently, mapping kept in
  `DeidentifiedStudy`), records an `OutsideDispatch` (a random `ref`, the SHA-256 of a random
  token valid `BTT_OUTSIDE_TOKEN_SECONDS`, the copy's folder) and, on commit, publishes
  `ai_pipeline.run_outside_inference` on `BTT_INFERENCE_OUTSIDE_QUEUE` with the payload it returns:
  the ref, the model's name, version and sha256, the paths to download the study from and post
  the result to (relative to the hospital's URL, which the outside worker has configured), the
  token and its expiry. No patient name or ID, accession number, original UID or FHIR id. A job
  handed out before (a sweep or a retry re-dispatches it) has its older dispatch superseded (its
  token no longer works, its copy is removed). The job stays (or goes back to) `queued`; it is
  `running` once the outside worker downloads the study. A study that cannot be sent (no image
  the model applies to, burned-in annotations, the study gone, the model not runnable) fails the
  job with the reason; transient errors (database, disk) are raised for the task to retry.
- `authorise(ref, token) -> OutsideDispatch`: the dispatch whose token this is (401 without a
  token, 404 for an unknown ref, 403 for a wrong, expired or superseded token), see `OutsideDenied`.
- `open_study(ref, token, worker=) -> list[Path]`: the de-identified Part 10 files to serve; the
  first download of a dispatch makes the job `running` (attempts + 1, worker, started_at).
- `receive_result(ref, token, body) -> InferenceJob`: the outside worker's answer, either
  `{"worker", "analysis": StudyAnalysis JSON}` or `{"worker", "error": "..."}`. An error fails the
  job with it. An analysis is checked (every finding label of the model, every series and image UID
  one of the copy's stand-ins: else the job fails naming what is wrong), re-identified with the
  study's `DeidentifiedStudy` mapping, and written exactly as the inside path writes it
  (`services.record_result`: H_consensus from the patient's prior reports, the DiagnosticReport
  and its resources, the job `succeeded`). The copy is removed. Idempotent: a dispatch takes one
  result; a repeated post returns the job as it is. A transient failure of the write (database,
  FHIR 5xx/409) raises `OutsideRetryLater` (the view answers 503; the worker posts again) and
  leaves the job `running`.
- `outcome_as_dict(ref, job)`: what the outside worker is told back (its ref, the state, the reason):
  nothing identifiable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import shutil
from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ai_pipeline import deidentify, registry, services, study_source
from ai_pipeline.models import DeidentifiedStudy, InferenceJob, OutsideDispatch
from integrations.fhir.outcomes import FhirError

logger = logging.getLogger(__name__)

State = InferenceJob.State
STUDY_PATH = "/api/ai/outside/jobs/{ref}/study"
RESULT_PATH = "/api/ai/outside/jobs/{ref}/result"


class OutsideDenied(Exception):
    """A request of an outside worker that is refused; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OutsideRetryLater(Exception):
    """The result could not be written now (database, FHIR store); the worker should post again."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _remove(folder: str) -> None:
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _fail(job_id: int, reason: str) -> None:
    logger.error("outside job %s failed: %s", job_id, reason)
    services.mark_job_failed(job_id, reason)


def dispatch_job(job_id: int) -> dict | None:
    """Make the de-identified copy and hand the job out (see the module docstring); the task
    payload published on commit, or None when nothing is handed out."""
    job = InferenceJob.objects.select_related("model").filter(pk=job_id).first()
    if job is None:
        logger.warning("outside job %s is gone; nothing to dispatch", job_id)
        return None
    if job.state in (State.SUCCEEDED, State.FAILED):
        logger.info("outside job %s is %s; nothing to dispatch", job_id, job.state)
        return None
    try:
        model = registry.get_runnable_model(job.model_name, job.model_version)
        manifest = registry.manifest_of(model)
        images = study_source.study_images(job.study_instance_uid)
        services._candidate_series(images, manifest)  # NoApplicableImages before anything is copied
        applicability = manifest.applicability
        copy = deidentify.deidentify_study(
            images,
            keep=lambda ref: applicability.matches(
                modality=ref.modality, body_part=ref.body_part, sop_class_uid=ref.sop_class_uid
            ),
        )
    except (
        registry.RegistryError,
        services.NoApplicableImages,
        study_source.StudyNotFound,
        deidentify.DeidentificationError,
        FileNotFoundError,
    ) as exc:
        _fail(job_id, f"not sent outside: {exc.__class__.__name__}: {exc}")
        return None

    token = secrets.token_urlsafe(32)
    ref = secrets.token_hex(16)
    now = timezone.now()
    expires = now + timedelta(seconds=settings.BTT_OUTSIDE_TOKEN_SECONDS)
    try:
        with transaction.atomic():
            job = InferenceJob.objects.select_for_update().get(pk=job_id)
            if job.state in (State.SUCCEEDED, State.FAILED):
                copy.remove()
                return None
            superseded = list(
                OutsideDispatch.objects.select_for_update()
                .filter(job=job, active=True)
                .values_list("pk", "folder")
            )
            OutsideDispatch.objects.filter(pk__in=[pk for pk, _ in superseded]).update(active=False)
            OutsideDispatch.objects.create(
                job=job,
                ref=ref,
                token_sha256=_digest(token),
                expires_at=expires,
                folder=str(copy.folder),
                deidentified_study_uid=copy.images.study_instance_uid,
            )
            if job.state == State.RUNNING:
                job.reason = f"handed out again (attempt {job.attempts} on {job.worker} did not finish)"
            job.state = State.QUEUED
            job.published_at = now  # the sweep counts from the outside message
            job.save(update_fields=["state", "reason", "published_at", "updated_at"])
            payload = {
                "job": ref,
                "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
                "study": STUDY_PATH.format(ref=ref),
                "result": RESULT_PATH.format(ref=ref),
                "token": token,
                "expires_at": expires.isoformat(),
            }
            from ai_pipeline.tasks import publish_outside_run

            for _, folder in superseded:
                transaction.on_commit(partial(_remove, folder))
            transaction.on_commit(partial(publish_outside_run, payload, job.priority), robust=True)
    except BaseException:
        copy.remove()
        raise
    logger.info("outside job %s handed out as %s (%d de-identified images)", job_id, ref, len(copy.files))
    return payload


def authorise(ref: str, token: str | None, *, lock: bool = False) -> OutsideDispatch:
    """The dispatch `ref` when `token` is its token, still valid; OutsideDenied otherwise."""
    if not token:
        raise OutsideDenied(401, "send the job's token as 'Authorization: Bearer <token>'")
    query = OutsideDispatch.objects.select_related("job")
    if lock:
        query = query.select_for_update(of=("self",))
    dispatch = query.filter(ref=ref).first()
    if dispatch is None:
        raise OutsideDenied(404, f"no outside job {ref}")
    if not hmac.compare_digest(_digest(token), dispatch.token_sha256):
        raise OutsideDenied(403, f"the token is not the token of outside job {ref}")
    if not dispatch.active:
        raise OutsideDenied(403, f"outside job {ref} was handed out again; this token is no longer valid")
    if dispatch.expires_at <= timezone.now():
        raise OutsideDenied(
            403, f"the token of outside job {ref} expired at {dispatch.expires_at.isoformat()}"
        )
    return dispatch


def open_study(ref: str, token: str | None, *, worker: str = "") -> list[Path]:
    """The de-identified files of outside job `ref` (see the module docstring)."""
    with transaction.atomic():
        dispatch, job = _lock(ref, token)
        if job.state in (State.SUCCEEDED, State.FAILED) or dispatch.result_at is not None:
            raise OutsideDenied(409, f"outside job {ref} is {job.state}; there is nothing to run")
        files = sorted(Path(dispatch.folder).glob("*.dcm"))
        if not files:
            raise OutsideDenied(410, f"the study of outside job {ref} is no longer here")
        if dispatch.downloaded_at is None:
            now = timezone.now()
            dispatch.downloaded_at = now
            dispatch.save(update_fields=["downloaded_at"])
            job.state = State.RUNNING
            job.attempts += 1
            job.worker = f"outside {worker or 'worker'}"[:255]
            job.started_at = now
            job.finished_at = None
            job.queue_seconds = services._seconds(job.queued_at, now)
            job.save()
    return files


def _lock(ref: str, token: str | None) -> tuple[OutsideDispatch, InferenceJob]:
    """The dispatch and its job, both locked (the job first, as `dispatch_job` takes them)."""
    dispatch = authorise(ref, token)
    job = (
        InferenceJob.objects.select_for_update(of=("self",))
        .select_related("routing_rule")
        .get(pk=dispatch.job_id)
    )
    return authorise(ref, token, lock=True), job  # checked again under the job's lock


def outcome_as_dict(ref: str, job: InferenceJob) -> dict:
    """What the outside worker is told about its job: nothing identifiable."""
    return {"job": ref, "state": job.state, "reason": job.reason if job.state == State.FAILED else ""}


def _reidentify(job: InferenceJob, analysis: services.StudyAnalysis) -> services.StudyAnalysis:
    record = DeidentifiedStudy.objects.filter(study_instance_uid=job.study_instance_uid).first()
    originals = {stand_in: original for original, stand_in in (record.uid_map if record else {}).items()}
    originals.pop(record.deidentified_study_uid if record else "", None)
    unknown = sorted(uid for uid in analysis.uids() if uid not in originals)
    if unknown:
        raise services.AnalysisError(
            f"the result names {len(unknown)} series/image UID(s) that are not in the de-identified copy of "
            f"the study: {', '.join(unknown[:5])}"
        )
    return analysis.mapped(originals.__getitem__)


def receive_result(ref: str, token: str | None, body: Mapping) -> InferenceJob:
    """Take the outside worker's result of `ref` (see the module docstring); the job after it."""
    error = body.get("error")
    analysis_json = body.get("analysis")
    worker = str(body.get("worker") or "")[:200]
    folder = ""
    try:
        with transaction.atomic():
            dispatch, job = _lock(ref, token)
            if (error is None) == (analysis_json is None) or (
                error is not None and not isinstance(error, str)
            ):
                raise OutsideDenied(
                    400, "the result must have either 'analysis' (an object) or 'error' (a string)"
                )
            if dispatch.result_at is not None:
                return job  # taken already: a repeated post changes nothing
            folder = dispatch.folder
            if job.state == State.QUEUED and error is None:
                raise OutsideDenied(
                    409, f"outside job {ref} has not been downloaded; there is no run to report"
                )
            dispatch.result_at = timezone.now()
            dispatch.save(update_fields=["result_at"])
            transaction.on_commit(partial(_remove, folder))
            if job.state not in (State.QUEUED, State.RUNNING):
                return job  # finished meanwhile (e.g. given up on): nothing more to write
            if worker:
                job.worker = f"outside {worker}"[:255]
                job.save(update_fields=["worker", "updated_at"])
            if error is not None:
                services._finish(job, State.FAILED, f"the outside worker failed: {error}")
                logger.error("outside job %s (job %s) failed outside: %s", ref, job.pk, error)
                return job
            analysis = _reidentify(job, services.StudyAnalysis.from_json(analysis_json))
            model = registry.get_runnable_model(job.model_name, job.model_version)
            timer = services._Timer(marks=dict(analysis.timings))
            return services.record_result(
                job,
                model,
                registry.manifest_of(model),
                analysis,
                images=study_source.study_images(job.study_instance_uid),
                worker=job.worker,
                timer=timer,
            )
    except OutsideDenied:
        raise
    except services.PERMANENT_ERRORS as exc:
        reason = f"the outside result was refused: {services._describe(exc)}"
    except FhirError as exc:
        if exc.status >= 500 or exc.status == 409:
            raise OutsideRetryLater(services._describe(exc)) from exc
        reason = services._describe(exc)
    except services.TRANSIENT_ERRORS as exc:
        logger.warning("outside job %s: the result could not be written now: %s", ref, exc)
        raise OutsideRetryLater(services._describe(exc)) from exc
    except Exception as exc:
        _finish_outside(ref, f"internal error: {services._describe(exc)}", folder)
        raise
    return _finish_outside(ref, reason, folder)


def _finish_outside(ref: str, reason: str, folder: str) -> InferenceJob:
    """Fail the job of dispatch `ref` with `reason`, its result taken and its copy removed."""
    with transaction.atomic():
        job_id = OutsideDispatch.objects.filter(ref=ref).values_list("job_id", flat=True).get()
        job = InferenceJob.objects.select_for_update().get(pk=job_id)
        dispatch = OutsideDispatch.objects.select_for_update().get(ref=ref)
        dispatch.result_at = dispatch.result_at or timezone.now()
        dispatch.save(update_fields=["result_at"])
        if job.state not in (State.SUCCEEDED, State.FAILED):
            services._finish(job, State.FAILED, reason)
    _remove(folder or dispatch.folder)
    logger.error("outside job %s (job %s) failed: %s", ref, job.pk, reason)
    return job
