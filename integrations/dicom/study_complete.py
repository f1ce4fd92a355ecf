"""Study-complete detection: a sliding quiet period per study, and the "study received" event.

DICOM has no "end of study" message: a study is complete when none of its instances arrived for
`BTT_DICOM_STUDY_QUIET_SECONDS` (default 5 s), however many associations (and SCP processes) it
came over. The state lives on the `Study` row, so every process sees the same:

- `last_received_at`: when the latest instance was stored (database clock, so the SCP machines'
  and the workers' clocks need not agree), to within `received_step()` (a tenth of the quiet
  period, at most 1 s): the per-instance update leaves it alone when it is that recent, so the
  row is rewritten in place (a PostgreSQL HOT update) instead of adding an entry to each of the
  study table's eight indexes for every instance, which cost a fifth of the database's CPU per
  stored instance. Completion waits for the quiet period plus that step, so it never comes early;
- `awaiting_completion`: a completion check is scheduled for the current cycle;
- `completion_count`: completions so far; `completed_at`: the latest;
- `emitted_completion_count`: the completion whose `study_received` event has been delivered.

Flow:

1. `instance_stored(instance)` is called by the C-STORE / STOW path inside the transaction that
   writes the instance row. It moves `last_received_at` forward and, when the study was not
   awaiting completion, sets `awaiting_completion` and queues (on commit) one
   `check_study_complete(uid, cycle)` task with `countdown=completion_wait()`, plus one debounced
   `refresh_imaging_study` (see `tasks.py`). Later instances of the same cycle only move
   `last_received_at`: one task per cycle, not per instance.
2. `check_completion(uid, cycle)` (the task's body) locks the Study row. While
   `last_received_at + quiet` is still ahead it re-queues the task for the time left. Otherwise it
   marks the completion (`completed_at`, `completion_count += 1`, `awaiting_completion` off) and
   commits, then `deliver_study_received(uid)`.
3. `deliver_study_received(uid)` brings the ImagingStudy up to date and emits `study_received`
   (`btt_health.events`) in one transaction, which also records `emitted_completion_count`. A
   failure (database, a subscriber) rolls all of it back and the task retries; a crash in between
   leaves the completion marked but the event due, and the redelivered task (acks_late) or the
   recovery sweep delivers it. Exactly one event per completion in normal operation; at least one
   when processes crash (subscribers key their work on `event_id`).

More instances after a completion start a new cycle (step 1 again), which ends in a second event
with `completion_count` 2. Instances still in flight when the quiet period ends (a sender that
paused longer than it) likewise make a new cycle.

Recovery: a check lost between commit and publish (broker down) would leave a study awaiting for
ever; `recover_stalled_studies()` re-queues checks for studies awaiting well past their quiet period
and for completions whose event is still due. Workers run it when they start (`tasks.py`), and
`instance_stored` re-queues a check when it finds a stalled cycle.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce, Greatest, Now
from django.utils import timezone

from btt_health import events
from integrations.dicom import imaging_study
from integrations.dicom.models import Instance, Series, Study
from integrations.fhir.outcomes import FhirError

logger = logging.getLogger(__name__)

# A cycle whose check has not run this long after its quiet period ended is taken as lost.
STALL_GRACE = dt.timedelta(seconds=60)
# Re-queued checks wake a little after the quiet period ends, not a hair before it.
_MARGIN_SECONDS = 0.05


def quiet_period() -> dt.timedelta:
    return dt.timedelta(seconds=settings.BTT_DICOM_STUDY_QUIET_SECONDS)


def received_step() -> dt.timedelta:
    """How far `last_received_at` may trail the latest instance (module docstring)."""
    return min(quiet_period() / 10, dt.timedelta(seconds=1))


def completion_wait() -> dt.timedelta:
    """How long after `last_received_at` a study is complete: the quiet period, plus the step by
    which `last_received_at` may trail the latest instance."""
    return quiet_period() + received_step()


# --- 1. the hook of the store path ------------------------------------------------------------------


def instance_stored(instance: Instance) -> None:
    """Note that `instance` was stored; call inside the transaction that wrote its row.

    Moves the study's `last_received_at` to now (database time) and, when the study was not
    awaiting completion (or its check looks lost), marks it awaiting and queues, on commit, one
    `check_study_complete` (countdown: `completion_wait()`) and one `refresh_imaging_study`. Takes
    the Study row's lock until the transaction ends (the store path updates that row anyway).
    Records the instance's calling AE on the study. Nothing is queued if the transaction rolls back.
    """
    study_id = _study_pk(instance)
    if transaction.get_connection().vendor == "postgresql":
        started_cycle = _touch_study_postgresql(study_id, instance.calling_ae)
        if started_cycle is not None:
            _start_cycle(*started_cycle)
        return
    updates = {"last_received_at": Greatest(Coalesce(F("last_received_at"), Now()), Now())}
    if instance.calling_ae:
        updates["calling_ae"] = instance.calling_ae
    stalled_before = Now() - (quiet_period() + STALL_GRACE)
    started = Study.objects.filter(
        Q(awaiting_completion=False) | Q(last_received_at__lt=stalled_before), pk=study_id
    ).update(awaiting_completion=True, first_received_at=Coalesce(F("first_received_at"), Now()), **updates)
    if not started:
        Study.objects.filter(pk=study_id).update(**updates)
        return
    _start_cycle(
        *Study.objects.filter(pk=study_id).values_list("study_instance_uid", "completion_count").get()
    )


def _start_cycle(uid: str, cycle: int) -> None:
    logger.debug("study %s: completion cycle %d started", uid, cycle + 1)
    _schedule_on_commit(uid, cycle)


# The ORM path above takes two statements per instance (an UPDATE that starts a cycle, else one
# that only moves last_received_at); on PostgreSQL the per-instance update is one statement that
# reads the row's previous state under its lock. The store path's own statement
# (`services._insert_into_known_series`) does the same update with the same fragments, saving a
# round trip per instance. Parameters: %(ae)s the calling AE, %(stall)s `quiet_period() + STALL_GRACE`,
# %(step)s `received_step()`.
def cycle_starts_sql(row: str) -> str:
    """SQL: whether an instance stored now starts a new cycle, given the Study row `row` as it
    was before the update (not awaiting completion, or its check looks lost)."""
    return f"(NOT {row}.awaiting_completion OR {row}.last_received_at < now() - %(stall)s::interval)"


def touch_study_set_sql(starts: str) -> str:
    """SQL: the SET list of the per-instance Study update; `starts` is `cycle_starts_sql` of the
    previous row state (the SET expressions read that state too)."""
    return f"""last_received_at = CASE
            WHEN last_received_at > now() - %(step)s::interval AND NOT {starts} THEN last_received_at
            ELSE GREATEST(COALESCE(last_received_at, now()), now()) END,
        calling_ae = CASE WHEN %(ae)s <> '' THEN %(ae)s ELSE calling_ae END,
        first_received_at = CASE WHEN {starts} THEN COALESCE(first_received_at, now())
                                 ELSE first_received_at END,
        awaiting_completion = awaiting_completion OR {starts}"""


def touch_params(calling_ae: str) -> dict:
    """The parameters of `cycle_starts_sql` and `touch_study_set_sql`."""
    return {"ae": calling_ae or "", "stall": quiet_period() + STALL_GRACE, "step": received_step()}


_TOUCH_STUDY_SQL = f"""
WITH before AS (
    SELECT id, {cycle_starts_sql("s")} AS starts FROM {Study._meta.db_table} s WHERE id = %(id)s FOR UPDATE
)
UPDATE {Study._meta.db_table} SET {touch_study_set_sql("before.starts")}
FROM before WHERE {Study._meta.db_table}.id = before.id
RETURNING before.starts, study_instance_uid, completion_count
"""


def _touch_study_postgresql(study_id: int, calling_ae: str) -> tuple[str, int] | None:
    """`instance_stored` in one statement; (uid, completion_count) when a new cycle started."""
    with connection.cursor() as cursor:
        cursor.execute(_TOUCH_STUDY_SQL, {"id": study_id, **touch_params(calling_ae)})
        starts, uid, cycle = cursor.fetchone()
    return (uid, cycle) if starts else None


def instance_touched(study_instance_uid: str, completion_count: int, started_cycle: bool) -> None:
    """What `instance_stored` does after its update, for a store path that did the update itself
    (with `touch_study_set_sql`): queue the cycle's checks on commit when it started one."""
    if started_cycle:
        _start_cycle(study_instance_uid, completion_count)


