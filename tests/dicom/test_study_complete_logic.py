"""Study-complete detection in-process: the hook, the check, the event's delivery, recovery, and
the event module (the worker runs the same functions; see test_study_complete_events.py).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.utils import timezone

from btt_health import events
from integrations.dicom import study_complete, tasks
from integrations.dicom.models import Study
from integrations.dicom.study_complete import (
    check_completion,
    deliver_study_received,
    recover_stalled_studies,
)
from tests.dicom.test_study_complete_support import SeriesSpec, new_uid, store_instances
from tests.processes import run_manage

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """What the on-commit callbacks would publish: ("check"|"refresh", uid, cycle, countdown)."""
    calls: list[tuple] = []
    monkeypatch.setattr(
        tasks, "queue_check", lambda uid, cycle, *, countdown: calls.append(("check", uid, cycle, countdown))
    )
    monkeypatch.setattr(
        tasks,
        "queue_refresh",
        lambda uid, cycle, *, countdown, synced_up_to=None: calls.append(("refresh", uid, cycle, countdown)),
    )
    return calls


@pytest.fixture
def received() -> Iterator[list[dict]]:
    """Payloads of `study_received` emitted in this process."""
    payloads: list[dict] = []
    handler = payloads.append
    events.subscribe(events.STUDY_RECEIVED, handler)
    yield payloads
    events.unsubscribe(events.STUDY_RECEIVED, handler)


def _study(uid: str) -> Study:
    return Study.objects.get(study_instance_uid=uid)


def _age(uid: str, seconds: float) -> None:
    """Move the study's last instance `seconds` into the past."""
    Study.objects.filter(study_instance_uid=uid).update(
        last_received_at=timezone.now() - dt.timedelta(seconds=seconds)
    )


def test_one_cycle_and_one_check_per_study_however_many_instances(
    django_capture_on_commit_callbacks, queued: list[tuple], settings
) -> None:
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 5.0
    settings.BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS = 2.0
    uid = new_uid()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        store_instances(uid, [SeriesSpec(count=5)])
    assert len(callbacks) == 1
    # The quiet period, plus the step by which last_received_at may trail the latest instance.
    assert queued == [("check", uid, 0, 5.5), ("refresh", uid, 0, 2.0)]
    study = _study(uid)
    assert study.awaiting_completion
    assert study.first_received_at is not None
    assert study.last_received_at >= study.first_received_at

    before = study.last_received_at
    with django_capture_on_commit_callbacks() as callbacks:
        store_instances(uid, [SeriesSpec(count=2)], calling_ae="SECOND_AE")
    assert callbacks == [], "a study already awaiting completion queues nothing more"
    study = _study(uid)
    assert study.last_received_at >= before
    assert study.calling_ae == "SECOND_AE"


def test_the_per_instance_update_moves_last_received_at_only_by_a_step(settings) -> None:
    """Within a tenth of the quiet period of the previous value, the study row is updated in place
    (HOT: no new entries in its indexes); older, it moves to now."""
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 5.0
    assert study_complete.received_step() == dt.timedelta(seconds=0.5)
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 30.0
    assert study_complete.received_step() == dt.timedelta(seconds=1)
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    first = _study(uid).last_received_at
    hot_before = _hot_updates_of_studies()
    store_instances(uid, [SeriesSpec(count=4)])
    assert _study(uid).last_received_at == first
    assert _study(uid).number_of_instances == 5
    assert _hot_updates_of_studies() - hot_before >= 4

    _age(uid, 20)
    aged = _study(uid).last_received_at
    store_instances(uid, [SeriesSpec(count=1)])
    assert _study(uid).last_received_at > aged  # now(): this transaction's start


