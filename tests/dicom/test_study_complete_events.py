"""Study-complete detection end to end: index rows written as the C-STORE path writes them, a real
Celery worker process (its own queue, quiet period 1.5 s, ImagingStudy refresh 0.5 s) on the
PostgreSQL test database and the Redis test broker, and `study_received` events recorded by a
subscriber in that worker (tests/dicom/test_study_complete_support.py).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from integrations.dicom.models import Study
from integrations.dicom.study_complete import recover_stalled_studies
from integrations.dicom.tasks import check_study_complete
from integrations.fhir import store
from tests.dicom.test_study_complete_support import (
    SeriesSpec,
    StudyCompleteWorker,
    new_uid,
    start_study_complete_worker,
    store_instances,
)
from tests.processes import ProcessLauncher

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def worker(
    process_launcher: ProcessLauncher,
    test_database_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StudyCompleteWorker]:
    events = tmp_path_factory.mktemp("study-events") / "events.jsonl"
    started = start_study_complete_worker(process_launcher, test_database_env, events, quiet=1.5, refresh=0.5)
    yield started
    started.process.stop()


@pytest.fixture
def receiving(worker: StudyCompleteWorker, settings) -> StudyCompleteWorker:
    """This process schedules as the worker runs: its queue, quiet period and refresh interval."""
    for name, value in worker.settings_overrides().items():
        setattr(settings, name, value)
    return worker


def _parse(moment: str) -> dt.datetime:
    return dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))


def _imaging_study(uid: str) -> dict:
    study = Study.objects.get(study_instance_uid=uid)
    return store.read_resource("ImagingStudy", study.fhir_imaging_study_id).as_dict()


def _ct_files(folder: Path, study_uid: str, count: int, *, accession: str) -> list[Path]:
    """`count` instances of one CT series of `study_uid`, made from pydicom's CT_small.dcm."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = new_uid()
    paths = []
    for number in range(1, count + 1):
        ds = copy.deepcopy(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid()
        ds.InstanceNumber, ds.AccessionNumber = number, accession
        ds.PatientID, ds.IssuerOfPatientID = "CT-SMALL-1", "1.2.826.0.1.3680043.9.9"
        ds.BodyPartExamined = "HEAD"
        path = folder / f"{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_instances_stored_through_the_store_path_complete_the_study(
    receiving: StudyCompleteWorker, tmp_path: Path, settings
) -> None:
    """The real ingest path (`services.store_instance`, what the C-STORE SCP and STOW-RS call)."""
    services = pytest.importorskip("integrations.dicom.services")
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "store"
    uid = new_uid()
    for path in _ct_files(tmp_path, uid, 3, accession="ACC-CT-SMALL"):
        assert services.store_instance(path=path, calling_ae="CTSMALL").outcome == "stored"

    (event,) = receiving.wait_for_events(uid, 1)

    assert (event["number_of_series"], event["number_of_instances"]) == (1, 3)
    assert (event["patient_id"], event["issuer_of_patient_id"]) == ("CT-SMALL-1", "1.2.826.0.1.3680043.9.9")
    assert (event["calling_ae"], event["accession_number"]) == ("CTSMALL", "ACC-CT-SMALL")
    assert event["modalities"] == ["CT"]
    imaging = _imaging_study(uid)
    assert imaging["numberOfInstances"] == 3
    assert imaging["series"][0]["bodySite"]["code"] == "69536005"
    patient = store.read_resource("Patient", event["fhir_patient_id"]).as_dict()
    assert patient["identifier"] == [{"system": "urn:oid:1.2.826.0.1.3680043.9.9", "value": "CT-SMALL-1"}]
    receiving.assert_no_more_events(uid, 1)


