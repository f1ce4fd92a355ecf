"""Processes the tests start: Celery workers, `manage.py serve`, management commands.

Plain helpers for the fixtures in tests/conftest.py and tests/e2e/conftest.py; tests use them
through those fixtures.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

import pytest
import requests

from btt_health.supervisor import celery_worker_argv

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO_ROOT / "manage.py"

# Generous because CI machines are small (2 cores) and busy: start-up normally takes seconds.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 45.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def run_manage(*args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python manage.py ARGS` with `env` to completion; its result (text output), any exit code."""
    return subprocess.run(
        [sys.executable, str(MANAGE_PY), *args],
        cwd=REPO_ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def child_env(base: Mapping[str, str], overrides: Mapping[str, str | None]) -> dict[str, str]:
    """`base` with `overrides` applied; an override of None removes the variable."""
    env = dict(base)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class ManagedProcess:
    """A subprocess started by the tests, its output (stdout and stderr) kept in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def running(self) -> bool:
        return self.process.poll() is None

    def fail(self, message: str) -> NoReturn:
        pytest.fail(f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}")

    def wait_for_log(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """Wait until the log matches the regular expression `pattern`; fail if the process dies."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match:
                return match
            if not self.running():
                self.fail(f"exited with code {self.process.returncode} before logging {pattern!r}")
            if time.monotonic() > deadline:
                self.fail(f"did not log {pattern!r} within {timeout:g}s")
            time.sleep(0.1)

    def wait_for_http(self, url: str, timeout: float = START_TIMEOUT) -> requests.Response:
        """Wait until `url` answers 200; fail if the process dies first."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                response = requests.get(url, timeout=5)
                if response.status_code == 200:
                    return response
                last = f"{response.status_code} {response.text[:300]}"
            except requests.RequestException as exc:
                last = str(exc)
            if not self.running():
                self.fail(f"exited with code {self.process.returncode} before {url} answered 200")
            if time.monotonic() > deadline:
                self.fail(f"{url} did not answer 200 within {timeout:g}s (last: {last})")
            time.sleep(0.2)

    def send_signal(self, signum: int) -> None:
        if self.running():
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit by itself; fail (and kill it) after `timeout`."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.fail(f"did not exit within {timeout:g}s")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `signum` and wait; SIGKILL after `timeout`. Returns the exit code."""
        if self.running():
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class ProcessLauncher:
    """Starts `ManagedProcess`es with logs in one folder and stops any left running at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> ManagedProcess:
        log_path = self.log_dir / f"{len(self.started):02d}-{name}.log"
        process = ManagedProcess(name, argv, env, log_path)
        self.started.append(process)
        return process

    def manage(self, *args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `python manage.py ARGS` to completion and return its result (text output)."""
        return run_manage(*args, env=env, timeout=timeout)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


class Stack:
    """A running `manage.py serve`: its process and the base URL of its HTTP server."""

    def __init__(self, process: ManagedProcess, base_url: str, env: Mapping[str, str]) -> None:
        self.process = process
        self.base_url = base_url
        self.env = dict(env)

    def child_pid(self, child: str) -> int:
        """The pid that serve printed for `child` ('http', 'worker', ...)."""
        match = self.process.wait_for_log(rf"serve: {re.escape(child)} \(pid (\d+)\)", timeout=5)
        return int(match.group(1))


def worker_argv(queues: list[str], nodename: str = "pytest") -> list[str]:
    """A Celery worker as `serve` runs it, with concurrency 1 and a node name of its own."""
    return [*celery_worker_argv(queues, 1), "-n", f"{nodename}-{os.getpid()}-%i@%h"]


WORKER_READY = r"\S+@\S+ ready\."  # celery logs "<nodename> ready." once it consumes


def start_stack(launcher: ProcessLauncher, name: str, env: Mapping[str, str]) -> Stack:
    """Start `manage.py serve` with `env` (which sets BTT_HTTP_PORT); return it once ready.

    Ready means /readyz answers 200 and, when serve runs a worker, the worker consumes.
    """
    process = launcher.start(name, [sys.executable, str(MANAGE_PY), "serve"], env)
    base_url = f"http://127.0.0.1:{env['BTT_HTTP_PORT']}"
    process.wait_for_http(f"{base_url}/readyz")
    if "serve: worker (pid" in process.log():  # serve prints it right after starting the worker
        process.wait_for_log(WORKER_READY)
    return Stack(process, base_url, env)


def stack_broker_url(url: str | None) -> str | None:
    """The broker of the stacks the tests start: for Redis, a database of their own.

    A stack runs its own worker on the default queues; sharing the broker with
    `celery_worker_process` would let either worker take the other's tasks. Other brokers are
    shared as they are.
    """
    if not url or not url.startswith(("redis://", "rediss://")):
        return url
    head, _, tail = url.rpartition("/")
    number = int(tail) if tail.isdigit() else 0
    return f"{head}/{(number + 1) % 16}"