def _study_pk(instance: Instance) -> int:
    series = instance.series if Instance.series.is_cached(instance) else None
    if series is not None:
        return series.study_id
    return Series.objects.values_list("study_id", flat=True).get(pk=instance.series_id)


def _schedule_on_commit(uid: str, cycle: int) -> None:
    from integrations.dicom import tasks

    quiet = settings.BTT_DICOM_STUDY_QUIET_SECONDS
    refresh = settings.BTT_DICOM_IMAGING_STUDY_REFRESH_SECONDS

    def queue() -> None:
        tasks.queue_check(uid, cycle, countdown=completion_wait().total_seconds())
        if refresh < quiet:  # otherwise completion comes first and writes it anyway
            tasks.queue_refresh(uid, cycle, countdown=refresh)

    # robust: a broker that is down must not turn a stored, committed instance into a failure;
    # the lost check is re-queued by the next instance of the study or the recovery sweep.
    transaction.on_commit(queue, robust=True)


# --- 2. the completion check --------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """What a check did: `outcome` is `completed`, `waiting` (re-check after `wait_seconds`),
    `stale` (a check of an older cycle), `idle` (nothing awaited) or `unknown` (no such study);
    `emitted` whether it delivered a `study_received` event."""

    outcome: str
    wait_seconds: float = 0.0
    emitted: bool = False


def check_completion(study_instance_uid: str, cycle: int | None = None) -> CheckResult:
    """The body of `check_study_complete`: complete the study if its quiet period has passed.

    Not atomic as a whole: the completion commits in one transaction, then the event is delivered
    in another (`deliver_study_received`), so a failed delivery never undoes a completion. Safe to
    run any number of times and concurrently: the Study row lock decides, and a completion whose
    event was delivered is never announced again. `cycle` is the `completion_count` the check was
    queued for; a check of an older cycle only delivers a due event. When the outcome is `waiting`
    the caller re-queues the check after `wait_seconds`.
    """
    with transaction.atomic():
        row = (
            Study.objects.select_for_update()
            .annotate(db_now=Now())
            .filter(study_instance_uid=study_instance_uid)
            .values("pk", "awaiting_completion", "last_received_at", "completion_count", "db_now")
            .first()
        )
        if row is None:
            return CheckResult("unknown")
        if not row["awaiting_completion"]:
            result = CheckResult("idle")
        elif cycle is not None and cycle != row["completion_count"]:
            result = CheckResult("stale")
        else:
            due = (row["last_received_at"] or row["db_now"]) + completion_wait()
            if due > row["db_now"]:
                return CheckResult(
                    "waiting", wait_seconds=(due - row["db_now"]).total_seconds() + _MARGIN_SECONDS
                )
            Study.objects.filter(pk=row["pk"]).update(
                awaiting_completion=False,
                completed_at=row["db_now"],
                completion_count=F("completion_count") + 1,
            )
            logger.info("study %s complete (completion %d)", study_instance_uid, row["completion_count"] + 1)
            result = CheckResult("completed")
    emitted = deliver_study_received(study_instance_uid)
    return CheckResult(result.outcome, emitted=emitted)


# --- 3. the event --------------------------------------------------------------------------------------


@transaction.atomic
def deliver_study_received(study_instance_uid: str) -> bool:
    """Emit `study_received` for the study's latest completion if it is still due; whether it did.

    Atomic: brings the ImagingStudy up to date (`imaging_study.write_imaging_study`), calls the
    event's subscribers, and records `emitted_completion_count`, all or nothing. Serialised per
    study with the ImagingStudy writes. A failing ImagingStudy write (FhirError: content the store
    refuses) is logged and the event still goes out, with the ImagingStudy id known so far.
    Raises `events.EventDeliveryError` when a subscriber fails and database errors as they come.
    """
    imaging_study.lock_study(study_instance_uid)
    study = Study.objects.select_related("patient").filter(study_instance_uid=study_instance_uid).first()
    if study is None or study.emitted_completion_count >= study.completion_count:
        return False
    sync = None
    try:
        with transaction.atomic():
            sync = imaging_study.write_imaging_study(study)
    except FhirError as exc:
        logger.error("study %s: the FHIR store refused its ImagingStudy: %s", study_instance_uid, exc)
    study.refresh_from_db()
    payload = study_received_payload(study, sync)
    events.emit(events.STUDY_RECEIVED, payload)
    Study.objects.filter(pk=study.pk).update(emitted_completion_count=study.completion_count)
    logger.info("study %s: %s emitted", study_instance_uid, payload["event_id"])
    return True


def study_received_payload(study: Study, sync: imaging_study.ImagingStudySync | None) -> dict:
    """The `study_received` payload (see `btt_health.events`) for the study's latest completion."""
    series = list(Series.objects.filter(study_id=study.pk).values_list("modality", "body_part_examined"))
    instances = Instance.objects.filter(series__study_id=study.pk)
    return {
        "event_id": f"{events.STUDY_RECEIVED.name}:{study.study_instance_uid}:{study.completion_count}",
        "study_instance_uid": study.study_instance_uid,
        "patient_id": study.patient.patient_id,
        "issuer_of_patient_id": study.patient.issuer,
        "fhir_patient_id": sync.patient_id if sync else study.patient.fhir_patient_id,
        "accession_number": study.accession_number,
        "modalities": sorted({m.strip() for m, _ in series if m.strip()}),
        "body_parts": sorted({b.strip() for _, b in series if b.strip()}),
        "sop_class_uids": sorted(set(instances.values_list("sop_class_uid", flat=True).distinct())),
        "number_of_series": len(series),
        "number_of_instances": instances.count(),
        "calling_ae": study.calling_ae,
        "completion_count": study.completion_count,
        "first_received_at": _iso(study.first_received_at),
        "last_received_at": _iso(study.last_received_at),
        "completed_at": _iso(study.completed_at),
        "fhir_imaging_study_id": sync.imaging_study_id if sync else study.fhir_imaging_study_id,
        "fhir_service_request_ids": list(sync.service_request_ids) if sync else [],
    }


