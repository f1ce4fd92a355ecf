"""`manage.py serve` runs HTTP and a worker, stops cleanly on SIGTERM/SIGINT, and fails loudly."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.conf import settings

from btt_health.celery import app as celery_app
from btt_health.supervisor import ChildSpec, Supervisor
from btt_health.tasks import ping
from tests.processes import Stack, stack_broker_url, wait_until


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_closed(base_url: str) -> bool:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_runs_http_and_a_worker_and_exits_0_on_signal(start_serve, tmp_path: Path, signum: int) -> None:
    queue = f"pytest-serve-{uuid.uuid4().hex[:12]}"
    stack: Stack = start_serve(BTT_WORKER_QUEUES=f"default,{queue}")
    log = stack.process.log()
    assert f"serve: http (pid {stack.child_pid('http')}): HTTP on {stack.base_url}/ (gunicorn)" in log
    assert f"serve: worker (pid {stack.child_pid('worker')}): Celery queues default,{queue} from" in log
    http_pid, worker_pid = stack.child_pid("http"), stack.child_pid("worker")

    ready = requests.get(f"{stack.base_url}/readyz", timeout=10)
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}

    # The worker serve started (the only one consuming this queue) runs a task.
    marker = tmp_path / "pong"
    with celery_app.connection_for_write(stack_broker_url(settings.CELERY_BROKER_URL)) as connection:
        ping.apply_async(args=[str(marker)], queue=queue, connection=connection)
    wait_until(marker.exists, 60, "serve's worker to run ping")

    stack.process.send_signal(signum)
    assert stack.process.wait() == 0, stack.process.log_tail()
    log = stack.process.log()
    assert f"serve: {signal.Signals(signum).name} received, stopping" in log
    assert "serve: stopped" in log
    assert "did not stop within" not in log, "children should stop on SIGTERM, not need SIGKILL"
    assert _gone(http_pid)
    assert _gone(worker_pid)
    assert _port_closed(stack.base_url)


def test_serve_stops_everything_and_exits_1_naming_the_child_that_died(start_serve) -> None:
    stack: Stack = start_serve()
    http_pid, worker_pid = stack.child_pid("http"), stack.child_pid("worker")

    os.kill(worker_pid, signal.SIGKILL)
    assert stack.process.wait() == 1, stack.process.log_tail()
    log = stack.process.log()
    assert f"serve: worker (pid {worker_pid}) exited unexpectedly with signal SIGKILL" in log
    assert "serve: stopping the other processes" in log
    assert _gone(http_pid)
    assert _port_closed(stack.base_url)


def test_serve_without_a_worker_when_told_so(start_serve) -> None:
    stack: Stack = start_serve(BTT_RUN_WORKER="false")
    assert "serve: http (pid" in stack.process.log()
    assert "serve: worker" not in stack.process.log()
    assert requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait() == 0, stack.process.log_tail()


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(capsys: pytest.CaptureFixture) -> None:
    """The supervisor on its own, with stand-in children: one exits, one will not stop."""
    stubborn = ChildSpec(
        name="stubborn",
        argv=[
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        ],
        listens_on="nothing",
    )
    crashing = ChildSpec(
        name="crashing",
        argv=[sys.executable, "-c", "import time; time.sleep(1); exit(3)"],
        listens_on="nothing",
    )
    supervisor = Supervisor([stubborn, crashing], stop_timeout=1)
    started = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - started < 20
    out = capsys.readouterr().out
    assert "serve: crashing (pid" in out
    assert "exited unexpectedly with exit code 3" in out
    assert "serve: stubborn (pid" in out
    assert "did not stop within 1s; killing it" in out
    assert supervisor.children["stubborn"].returncode == -signal.SIGKILL
