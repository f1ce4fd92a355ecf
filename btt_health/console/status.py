"""The admin status page's numbers: ingest rate, queue depths, workers, AI jobs, recent errors,
and per-minute series of the last hour drawn as small inline SVG bar charts (no JavaScript).

Read only. Sources: the DICOM index (instances received), the inference jobs, the worker
heartbeats and queue samples the workers write (`heartbeat.py`), and the broker itself for the
queue depths now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Max
from django.db.models.functions import TruncMinute
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from ai_pipeline.models import InferenceJob
from btt_health.console.models import QueueSample, WorkerHeartbeat
from integrations.dicom.models import Instance, Study

logger = logging.getLogger(__name__)

MINUTES = 60


@dataclass
class Chart:
    title: str
    values: list[int]  # one per minute, oldest first
    unit: str

    @property
    def total(self) -> int:
        return sum(self.values)

    @property
    def peak(self) -> int:
        return max(self.values, default=0)

    @property
    def svg(self) -> SafeString:
        return bar_chart(self.values, self.title, self.unit)


@dataclass
class WorkerRow:
    hostname: str
    pid: int
    queues: str
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    seconds_ago: int
    state: str  # alive, late, stopped


@dataclass
class QueueRow:
    name: str
    depth: int | None  # now, from the broker (None: unreadable)
    chart: Chart


@dataclass
class Status:
    now: datetime
    instances_last_hour: int
    studies_last_hour: int
    ingest_per_minute: float
    ingest_chart: Chart
    jobs_chart: Chart
    failures_chart: Chart
    queues: list[QueueRow]
    workers: list[WorkerRow]
    job_states: dict[str, int]
    errors: list[dict] = field(default_factory=list)
    broker_error: str = ""


def _minute_buckets(now: datetime) -> list[datetime]:
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    return [start + timedelta(minutes=i) for i in range(MINUTES)]


def _series(rows, buckets: list[datetime], key: str = "n") -> list[int]:
    by_minute = {row["minute"]: row[key] for row in rows}
    return [int(by_minute.get(bucket, 0) or 0) for bucket in buckets]


def bar_chart(values: list[int], title: str, unit: str, width: int = 300, height: int = 56) -> SafeString:
    """An inline SVG bar chart of `values` (oldest first), labelled for screen readers."""
    peak = max(values, default=0)
    bar = width / max(len(values), 1)
    bars = []
    for index, value in enumerate(values):
        if value <= 0:
            continue
        h = max(1.0, (height - 14) * value / peak)
        bars.append(
            f'<rect x="{index * bar:.1f}" y="{height - h:.1f}" width="{max(bar - 1, 1):.1f}" height="{h:.1f}">'
            f"<title>{len(values) - index - 1} min ago: {value} {escape(unit)}</title></rect>"
        )
    label = f"{title}: peak {peak} {unit} per minute, {sum(values)} in the last hour"
    return mark_safe(
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}"><text x="0" y="10">peak {peak}</text>'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}"/>{"".join(bars)}</svg>'
    )


def collect(app=None) -> Status:
    """The status as of now (reads the database, and the broker when `app` is given)."""
    now = timezone.now()
    buckets = _minute_buckets(now)
    since = buckets[0]
    ingest = (
        Instance.objects.filter(received_at__gte=since)
        .annotate(minute=TruncMinute("received_at"))
        .values("minute")
        .annotate(n=Count("id"))
    )
    ingest_values = _series(ingest, buckets)
    finished = (
        InferenceJob.objects.filter(finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at"))
        .values("minute", "state")
        .annotate(n=Count("id"))
    )
    done = [r for r in finished if r["state"] == InferenceJob.State.SUCCEEDED]
    failed = [r for r in finished if r["state"] == InferenceJob.State.FAILED]

    samples = (
        QueueSample.objects.filter(at__gte=since)
        .annotate(minute=TruncMinute("at"))
        .values("queue", "minute")
        .annotate(n=Max("depth"))
    )
    queue_names = sorted(set(settings.CELERY_WORKER_QUEUES) | {s["queue"] for s in samples})
    depths: dict[str, int] = {}
    broker_error = ""
    if app is not None:
        try:
            from btt_health.console.heartbeat import queue_depths

            depths = queue_depths(app, queue_names)
        except Exception as exc:  # the page must render while the broker is down
            broker_error = f"broker unreachable: {exc}"
            logger.warning("status page: %s", broker_error)
    queues = [
        QueueRow(
            name=name,
            depth=depths.get(name),
            chart=Chart(
                f"Queue {name}",
                _series([s for s in samples if s["queue"] == name], buckets),
                "messages",
            ),
        )
        for name in queue_names
    ]

    interval = settings.BTT_WORKER_HEARTBEAT_SECONDS
    workers = []
    for heartbeat in WorkerHeartbeat.objects.filter(last_seen_at__gte=now - timedelta(days=1)):
        age = int((now - heartbeat.last_seen_at).total_seconds())
        state = "stopped" if heartbeat.stopped_at else ("alive" if age <= 3 * interval else "late")
        workers.append(
            WorkerRow(
                hostname=heartbeat.hostname,
                pid=heartbeat.pid,
                queues=heartbeat.queues,
                concurrency=heartbeat.concurrency,
                started_at=heartbeat.started_at,
                last_seen_at=heartbeat.last_seen_at,
                seconds_ago=age,
                state=state,
            )
        )

    job_states = {state: 0 for state in InferenceJob.State.values}
    for row in InferenceJob.objects.values("state").annotate(n=Count("id")):
        job_states[row["state"]] = row["n"]

    errors = [
        {
            "at": job.finished_at or job.updated_at,
            "source": "AI job",
            "what": f"{job.model_name} {job.model_version} on {job.study_instance_uid}",
            "message": job.reason,
            "link": f"/admin/ai_pipeline/inferencejob/{job.pk}/change/",
        }
        for job in InferenceJob.objects.filter(state=InferenceJob.State.FAILED).order_by("-finished_at")[:15]
    ]
    errors += [
        {
            "at": job.updated_at,
            "source": "AI job (retrying)",
            "what": f"{job.model_name} {job.model_version} on {job.study_instance_uid}",
            "message": job.reason,
            "link": f"/admin/ai_pipeline/inferencejob/{job.pk}/change/",
        }
        for job in InferenceJob.objects.filter(state=InferenceJob.State.QUEUED).exclude(reason="")[:10]
    ]
    errors += [
        {
            "at": worker.last_seen_at,
            "source": "worker",
            "what": worker.hostname,
            "message": f"no heartbeat for {worker.seconds_ago} s",
            "link": "",
        }
        for worker in workers
        if worker.state == "late"
    ]
    errors.sort(key=lambda e: e["at"], reverse=True)

    instances = sum(ingest_values)
    return Status(
        now=now,
        instances_last_hour=instances,
        studies_last_hour=Study.objects.filter(last_received_at__gte=since).count(),
        ingest_per_minute=round(sum(ingest_values[-5:]) / 5, 1),
        ingest_chart=Chart("Instances received", ingest_values, "instances"),
        jobs_chart=Chart("AI jobs succeeded", _series(done, buckets), "jobs"),
        failures_chart=Chart("AI jobs failed", _series(failed, buckets), "jobs"),
        queues=queues,
        workers=workers,
        job_states=job_states,
        errors=errors[:25],
        broker_error=broker_error,
    )