def _iso(moment: dt.datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the ImagingStudy while receiving ---------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh did: `outcome` `refreshed`, `unchanged` (nothing arrived since `synced_up_to`),
    `done` (the cycle ended: completion writes the ImagingStudy) or `stalled` (the cycle outlived
    its quiet period by `STALL_GRACE`: its check was lost; the caller queues one and stops);
    `synced_up_to` is the `last_received_at` the ImagingStudy now reflects, for the next refresh."""

    outcome: str
    synced_up_to: str | None = None


def refresh_while_receiving(study_instance_uid: str, cycle: int, synced_up_to: str | None) -> RefreshResult:
    """The body of `refresh_imaging_study`: rewrite the ImagingStudy of a study being received.

    Atomic. While the study is in cycle `cycle` and still awaiting completion, writes the
    ImagingStudy if instances arrived since the refresh that reflected `synced_up_to` (the caller
    re-queues a refresh while the outcome is `refreshed` or `unchanged`). Does not lock the Study
    row, so the C-STORE path is not held up. Doubles as the cycle's watchdog (`stalled`).
    """
    with transaction.atomic():
        row = (
            Study.objects.filter(study_instance_uid=study_instance_uid)
            .annotate(db_now=Now())
            .values("pk", "awaiting_completion", "completion_count", "last_received_at", "db_now")
            .first()
        )
        if row is None or not row["awaiting_completion"] or row["completion_count"] != cycle:
            return RefreshResult("done")
        if row["last_received_at"] and row["last_received_at"] + quiet_period() + STALL_GRACE < row["db_now"]:
            logger.warning(
                "study %s: completion check of cycle %d looks lost; queueing one",
                study_instance_uid,
                cycle + 1,
            )
            return RefreshResult("stalled")
        last = _iso(row["last_received_at"])
        if synced_up_to is not None and last == synced_up_to:
            return RefreshResult("unchanged", synced_up_to)
        try:
            with transaction.atomic():
                imaging_study.write_imaging_study(Study(pk=row["pk"], study_instance_uid=study_instance_uid))
        except FhirError as exc:
            logger.error("study %s: the FHIR store refused its ImagingStudy: %s", study_instance_uid, exc)
        return RefreshResult("refreshed", last)


# --- recovery ------------------------------------------------------------------------------------------


def recover_stalled_studies() -> list[str]:
    """Queue a check for every study whose cycle looks lost or whose event is still due; their UIDs.

    A cycle looks lost when the study has been awaiting completion for longer than the quiet
    period plus `STALL_GRACE` since its last instance (a queued check would have ended it). Safe
    to run at any time: duplicate checks are harmless.
    """
    stalled_before = timezone.now() - (quiet_period() + STALL_GRACE)
    rows = list(
        Study.objects.filter(
            Q(awaiting_completion=True, last_received_at__lt=stalled_before)
            | Q(emitted_completion_count__lt=F("completion_count"), awaiting_completion=False)
        ).values_list("study_instance_uid", "completion_count")[:10000]
    )
    from integrations.dicom import tasks

    for uid, cycle in rows:
        tasks.queue_check(uid, cycle, countdown=0)
    if rows:
        logger.warning("re-queued completion checks for %d stalled or undelivered studies", len(rows))
    return [uid for uid, _ in rows]
