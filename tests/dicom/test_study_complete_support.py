"""Helpers (no tests) for the study-complete and ImagingStudy tests.

- `store_instances(...)`: index rows (DicomPatient, Study, Series, Instance) written the way the
  C-STORE path writes them, each followed by `study_complete.instance_stored` in the same
  transaction, so the tests drive completion exactly as the SCP will.
- `record_event`: a `study_received` subscriber for the worker process (named in its
  `BTT_EVENT_SUBSCRIBERS`) that appends each payload as a JSON line to `$BTT_TEST_EVENT_LOG`.
- `StudyCompleteWorker` and `start_study_complete_worker`: a real Celery worker on the test
  database consuming a queue of its own, with a short quiet period, so its tasks never mix
  with another worker's (the session's `celery_worker_process` runs the default quiet period).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from integrations.dicom.models import DicomPatient, Instance, Series, Study
from integrations.dicom.study_complete import instance_stored
from tests.processes import WORKER_READY, ManagedProcess, ProcessLauncher, child_env, wait_until, worker_argv

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EVENT_LOG_ENV = "BTT_TEST_EVENT_LOG"
RECORDER = "study_received=tests.dicom.test_study_complete_support.record_event"


def new_uid() -> str:
    """A fresh DICOM UID (2.25 + a UUID as integer)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class SeriesSpec:
    modality: str = "CT"
    body_part: str = "CHEST"
    count: int = 3
    number: int | None = 1
    description: str = "Axial"
    sop_class_uid: str = CT_IMAGE_STORAGE
    uid: str = field(default_factory=new_uid)
    tags: dict = field(default_factory=dict)


def store_instances(
    study_uid: str,
    series: Iterable[SeriesSpec],
    *,
    patient_id: str = "PAT-1",
    issuer: str = "",
    patient_name: str = "Doe^Jane",
    birth_date: str = "19800102",
    sex: str = "F",
    accession: str = "",
    study_date: str = "20240305",
    study_time: str = "101500",
    description: str = "CT Chest",
    calling_ae: str = "MODALITY1",
    study_tags: dict | None = None,
    patient_tags: dict | None = None,
    first_number: int = 1,
) -> list[Instance]:
    """Index `count` new instances per series of `study_uid` in one transaction (one "association"),
    calling `instance_stored` after each; the rows are committed when it returns (unless the
    caller holds a transaction)."""
    created: list[Instance] = []
    with transaction.atomic():
        patient, _ = DicomPatient.objects.get_or_create(
            patient_id=patient_id,
            issuer=issuer,
            defaults={
                "patient_name": patient_name,
                "birth_date": birth_date,
                "sex": sex,
                "tags": patient_tags or {},
            },
        )
        study, _ = Study.objects.get_or_create(
            study_instance_uid=study_uid,
            defaults={
                "patient": patient,
                "study_date": study_date,
                "study_time": study_time,
                "accession_number": accession,
                "study_description": description,
                "referring_physician_name": "Smith^John^^Dr",
                "tags": study_tags or {},
                "calling_ae": calling_ae,
            },
        )
        for spec in series:
            row, made = Series.objects.get_or_create(
                series_instance_uid=spec.uid,
                defaults={
                    "study": study,
                    "modality": spec.modality,
                    "series_number": spec.number,
                    "series_description": spec.description,
                    "body_part_examined": spec.body_part,
                    "tags": spec.tags,
                },
            )
            if made:
                Study.objects.filter(pk=study.pk).update(number_of_series=F("number_of_series") + 1)
            for number in range(first_number, first_number + spec.count):
                instance = Instance.objects.create(
                    sop_instance_uid=new_uid(),
                    series=row,
                    sop_class_uid=spec.sop_class_uid,
                    instance_number=number,
                    transfer_syntax_uid=EXPLICIT_VR_LE,
                    storage_key=f"test/{uuid.uuid4().hex}.dcm",
                    file_size=1024,
                    received_at=timezone.now(),
                    calling_ae=calling_ae,
                )
                Series.objects.filter(pk=row.pk).update(number_of_instances=F("number_of_instances") + 1)
                Study.objects.filter(pk=study.pk).update(number_of_instances=F("number_of_instances") + 1)
                instance_stored(instance)
                created.append(instance)
    return created


# --- the subscriber the worker runs ------------------------------------------------------------------


def record_event(payload: dict) -> None:
    """Append the payload as one JSON line to `$BTT_TEST_EVENT_LOG` (nothing when unset) once the
    emission commits, as a real subscriber queues its work: a test that sees the line also sees
    what the emission committed (the ImagingStudy, `emitted_completion_count`)."""
    path = os.environ.get(EVENT_LOG_ENV)
    if not path:
        return
    transaction.on_commit(lambda: _append(path, payload))


def _append(path: str, payload: dict) -> None:
    line = (json.dumps(payload, sort_keys=True) + "\n").encode()
    with open(path, "ab") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(line)
        log.flush()
        os.fsync(log.fileno())


def read_events(path: Path, study_uid: str | None = None) -> list[dict]:
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if study_uid is None or e["study_instance_uid"] == study_uid]


# --- a worker of its own -------------------------------------------------------------------------------


@dataclass
class StudyCompleteWorker:
    process: ManagedProcess
    queue: str
    event_log: Path
    quiet: float
    refresh: float

    def settings_overrides(self) -> dict:
        """What the test process must set so it schedules like this worker runs."""
        return {
            "BTT_DICOM_TASK_QUEUE": self.queue,
            "BTT_DICOM_STUDY_QUIET_SECONDS": self.quiet,
            "BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS": self.refresh,
        }

    def events(self, study_uid: str | None = None) -> list[dict]:
        return read_events(self.event_log, study_uid)

    def wait_for_events(self, study_uid: str, count: int, timeout: float = 30.0) -> list[dict]:
        wait_until(
            lambda: len(self.events(study_uid)) >= count,
            timeout,
            f"{count} study_received event(s) for {study_uid} (worker log: {self.process.log_path})",
        )
        return self.events(study_uid)

    def assert_no_more_events(self, study_uid: str, count: int, settle: float | None = None) -> None:
        """Wait a few quiet periods and check that exactly `count` events came for the study."""
        time.sleep(settle if settle is not None else 3 * self.quiet)
        assert len(self.events(study_uid)) == count, self.events(study_uid)


def start_study_complete_worker(
    launcher: ProcessLauncher,
    base_env: dict[str, str],
    event_log: Path,
    *,
    quiet: float = 1.0,
    refresh: float = 0.5,
    name: str = "study-complete-worker",
    extra_env: dict[str, str | None] | None = None,
) -> StudyCompleteWorker:
    """A ready Celery worker consuming a fresh queue, with `quiet`/`refresh` seconds and the recorder."""
    queue = f"pytest-dicom-{uuid.uuid4().hex[:10]}"
    env = child_env(
        base_env,
        {
            "BTT_DICOM_TASK_QUEUE": queue,
            "BTT_DICOM_STUDY_QUIET_SECONDS": str(quiet),
            "BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS": str(refresh),
            "BTT_EVENT_SUBSCRIBERS": RECORDER,
            EVENT_LOG_ENV: str(event_log),
            **(extra_env or {}),
        },
    )
    process = launcher.start(name, worker_argv([queue], nodename=name), env)
    process.wait_for_log(WORKER_READY)
    return StudyCompleteWorker(process, queue, event_log, quiet, refresh)