def _hot_updates_of_studies() -> int:
    """HOT updates of the study table in this transaction (the test's)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_get_xact_tuples_hot_updated(%s::regclass)", [Study._meta.db_table])
        return cursor.fetchone()[0]


def test_no_refresh_is_queued_when_the_quiet_period_is_shorter(
    django_capture_on_commit_callbacks, queued: list[tuple], settings
) -> None:
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 1.0
    settings.BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS = 2.0
    uid = new_uid()
    with django_capture_on_commit_callbacks(execute=True):
        store_instances(uid, [SeriesSpec(count=1)])
    assert queued == [("check", uid, 0, 1.1)]


def test_nothing_is_queued_when_the_store_transaction_rolls_back(django_capture_on_commit_callbacks) -> None:
    uid = new_uid()

    def store_then_fail() -> None:
        with transaction.atomic():
            store_instances(uid, [SeriesSpec(count=1)])
            raise RuntimeError("storage failed")

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(RuntimeError):
        store_then_fail()
    assert callbacks == []
    assert not Study.objects.filter(study_instance_uid=uid).exists()


def test_the_check_waits_for_the_quiet_period_then_completes_once(received: list[dict], settings) -> None:
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 5.0
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=2)])

    waiting = check_completion(uid, 0)
    assert waiting.outcome == "waiting"
    assert 4.5 < waiting.wait_seconds <= 5.6  # quiet period + step (0.5 s) + margin
    assert received == []

    _age(uid, 3)
    assert 2.0 < check_completion(uid, 0).wait_seconds <= 2.6

    _age(uid, 5.2)  # quiet, but within the step: the latest instance may be up to 0.5 s later
    assert check_completion(uid, 0).outcome == "waiting"

    _age(uid, 5.51)
    done = check_completion(uid, 0)
    assert (done.outcome, done.emitted) == ("completed", True)
    assert [p["completion_count"] for p in received] == [1]
    study = _study(uid)
    assert (study.awaiting_completion, study.completion_count, study.emitted_completion_count) == (
        False,
        1,
        1,
    )
    assert study.completed_at is not None

    again = check_completion(uid, 0)
    assert (again.outcome, again.emitted) == ("idle", False)
    assert deliver_study_received(uid) is False
    assert len(received) == 1


def test_a_check_of_an_older_cycle_does_not_complete_the_new_one(
    received: list[dict], django_capture_on_commit_callbacks, queued: list[tuple]
) -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    _age(uid, 60)
    assert check_completion(uid, 0).outcome == "completed"
    with django_capture_on_commit_callbacks(execute=True):
        store_instances(uid, [SeriesSpec(count=1)])
    assert queued[-2][:3] == ("check", uid, 1)
    _age(uid, 60)
    assert check_completion(uid, 0).outcome == "stale"
    assert check_completion(uid, 1).outcome == "completed"
    assert [p["completion_count"] for p in received] == [1, 2]


def test_unknown_study() -> None:
    assert check_completion("1.2.3.404").outcome == "unknown"


def test_a_failing_subscriber_leaves_the_event_due_and_a_later_check_delivers_it(
    received: list[dict],
) -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    _age(uid, 60)

    def broken(payload: dict) -> None:
        raise ValueError("subscriber down")

    events.subscribe(events.STUDY_RECEIVED, broken)
    try:
        with pytest.raises(events.EventDeliveryError) as excinfo:
            check_completion(uid, 0)
    finally:
        events.unsubscribe(events.STUDY_RECEIVED, broken)
    assert isinstance(excinfo.value.__cause__, ValueError)
    assert excinfo.value.event_id == f"study_received:{uid}:1"
    study = _study(uid)
    # The completion stays; the emission (the other handler's call included) is to be redone.
    assert (study.completion_count, study.emitted_completion_count, study.awaiting_completion) == (
        1,
        0,
        False,
    )

    retried = check_completion(uid, 0)
    assert (retried.outcome, retried.emitted) == ("idle", True)
    assert [p["event_id"] for p in received] == [f"study_received:{uid}:1"] * 2  # at least once
    assert _study(uid).emitted_completion_count == 1


def test_a_lost_check_is_replaced_by_the_next_instance(
    django_capture_on_commit_callbacks, queued: list[tuple], settings
) -> None:
    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 5.0
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])  # its on-commit publish "lost" (never run here)
    _age(uid, 5 + study_complete.STALL_GRACE.total_seconds() + 1)
    with django_capture_on_commit_callbacks(execute=True):
        store_instances(uid, [SeriesSpec(count=1)])
    assert [c[:3] for c in queued if c[0] == "check"] == [("check", uid, 0)]


def test_recovery_requeues_stalled_cycles_and_due_events(queued: list[tuple]) -> None:
    stalled, due, fine, receiving = new_uid(), new_uid(), new_uid(), new_uid()
    for uid in (stalled, due, fine, receiving):
        store_instances(uid, [SeriesSpec(count=1)])
    _age(stalled, 3600)
    Study.objects.filter(study_instance_uid=due).update(awaiting_completion=False, completion_count=1)
    Study.objects.filter(study_instance_uid=fine).update(
        awaiting_completion=False, completion_count=1, emitted_completion_count=1
    )
    assert sorted(recover_stalled_studies()) == sorted([stalled, due])
    assert sorted(c[1] for c in queued) == sorted([stalled, due])


def test_payload_of_a_study_without_a_writable_imaging_study(received: list[dict], monkeypatch) -> None:
    """A store refusal of the ImagingStudy is logged; the completion is announced anyway."""
    from integrations.dicom import imaging_study
    from integrations.fhir.outcomes import FhirError

    def refuse(study):
        raise FhirError.single(400, "invalid", "refused for the test")

    monkeypatch.setattr(imaging_study, "write_imaging_study", refuse)
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    _age(uid, 60)
    assert check_completion(uid).emitted
    assert received[0]["fhir_imaging_study_id"] == ""
    assert received[0]["fhir_service_request_ids"] == []


# --- the event module ---------------------------------------------------------------------------------


def _payload(**changes) -> dict:
    return {key: "" for key in events.STUDY_RECEIVED.payload_keys} | changes


def test_emit_calls_handlers_in_order_with_copies() -> None:
    seen: list[tuple[str, dict]] = []

    def first(payload: dict) -> None:
        seen.append(("first", payload))
        payload["modalities"] = "changed"

    def second(payload: dict) -> None:
        seen.append(("second", payload))

    events.subscribe("study_received", first)
    events.subscribe(events.STUDY_RECEIVED, first)  # twice: still called once
    events.subscribe(events.STUDY_RECEIVED)(second)
    try:
        assert events.emit("study_received", _payload(modalities=["CT"])) >= 2
    finally:
        events.unsubscribe(events.STUDY_RECEIVED, first)
        events.unsubscribe(events.STUDY_RECEIVED, second)
    assert [name for name, _ in seen] == ["first", "second"]
    assert seen[1][1]["modalities"] == ["CT"]


def test_emit_refuses_a_payload_that_is_not_the_events() -> None:
    with pytest.raises(ValueError, match=r"missing \['event_id'\], unexpected \['surprise'\]"):
        events.emit(
            events.STUDY_RECEIVED,
            {k: 1 for k in events.STUDY_RECEIVED.payload_keys - {"event_id"}} | {"surprise": 1},
        )
    with pytest.raises(ValueError, match="unknown event 'report_signed'"):
        events.emit("report_signed", {})


def test_subscribers_from_settings(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_configured_loaded", False)
    settings.BTT_EVENT_SUBSCRIBERS = ["study_received=tests.dicom.test_study_complete_support.record_event"]
    try:
        handlers = events.subscribers(events.STUDY_RECEIVED)
        assert [h.__qualname__ for h in handlers][-1] == "record_event"
    finally:
        for handler in events.subscribers(events.STUDY_RECEIVED):
            if handler.__qualname__ == "record_event":
                events.unsubscribe(events.STUDY_RECEIVED, handler)

    monkeypatch.setattr(events, "_configured_loaded", False)
    settings.BTT_EVENT_SUBSCRIBERS = ["study_received=no.such.module.handler"]
    with pytest.raises(ImproperlyConfigured, match=re.escape("cannot import 'no.such.module.handler'")):
        events.subscribers(events.STUDY_RECEIVED)
    monkeypatch.setattr(events, "_configured_loaded", False)
    settings.BTT_EVENT_SUBSCRIBERS = ["report_signed=tests.dicom.test_study_complete_support.record_event"]
    with pytest.raises(ImproperlyConfigured, match=re.escape("is not 'event=package.module.function'")):
        events.subscribers(events.STUDY_RECEIVED)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "BTT_DICOM_STUDY_QUIET_SECONDS",
            "0.1",
            "BTT_DICOM_STUDY_QUIET_SECONDS must be at least 0.5, got 0.1",
        ),
        ("BTT_DICOM_STUDY_QUIET_SECONDS", "soon", "BTT_DICOM_STUDY_QUIET_SECONDS must be a number"),
        ("BTT_DICOM_TIME_ZONE", "Mars/Olympus", "BTT_DICOM_TIME_ZONE must be an IANA time zone name"),
        ("BTT_DICOM_PATIENT_ID_SYSTEM", "mrn", "BTT_DICOM_PATIENT_ID_SYSTEM must be an absolute URI"),
        ("BTT_EVENT_SUBSCRIBERS", "handler", "BTT_EVENT_SUBSCRIBERS entries must look like"),
    ],
)
def test_bad_settings_stop_the_process(name: str, value: str, message: str) -> None:
    result = run_manage("check", env={**os.environ, name: value})
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1], result.stderr


def test_the_refresh_doubles_as_the_watchdog_of_a_lost_check(settings) -> None:
    from integrations.dicom.study_complete import refresh_while_receiving

    settings.BTT_DICOM_STUDY_QUIET_SECONDS = 5.0
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=1)])
    first = refresh_while_receiving(uid, 0, None)
    assert first.outcome == "refreshed"
    assert _study(uid).fhir_imaging_study_id
    assert refresh_while_receiving(uid, 0, first.synced_up_to).outcome == "unchanged"
    assert refresh_while_receiving(uid, 1, None).outcome == "done"
    _age(uid, 5 + study_complete.STALL_GRACE.total_seconds() + 1)
    assert refresh_while_receiving(uid, 0, first.synced_up_to).outcome == "stalled"


def test_a_broker_outage_does_not_fail_the_store(django_capture_on_commit_callbacks, monkeypatch) -> None:
    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks, "queue_check", broker_down)
    uid = new_uid()
    with django_capture_on_commit_callbacks(execute=True):
        store_instances(uid, [SeriesSpec(count=1)])  # does not raise
    assert _study(uid).awaiting_completion
    # The lost check is found again once the cycle is overdue.
    requeued: list[str] = []
    monkeypatch.setattr(tasks, "queue_check", lambda uid, cycle, *, countdown: requeued.append(uid))
    _age(uid, 3600)
    assert recover_stalled_studies() == [uid]
    assert requeued == [uid]
