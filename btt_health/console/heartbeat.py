"""Worker heartbeats and queue-depth samples for the admin status page.

Every Celery worker (the `worker` child of `serve`, and workers started on other machines) runs a
small daemon thread in its main process from `worker_ready` until `worker_shutdown`: every
`BTT_WORKER_HEARTBEAT_SECONDS` it writes its `WorkerHeartbeat` row (node name, pid, queues,
concurrency, now) and one `QueueSample` per queue it consumes (messages waiting in the broker, read
with a passive queue declaration, which every kombu transport answers), and drops samples older
than `SAMPLE_RETENTION`. A worker that stops marks its row stopped; one that dies simply stops
beating, which is what the status page shows (last seen N seconds ago).

Why a thread in the worker rather than Celery's own events or `inspect ping`: those need a worker
to be reachable at the moment the page is opened (and `ping` makes the page wait for replies);
a row per worker is history that survives the worker and costs one small write per interval.
The thread closes its database connection after each beat, so a fork of the worker's pool never
inherits an open connection.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

logger = logging.getLogger(__name__)

SAMPLE_RETENTION = timedelta(hours=3)

_stop = threading.Event()
_thread: threading.Thread | None = None


def connect_worker_signals() -> None:
    """Start the heartbeat thread in every Celery worker (idempotent)."""
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="btt-console-heartbeat-ready")
    signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="btt-console-heartbeat-stop"
    )


def queue_depths(app, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each of `queues` on the broker (a queue that cannot be read is left out).

    A queue the broker does not know counts as empty: Redis deletes the list of a queue when its
    last message is taken, and an AMQP queue nobody declared yet holds nothing either.
    """
    from amqp.exceptions import ChannelError

    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        for name in queues:
            # A channel per queue: on AMQP a failed passive declaration closes its channel.
            channel = conn.channel()
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError as exc:
                # 404 NOT_FOUND (kombu's virtual transports give the code as a string).
                if str(getattr(exc, "reply_code", "")) == "404":
                    depths[name] = 0
                else:
                    logger.debug("queue depth of %s unavailable: %s", name, exc)
            except Exception as exc:  # a broker error: shown as unknown
                logger.debug("queue depth of %s unavailable: %s", name, exc)
            finally:
                try:
                    channel.close()
                except Exception:
                    logger.debug("closing the channel of %s failed", name, exc_info=True)
    return depths


def beat(hostname: str, queues: list[str], concurrency: int, app=None) -> None:
    """Write one heartbeat (and queue samples when `app` is given) now."""
    from btt_health.console.models import QueueSample, WorkerHeartbeat

    now = timezone.now()
    heartbeat, created = WorkerHeartbeat.objects.get_or_create(
        hostname=hostname,
        defaults={
            "pid": os.getpid(),
            "queues": ",".join(queues),
            "concurrency": concurrency,
            "started_at": now,
            "last_seen_at": now,
        },
    )
    if not created:
        heartbeat.pid = os.getpid()
        heartbeat.queues = ",".join(queues)
        heartbeat.concurrency = concurrency
        heartbeat.last_seen_at = now
        heartbeat.stopped_at = None
        heartbeat.save(update_fields=["pid", "queues", "concurrency", "last_seen_at", "stopped_at"])
    if app is not None:
        depths = queue_depths(app, queues)
        QueueSample.objects.bulk_create(
            [QueueSample(queue=q, depth=d, at=now, hostname=hostname) for q, d in depths.items()]
        )
        QueueSample.objects.filter(at__lt=now - SAMPLE_RETENTION).delete()


def _run(hostname: str, queues: list[str], concurrency: int, app) -> None:
    interval = settings.BTT_WORKER_HEARTBEAT_SECONDS
    first = True
    while first or not _stop.wait(interval):
        first = False
        try:
            close_old_connections()
            beat(hostname, queues, concurrency, app)
        except Exception:
            logger.exception("worker heartbeat failed (retried in %s s)", interval)
        finally:
            connection.close()


def _on_worker_ready(sender=None, **kwargs) -> None:
    global _thread
    if settings.BTT_OUTSIDE_WORKER:  # a worker outside the hospital has no database to write to
        return
    if _thread is not None and _thread.is_alive():
        return
    consumer = sender
    app = consumer.app
    hostname = consumer.hostname
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer.task_consumer else []
    concurrency = int(getattr(consumer.pool, "limit", 0) or app.conf.worker_concurrency or 0)
    _stop.clear()
    _thread = threading.Thread(
        target=_run, args=(hostname, queues, concurrency, app), name="btt-heartbeat", daemon=True
    )
    _thread.start()
    logger.info(
        "worker heartbeat every %s s for %s (queues %s)",
        settings.BTT_WORKER_HEARTBEAT_SECONDS,
        hostname,
        queues,
    )


def _on_worker_shutdown(sender=None, **kwargs) -> None:
    from btt_health.console.models import WorkerHeartbeat

    _stop.set()
    hostname = getattr(sender, "hostname", None)
    if not hostname or settings.BTT_OUTSIDE_WORKER:
        return
    try:
        WorkerHeartbeat.objects.filter(hostname=hostname).update(stopped_at=timezone.now())
    except Exception:
        logger.exception("could not mark worker %s stopped", hostname)
    finally:
        connection.close()
