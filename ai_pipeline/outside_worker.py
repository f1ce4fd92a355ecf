"""The worker outside the hospital: runs a model on a de-identified copy, never using the database.

It is a Celery worker of this project at another site, consuming only the outside queue:

    BTT_OUTSIDE_WORKER=true BTT_HOSPITAL_URL=https://pacs-ai.hospital.example \\
    CELERY_BROKER_URL=<the hospital's BTT_OUTSIDE_BROKER_URL> BTT_MODEL_DIR=/srv/models \\
    celery -A btt_health worker -Q <BTT_INFERENCE_OUTSIDE_QUEUE>

`BTT_OUTSIDE_WORKER` keeps the worker off the database at start (no model registration, no sweep,
no heartbeat); its `DATABASE_URL` can be an empty SQLite file. The task
`ai_pipeline.run_outside_inference(payload)` (published by the hospital, `outside.dispatch_job`)
calls `run_job`, which only talks HTTP to `BTT_HOSPITAL_URL` (never to a host a message names):

1. finds the model (name, version) in its own `BTT_MODEL_DIR` and checks its `model.onnx` against
   the sha256 the hospital pinned (`ModelIntegrityError` otherwise);
2. downloads the de-identified study (`GET <study path>`, `Authorization: Bearer <token>`, a zip
   of Part 10 files) into `BTT_OUTSIDE_WORK_DIR/<job ref>/`;
3. reads the files' headers, then decodes, prepares and runs the model and assesses each finding
   (`services.analyse_study`, the same pure computation the hospital's workers run);
4. posts `{"worker", "analysis"}` (stand-in UIDs only) to `<result path>`, or `{"worker", "error"}`
   when the study or the model cannot be used (a permanent error: the hospital fails the job).

Connection errors, timeouts, 429 and 5xx answers raise `OutsideTransientError`; the task retries
with backoff (download and run again: the hospital accepts a second download of a running job).
A refusal (401/403/404/409/410: wrong or expired token, job superseded or finished) raises
`OutsideRefused`: there is nothing to do, the hospital's sweep hands the job out again if needed.
The download is removed after the job unless `BTT_OUTSIDE_KEEP_DOWNLOADS` (then the task's
payload is kept beside it as `task.json`, for audits and tests).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from pydicom import dcmread

from ai_pipeline import registry, runtime, services, study_source
from ai_pipeline.manifest import ManifestError, load_manifest

logger = logging.getLogger(__name__)

_REF = re.compile(r"^[0-9a-f]{32}$")
_FILE = re.compile(r"^[0-9.]{1,64}\.dcm$")
_REFUSED = {400, 401, 403, 404, 405, 409, 410, 413}


class OutsideTransientError(Exception):
    """The hospital could not be reached or answered 429/5xx; the task retries."""


class OutsideRefused(Exception):
    """The hospital refused the request (token wrong or expired, job superseded or finished)."""


@dataclass(frozen=True)
class OutsideTask:
    """The payload of `ai_pipeline.run_outside_inference` (outside.dispatch_job makes it)."""

    job: str
    model_name: str
    model_version: str
    model_sha256: str
    study: str
    result: str
    token: str
    expires_at: str

    @classmethod
    def from_payload(cls, payload: Mapping) -> OutsideTask:
        """Check the payload: an opaque hex ref, paths of that job under /api/ai/outside/."""
        try:
            model = payload["model"]
            task = cls(
                job=str(payload["job"]),
                model_name=str(model["name"]),
                model_version=str(model["version"]),
                model_sha256=str(model["sha256"]).lower(),
                study=str(payload["study"]),
                result=str(payload["result"]),
                token=str(payload["token"]),
                expires_at=str(payload.get("expires_at", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an outside task payload: missing {exc}") from None
        prefix = f"/api/ai/outside/jobs/{task.job}/"
        if not _REF.match(task.job) or task.study != prefix + "study" or task.result != prefix + "result":
            raise ValueError(
                f"not an outside task payload: job {task.job!r}, paths {task.study!r}, {task.result!r}"
            )
        return task


@dataclass
class LocalModel:
    """A model of this worker's own BTT_MODEL_DIR, shaped as `runtime.get_runner` takes a model."""

    name: str
    version: str
    sha256: str
    path: str
    manifest: dict

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def find_model(name: str, version: str, sha256: str) -> LocalModel:
    """The model folder of (name, version) under BTT_MODEL_DIR whose model.onnx hashes to `sha256`."""
    for folder in registry.find_model_folders():
        try:
            manifest = load_manifest(folder)
        except ManifestError:
            continue
        if (manifest.name, manifest.version) != (name, version):
            continue
        if manifest.sha256.lower() != sha256:
            raise registry.ModelIntegrityError(
                f"model {name} {version}: the manifest in {folder} pins sha256 {manifest.sha256.lower()}, "
                f"the hospital runs {sha256}; refusing to run another model"
            )
        registry.verify_model_file(folder, sha256, key=f"{name} {version}")
        return LocalModel(name, version, sha256, str(folder), manifest.to_json())
    dirs = ", ".join(str(d) for d in registry.model_dirs())
    raise registry.ModelUnavailableError(
        f"model {name} {version} is not in this worker's BTT_MODEL_DIR ({dirs})"
    )


def _url(path: str) -> str:
    return settings.BTT_HOSPITAL_URL + path