def test_one_event_per_completed_study(receiving: StudyCompleteWorker) -> None:
    patient = store.create_resource(
        {"resourceType": "Patient", "identifier": [{"system": "urn:btt-health:patient-id", "value": "EV-1"}]}
    ).stored.logical_id
    order = store.create_resource(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "identifier": [{"value": "ACC-EV-1"}],
            "subject": {"reference": f"Patient/{patient}"},
        }
    ).stored.logical_id
    uid = new_uid()
    store_instances(
        uid, [SeriesSpec(count=3)], patient_id="EV-1", accession="ACC-EV-1", calling_ae="CT_SCANNER"
    )

    (event,) = receiving.wait_for_events(uid, 1)

    study = Study.objects.get(study_instance_uid=uid)
    assert event["event_id"] == f"study_received:{uid}:1"
    assert event["completion_count"] == 1
    assert (event["number_of_series"], event["number_of_instances"]) == (1, 3)
    assert event["modalities"] == ["CT"]
    assert event["body_parts"] == ["CHEST"]
    assert event["sop_class_uids"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert (event["patient_id"], event["issuer_of_patient_id"]) == ("EV-1", "")
    assert event["accession_number"] == "ACC-EV-1"
    assert event["calling_ae"] == "CT_SCANNER"
    assert event["fhir_patient_id"] == patient
    assert event["fhir_service_request_ids"] == [order]
    assert event["fhir_imaging_study_id"] == study.fhir_imaging_study_id != ""
    assert _parse(event["completed_at"]) - _parse(event["last_received_at"]) >= dt.timedelta(
        seconds=receiving.quiet
    )
    imaging = _imaging_study(uid)
    assert imaging["numberOfInstances"] == 3
    assert imaging["subject"] == {"reference": f"Patient/{patient}"}
    assert imaging["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]
    assert (study.awaiting_completion, study.completion_count, study.emitted_completion_count) == (
        False,
        1,
        1,
    )
    receiving.assert_no_more_events(uid, 1)


def test_instances_over_several_associations_with_short_gaps_make_one_event(
    receiving: StudyCompleteWorker,
) -> None:
    uid = new_uid()
    spec = SeriesSpec(count=2)
    for association in range(4):
        store_instances(uid, [spec], first_number=2 * association + 1, calling_ae=f"SENDER{association}")
        time.sleep(0.3 * receiving.quiet)
        assert receiving.events(uid) == [], "completed while instances kept arriving within the quiet period"

    (event,) = receiving.wait_for_events(uid, 1)

    assert event["number_of_instances"] == 8
    assert event["calling_ae"] == "SENDER3"
    assert _parse(event["completed_at"]) - _parse(event["last_received_at"]) >= dt.timedelta(
        seconds=receiving.quiet
    )
    assert _imaging_study(uid)["numberOfInstances"] == 8
    receiving.assert_no_more_events(uid, 1)


def test_more_instances_after_completion_make_a_second_event(receiving: StudyCompleteWorker) -> None:
    uid = new_uid()
    spec = SeriesSpec(count=2)
    store_instances(uid, [spec])
    (first,) = receiving.wait_for_events(uid, 1)
    version_after_first = store.read_resource("ImagingStudy", first["fhir_imaging_study_id"]).version_id

    spec.count = 3
    store_instances(
        uid, [spec, SeriesSpec(modality="CT", body_part="ABDOMEN", count=1, number=2)], first_number=3
    )
    events = receiving.wait_for_events(uid, 2)

    second = events[1]
    assert second["completion_count"] == 2
    assert second["event_id"] == f"study_received:{uid}:2"
    assert (second["number_of_series"], second["number_of_instances"]) == (2, 6)
    assert second["body_parts"] == ["ABDOMEN", "CHEST"]
    assert second["fhir_imaging_study_id"] == first["fhir_imaging_study_id"]
    current = store.read_resource("ImagingStudy", second["fhir_imaging_study_id"])
    assert current.version_id > version_after_first
    assert current.as_dict()["numberOfInstances"] == 6
    receiving.assert_no_more_events(uid, 2)


def test_two_studies_complete_independently(receiving: StudyCompleteWorker) -> None:
    quick, slow = new_uid(), new_uid()
    slow_spec = SeriesSpec(count=1)
    store_instances(quick, [SeriesSpec(count=2)], patient_id="TWO-A")
    store_instances(slow, [slow_spec], patient_id="TWO-B")
    for number in range(2, 10):  # the slow study keeps receiving for 2.4 quiet periods
        time.sleep(0.3 * receiving.quiet)
        store_instances(slow, [slow_spec], patient_id="TWO-B", first_number=number)

    assert len(receiving.events(quick)) == 1, "the first study completes while the second is still received"
    assert receiving.events(slow) == []
    (slow_event,) = receiving.wait_for_events(slow, 1)
    (quick_event,) = receiving.events(quick)
    assert (quick_event["number_of_instances"], slow_event["number_of_instances"]) == (2, 9)
    assert quick_event["fhir_imaging_study_id"] != slow_event["fhir_imaging_study_id"]
    assert quick_event["fhir_patient_id"] != slow_event["fhir_patient_id"]
    receiving.assert_no_more_events(quick, 1, settle=0)
    receiving.assert_no_more_events(slow, 1)


def test_rerunning_the_check_is_idempotent(receiving: StudyCompleteWorker) -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=2)])
    (event,) = receiving.wait_for_events(uid, 1)
    version = store.read_resource("ImagingStudy", event["fhir_imaging_study_id"]).version_id

    # The same task delivered again (acks_late redelivery), and a check without a cycle.
    results = [
        check_study_complete.apply_async(args=[uid, 0], queue=receiving.queue),
        check_study_complete.apply_async(args=[uid, None], queue=receiving.queue),
    ]
    for result in results:
        receiving.process.wait_for_log(
            rf"Task dicom\.check_study_complete\[{re.escape(result.id)}\] succeeded .*'outcome': 'idle', 'emitted': False",
            timeout=30,
        )

    receiving.assert_no_more_events(uid, 1, settle=0.5)
    assert store.read_resource("ImagingStudy", event["fhir_imaging_study_id"]).version_id == version
    study = Study.objects.get(study_instance_uid=uid)
    assert (study.completion_count, study.emitted_completion_count) == (1, 1)


