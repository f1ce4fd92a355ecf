"""Running a listener in the foreground until SIGINT or SIGTERM (`dicom_scp`, `mllp_listener`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stop_on_signals() -> Iterator[tuple[threading.Event, list[str]]]:
    """An event set by SIGINT or SIGTERM, and the names of the signals received so far; the
    previous handlers come back when the block ends."""
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop, received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
