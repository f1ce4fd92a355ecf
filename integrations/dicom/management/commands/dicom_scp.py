"""`python manage.py dicom_scp`: run the DICOM node (SCP) in the foreground until SIGINT/SIGTERM.

With `--processes N` (default `BTT_DICOM_PROCESSES`) above 1, this process binds the listening
sockets and runs N copies of itself that serve them (`--listen-fds`), so that concurrent
associations use every CPU instead of sharing one Python interpreter; it stops them all on a
signal, and all of them (exiting non-zero) when one dies.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from btt_health.foreground import stop_on_signals
from integrations.dicom import services
from integrations.dicom.scp import DicomNode, bind_listener, listener_ports


class Command(BaseCommand):
    help = (
        "Run the DICOM node in the foreground: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET on "
        "BTT_DICOM_PORT (and DICOM TLS on BTT_DICOM_TLS_PORT when a certificate is configured), "
        "until SIGINT or SIGTERM. `serve` runs it as its `dicom` child."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, help="Port to listen on (default: BTT_DICOM_PORT).")
        parser.add_argument("--host", help="Address to bind (default: BTT_DICOM_HOST).")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=10.0,
            help="Seconds running associations may take to finish after a stop signal (10).",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="SCP processes sharing the listening sockets (default: BTT_DICOM_PROCESSES).",
        )
        # Internal: how the parent of several processes hands each its sockets and its share.
        parser.add_argument("--listen-fds", help="NAME=FD,... listening sockets to serve (internal).")
        parser.add_argument("--process-number", default="", help="(internal) shown in this process's lines.")

    def handle(self, *args, port, host, stop_timeout, processes, listen_fds, process_number, **options):
        processes = settings.BTT_DICOM_PROCESSES if processes is None else processes
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if listen_fds:
            sockets = {
                name: socket.socket(fileno=int(fd))
                for name, fd in (item.split("=", 1) for item in listen_fds.split(","))
            }
            share = math.ceil(settings.BTT_DICOM_MAX_ASSOCIATIONS / processes)
            self._run_node(
                DicomNode(host=host, port=port, listen_sockets=sockets, max_associations=share),
                stop_timeout,
                f"dicom_scp[{process_number}]",
                announce=False,
            )
        elif processes == 1:
            self._run_node(DicomNode(host=host, port=port), stop_timeout, "dicom_scp", announce=True)
        else:
            self._run_processes(processes, host, port, stop_timeout)

    def _run_node(self, node: DicomNode, stop_timeout: float, name: str, *, announce: bool) -> None:
        with stop_on_signals() as (stop, received):
            self._serve_until(node, stop, received, stop_timeout, name, announce=announce)

    def _serve_until(self, node, stop, received, stop_timeout: float, name: str, *, announce: bool) -> None:
        try:
            lines = node.start()
        except OSError as exc:
            self.stderr.write(f"{name}: cannot listen: {exc}")
            raise SystemExit(1) from None
        for line in lines:
            self.stdout.write(f"{name}: {'listening' if announce else 'serving'}: {line}")
        self.stdout.flush()
        while not stop.wait(0.5):
            pass
        self.stdout.write(f"{name}: {received[0] if received else 'stop'} received, stopping")
        node.stop(timeout=stop_timeout, say=lambda message: self.stdout.write(f"{name}: {message}"))
        self.stdout.write(f"{name}: stopped")

    def _run_processes(self, count: int, host: str | None, port: int | None, stop_timeout: float) -> None:
        """Bind the listeners, run `count` serving copies of this command, stop them together."""
        host = host or settings.BTT_DICOM_HOST
        ports = listener_ports()
        if port is not None:
            ports["dicom"] = port
        try:
            sockets = {name: bind_listener(host, number) for name, number in ports.items()}
        except OSError as exc:
            self.stderr.write(f"dicom_scp: cannot listen: {exc}")
            raise SystemExit(1) from None
        removed = services.cleanup_staging()  # once, here: the copies skip it
        if removed:
            self.stdout.write(f"dicom_scp: removed {removed} stale staged file(s)")
        fds = ",".join(f"{name}={listener.fileno()}" for name, listener in sockets.items())
        command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "dicom_scp"]
        command += ["--processes", str(count), "--listen-fds", fds, "--stop-timeout", str(stop_timeout)]
        command += ["--host", host, "--port", str(ports["dicom"])]
        with stop_on_signals() as (stop, received):
            code = self._supervise(command, sockets, ports, host, count, stop, received, stop_timeout)
        if code:
            raise SystemExit(code)

    def _supervise(self, command, sockets, ports, host, count, stop, received, stop_timeout) -> int:
        children = [
            subprocess.Popen(
                [*command, "--process-number", str(number)],
                pass_fds=[listener.fileno() for listener in sockets.values()],
            )
            for number in range(1, count + 1)
        ]
        for name, number in ports.items():
            kind = "DICOM TLS" if name == "tls" else "DICOM"
            self.stdout.write(
                f"dicom_scp: listening: {kind} {settings.BTT_DICOM_AET} on {host}:{number} ({count} processes)"
            )
        self.stdout.flush()
        code = 0
        while not stop.wait(0.2):
            dead = [child for child in children if child.poll() is not None]
            if dead:
                code = dead[0].returncode or 1
                self.stderr.write(f"dicom_scp: process {dead[0].pid} exited with code {dead[0].returncode}")
                break
        self.stdout.write(f"dicom_scp: {received[0] if received else 'stop'}, stopping {count} processes")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout + 10
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for listener in sockets.values():
            listener.close()
        self.stdout.write("dicom_scp: stopped")
        return code