def _check(exc: Exception, what: str) -> Exception:
    """The exception to raise for a failed request."""
    if isinstance(exc, urllib.error.HTTPError):
        detail = exc.read(2000).decode("utf-8", "replace")
        if exc.code in _REFUSED:
            return OutsideRefused(f"{what}: HTTP {exc.code}: {detail}")
        return OutsideTransientError(f"{what}: HTTP {exc.code}: {detail}")
    return OutsideTransientError(f"{what}: {exc.__class__.__name__}: {exc}")


def download_study(task: OutsideTask, folder: Path, *, worker: str) -> dict[str, Path]:
    """Download and unpack the de-identified study; {SOP Instance UID (stand-in): file}."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "study.zip"
    request = urllib.request.Request(
        _url(task.study),
        headers={
            "Authorization": f"Bearer {task.token}",
            "X-BTT-Worker": worker,
            "Accept": "application/zip",
        },
    )
    try:
        with (
            urllib.request.urlopen(request, timeout=settings.BTT_OUTSIDE_HTTP_TIMEOUT) as response,
            open(archive, "wb") as handle,
        ):
            shutil.copyfileobj(response, handle, 1024 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        raise _check(exc, f"downloading outside job {task.job}") from exc
    target = folder / "study"
    target.mkdir(exist_ok=True)
    files: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                if not _FILE.match(name):
                    raise OutsideRefused(f"outside job {task.job}: unexpected file {name!r} in the download")
                path = target / name
                with bundle.open(name) as source, open(path, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1024 * 1024)
                files[name[: -len(".dcm")]] = path
    except zipfile.BadZipFile as exc:  # cut short on the way: try again
        raise OutsideTransientError(
            f"outside job {task.job}: the download is not a complete zip: {exc}"
        ) from exc
    return files


def study_from_files(files: Mapping[str, Path]) -> study_source.StudyImages:
    """The study as `services.analyse_study` takes it, from the downloaded files' headers."""
    refs = []
    study_uid = ""
    for sop, path in files.items():
        ds = dcmread(path, stop_before_pixels=True)
        study_uid = study_uid or str(ds.get("StudyInstanceUID", ""))
        number = ds.get("InstanceNumber")
        refs.append(
            (
                int(ds.get("SeriesNumber") or 0),
                study_source.InstanceRef(
                    sop_instance_uid=sop,
                    sop_class_uid=str(ds.get("SOPClassUID", "")),
                    series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                    modality=str(ds.get("Modality", "")).upper(),
                    body_part=str(ds.get("BodyPartExamined", "")).upper(),
                    instance_number=int(number) if number not in (None, "") else None,
                    transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
                    calling_ae="",
                ),
            )
        )
    if not refs:
        raise study_source.StudyNotFound("the download holds no instance")
    refs.sort(
        key=lambda item: (
            item[0],
            item[1].series_instance_uid,
            item[1].instance_number or 0,
            item[1].sop_instance_uid,
        )
    )
    return study_source.StudyImages(
        study_instance_uid=study_uid,
        patient_id="",
        issuer_of_patient_id="",
        accession_number="",
        study_date="",
        study_time="",
        calling_ae="",
        instances=[ref for _, ref in refs],
    )


def post_result(task: OutsideTask, body: dict) -> dict:
    """Post the analysis or the error to the hospital; its answer (the job's ref, state, reason)."""
    request = urllib.request.Request(
        _url(task.result),
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {task.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.BTT_OUTSIDE_HTTP_TIMEOUT) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError) as exc:
        raise _check(exc, f"posting the result of outside job {task.job}") from exc


def run_job(task: OutsideTask, *, worker: str) -> dict:
    """Run one outside job (see the module docstring); the hospital's answer to the result."""
    folder = Path(settings.BTT_OUTSIDE_WORK_DIR) / task.job
    keep = settings.BTT_OUTSIDE_KEEP_DOWNLOADS
    timer = services._Timer()
    try:
        if keep:
            folder.mkdir(parents=True, exist_ok=True)
            payload = {
                "job": task.job,
                "model": {
                    "name": task.model_name,
                    "version": task.model_version,
                    "sha256": task.model_sha256,
                },
                "study": task.study,
                "result": task.result,
                "token": task.token,
                "expires_at": task.expires_at,
            }
            (folder / "task.json").write_text(json.dumps(payload))
        try:
            runner = runtime.get_runner(find_model(task.model_name, task.model_version, task.model_sha256))
            files = download_study(task, folder, worker=worker)
            images = study_from_files(files)
            timer.lap("load")

            @contextmanager
            def opener(sop_instance_uid: str) -> Iterator[BinaryIO]:
                with open(files[sop_instance_uid], "rb") as handle:
                    yield handle

            analysis = services.analyse_study(images, runner, opener, timer=timer)
            body = {"worker": worker, "analysis": analysis.as_json()}
        except (OutsideRefused, OutsideTransientError):
            raise
        except services.PERMANENT_ERRORS as exc:
            body = {"worker": worker, "error": services._describe(exc)}
        except Exception as exc:  # a bug (or the soft time limit): tell the hospital, then fail the task
            post_result(task, {"worker": worker, "error": f"internal error: {services._describe(exc)}"})
            raise
        answer = post_result(task, body)
        logger.info("outside job %s: %s", task.job, answer.get("state"))
        return answer
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
