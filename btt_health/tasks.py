"""Tasks of the Django project itself (not of one part)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from celery import shared_task


@shared_task(name="btt_health.ping", acks_late=True)
def ping(marker_path: str | None = None) -> dict[str, object]:
    """Prove that a worker takes tasks off the broker: answer who ran it.

    When `marker_path` is given, the answer is also written there as `hostname pid` (replacing
    the file atomically), so a caller on the same machine can see the task ran without a result
    backend. Running it twice is harmless.
    """
    answer = {"pong": True, "hostname": socket.gethostname(), "pid": os.getpid()}
    if marker_path:
        target = Path(marker_path)
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_text(f"{answer['hostname']} {answer['pid']}\n")
        partial.replace(target)
    return answer