def test_an_event_left_undelivered_by_a_crash_is_delivered_once(receiving: StudyCompleteWorker) -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    receiving.wait_for_events(uid, 1)
    # As if a worker died after committing completion 2 and before emitting its event.
    Study.objects.filter(study_instance_uid=uid).update(completion_count=2)

    assert uid in recover_stalled_studies()

    events = receiving.wait_for_events(uid, 2)
    assert events[1]["completion_count"] == 2
    receiving.assert_no_more_events(uid, 2)
    assert Study.objects.get(study_instance_uid=uid).emitted_completion_count == 2


def test_imaging_study_is_kept_current_while_receiving_with_few_versions(
    receiving: StudyCompleteWorker,
) -> None:
    uid = new_uid()
    spec = SeriesSpec(count=1)
    total = 14
    seen_before_completion: list[int] = []
    started = time.monotonic()
    for number in range(1, total + 1):  # an instance every 0.25 s, half the refresh interval
        store_instances(uid, [spec], first_number=number)
        time.sleep(0.25)
        study = Study.objects.get(study_instance_uid=uid)
        if study.fhir_imaging_study_id and not receiving.events(uid):
            seen_before_completion.append(_imaging_study(uid)["numberOfInstances"])
    receiving_seconds = time.monotonic() - started

    (event,) = receiving.wait_for_events(uid, 1)

    assert seen_before_completion, "the ImagingStudy should exist while the study is still received"
    assert 0 < seen_before_completion[0] < total
    assert seen_before_completion == sorted(seen_before_completion)
    current = store.read_resource("ImagingStudy", event["fhir_imaging_study_id"])
    assert current.as_dict()["numberOfInstances"] == total
    # At most one version per refresh interval while receiving, plus the completion's: not one per
    # instance.
    assert current.version_id <= receiving_seconds / receiving.refresh + 2, (
        current.version_id,
        receiving_seconds,
    )
    assert current.version_id < total
