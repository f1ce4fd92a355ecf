"""A small foreground supervisor for the processes that make up the stack.

`python manage.py serve` describes each part of the stack as a `ChildSpec` (the HTTP server, the
Celery worker, the DICOM SCP, the MLLP listener) and hands the list to `Supervisor`:

- each child starts in its own process group, so a Ctrl-C on the terminal reaches only the
  supervisor, which then stops the children itself;
- on SIGINT or SIGTERM the supervisor sends SIGTERM to every child, waits up to `stop_timeout`
  seconds for them all, kills what is left with SIGKILL, and returns 0;
- when a child exits on its own, the supervisor names it, stops the others the same way and
  returns 1, so an orchestrator restarts the whole stack instead of running half of it;
- on Linux each child also gets SIGTERM from the kernel should the supervisor itself die.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from django.conf import settings
from kombu.utils.url import maybe_sanitize_url

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    """One process of the stack: its name, its command line and what it listens on."""

    name: str
    argv: Sequence[str]
    listens_on: str


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here: `die_with_parent` runs between fork and exec, where little is safe to do.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies (Linux; no-op elsewhere).

    Meant as a `preexec_fn`: a supervisor killed with SIGKILL then leaves no orphans behind.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _http_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_child() -> ChildSpec:
    """gunicorn serving the Django application (threaded workers; no access log)."""
    bind = _http_bind(settings.BTT_HTTP_HOST, settings.BTT_HTTP_PORT)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "btt_health.wsgi:application",
        "--worker-class",
        "gthread",
        "--bind",
        bind,
        "--workers",
        str(settings.BTT_HTTP_WORKERS),
        "--threads",
        str(settings.BTT_HTTP_THREADS),
        "--graceful-timeout",
        "20",
        # gunicorn's control socket defaults to one fixed path per user, which two stacks on one
        # machine would fight over; nothing here uses it.
        "--no-control-socket",
    ]
    return ChildSpec(name="http", argv=argv, listens_on=f"HTTP on http://{bind}/ (gunicorn)")


def celery_worker_argv(queues: Sequence[str], concurrency: int) -> list[str]:
    """The command line of a Celery worker of the project consuming `queues`."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "btt_health",
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "--loglevel",
        "INFO",
        # Workers need neither to sync state with each other at start nor to gossip; leaving both
        # off makes start-up faster and keeps broker traffic down. Remote control still works.
        "--without-mingle",
        "--without-gossip",
    ]


def worker_child() -> ChildSpec:
    """A Celery worker consuming the configured queues."""
    queues = settings.CELERY_WORKER_QUEUES
    if settings.CELERY_BROKER_URL.startswith("filesystem:"):
        broker = f"the embedded broker in {settings.BTT_DATA_DIR / 'broker'}"
    else:
        broker = maybe_sanitize_url(settings.CELERY_BROKER_URL)
    return ChildSpec(
        name="worker",
        argv=celery_worker_argv(queues, settings.BTT_WORKER_CONCURRENCY),
        listens_on=f"Celery queues {','.join(queues)} from {broker}",
    )


def dicom_child() -> ChildSpec:
    """The DICOM node (`manage.py dicom_scp`): C-ECHO/STORE/FIND/MOVE/GET, and DICOM TLS when configured."""
    bind = _http_bind(settings.BTT_DICOM_HOST, settings.BTT_DICOM_PORT)
    listens_on = f"DICOM {settings.BTT_DICOM_AET} on {bind}"
    if settings.BTT_DICOM_TLS_CERT and settings.BTT_DICOM_TLS_KEY:
        listens_on += f", DICOM TLS on {_http_bind(settings.BTT_DICOM_HOST, settings.BTT_DICOM_TLS_PORT)}"
    manage_py = Path(settings.BASE_DIR) / "manage.py"
    return ChildSpec(name="dicom", argv=[sys.executable, str(manage_py), "dicom_scp"], listens_on=listens_on)


def mllp_child() -> ChildSpec:
    """The HL7 v2 MLLP listener (`manage.py mllp_listener`), and MLLP over TLS when configured."""
    listens_on = f"HL7 v2 MLLP on {_http_bind(settings.BTT_MLLP_HOST, settings.BTT_MLLP_PORT)}"
    if settings.BTT_MLLP_TLS_CERT and settings.BTT_MLLP_TLS_KEY:
        listens_on += f", MLLP over TLS on {_http_bind(settings.BTT_MLLP_HOST, settings.BTT_MLLP_TLS_PORT)}"
    manage_py = Path(settings.BASE_DIR) / "manage.py"
    return ChildSpec(
        name="mllp", argv=[sys.executable, str(manage_py), "mllp_listener"], listens_on=listens_on
    )


def stack_children() -> list[ChildSpec]:
    """The children `serve` runs, as settings ask."""
    children = [http_child()]
    if settings.BTT_RUN_WORKER:
        children.append(worker_child())
    if settings.BTT_RUN_DICOM:
        children.append(dicom_child())
    if settings.BTT_RUN_MLLP:
        children.append(mllp_child())
    return children


class Supervisor:
    """Runs `specs` as child processes until a signal arrives or one of them exits."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        stop_timeout: float = 30.0,
        out: TextIO | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        if not specs:
            raise ValueError("nothing to supervise")
        self.specs = list(specs)
        self.stop_timeout = stop_timeout
        self.out = out or sys.stdout
        self.poll_interval = poll_interval
        self.children: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._signal_name: str | None = None

    def say(self, message: str) -> None:
        self.out.write(f"serve: {message}\n")
        self.out.flush()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signal_name = signal.Signals(signum).name
        self._stop.set()

    def _start(self, spec: ChildSpec) -> subprocess.Popen:
        process = subprocess.Popen(
            list(spec.argv),
            process_group=0,
            preexec_fn=die_with_parent,
        )
        self.say(f"{spec.name} (pid {process.pid}): {spec.listens_on}")
        return process

    def run(self) -> int:
        """Start every child, wait, stop them all; 0 after a signal, 1 when a child died."""
        previous: dict[int, Callable | int | None] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        try:
            return self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self) -> int:
        for spec in self.specs:
            if self._stop.is_set():
                break
            try:
                self.children[spec.name] = self._start(spec)
            except OSError as exc:
                self.say(f"could not start {spec.name}: {exc}")
                self._stop_all()
                return 1

        while not self._stop.wait(self.poll_interval):
            for name, process in self.children.items():
                code = process.poll()
                if code is not None:
                    self.say(f"{name} (pid {process.pid}) exited unexpectedly with {_describe(code)}")
                    self.say("stopping the other processes")
                    self._stop_all()
                    return 1

        self.say(f"{self._signal_name or 'stop'} received, stopping")
        self._stop_all()
        self.say("stopped")
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every running child, then SIGKILL to whatever outlives `stop_timeout`."""
        running = {name: p for name, p in self.children.items() if p.poll() is None}
        for process in running.values():
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for name, process in running.items():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{name} (pid {process.pid}) did not stop within {self.stop_timeout:g}s; killing it")
                _kill_group(process)
                process.wait()


def _signal(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        process.send_signal(signum)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child and everything it started (its process group, see `Supervisor._start`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
