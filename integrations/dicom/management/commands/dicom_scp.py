"""`python manage.py dicom_scp`: run the DICOM node (SCP) in the foreground until SIGINT/SIGTERM.

With `--processes N` (default `BTT_DICOM_PROCESSES`) above 1, this process listens, and runs N
copies of itself that serve the associations, so that concurrent associations use every CPU
instead of sharing one Python interpreter: it accepts each connection and hands it to the next
copy in turn over a Unix socket (`--handoff-fds`; four concurrent senders and two processes make
two associations each, where a shared listening socket or SO_REUSEPORT left it to chance). It
stops them all on a signal, and all of them (exiting non-zero) when one dies.
"""

from __future__ import annotations

import itertools
import math
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from pydicom import config as pydicom_config

from btt_health.foreground import stop_on_signals
from integrations.dicom import services
from integrations.dicom.scp import DicomNode, hand_off, listener_ports


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
        # Internal: how the parent of several processes passes each its connections.
        parser.add_argument("--handoff-fds", help="NAME=FD,... handoff sockets per listener (internal).")
        parser.add_argument("--process-number", default="", help="(internal) shown in this process's lines.")

    def handle(self, *args, port, host, stop_timeout, processes, handoff_fds, process_number, **options):
        # pydicom's default (WARN) checks every value it decodes against its VR's regular
        # expression only to log a warning: about a tenth of this process's CPU per instance,
        # mostly on UIDs. The node does its own structural checks (dataset_check).
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        processes = settings.BTT_DICOM_PROCESSES if processes is None else processes
        if processes < 1:
            raise CommandError("--processes must be at least 1")
        if handoff_fds:
            sockets = {
                name: socket.socket(fileno=int(fd))
                for name, fd in (item.split("=", 1) for item in handoff_fds.split(","))
            }
            share = math.ceil(settings.BTT_DICOM_MAX_ASSOCIATIONS / processes)
            self._run_node(
                DicomNode(host=host, port=port, handoff_sockets=sockets, max_associations=share),
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
        """Listen, run `count` serving copies of this command, hand them the connections in turn,
        stop them together."""
        host = host or settings.BTT_DICOM_HOST
        ports = listener_ports()
        if port is not None:
            ports["dicom"] = port
        try:
            listeners = {
                name: socket.create_server((host, number), backlog=128) for name, number in ports.items()
            }
        except OSError as exc:
            self.stderr.write(f"dicom_scp: cannot listen: {exc}")
            raise SystemExit(1) from None
        removed = services.cleanup_staging()  # once, here: the copies skip it
        if removed:
            self.stdout.write(f"dicom_scp: removed {removed} stale staged file(s)")
        command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "dicom_scp"]
        command += ["--processes", str(count), "--stop-timeout", str(stop_timeout)]
        command += ["--host", host, "--port", str(ports["dicom"])]
        handoffs: list[dict[str, socket.socket]] = []
        children = []
        for number in range(1, count + 1):
            pairs = {name: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for name in listeners}
            ends = {name: child_end for name, (_, child_end) in pairs.items()}
            fds = ",".join(f"{name}={end.fileno()}" for name, end in ends.items())
            children.append(
                subprocess.Popen(
                    [*command, "--handoff-fds", fds, "--process-number", str(number)],
                    pass_fds=[end.fileno() for end in ends.values()],
                )
            )
            for end in ends.values():
                end.close()
            handoffs.append({name: parent_end for name, (parent_end, _) in pairs.items()})
        for name, number in ports.items():
            kind = "DICOM TLS" if name == "tls" else "DICOM"
            self.stdout.write(
                f"dicom_scp: listening: {kind} {settings.BTT_DICOM_AET} on {host}:{number} ({count} processes)"
            )
        self.stdout.flush()
        with stop_on_signals() as (stop, received):
            code = self._accept_and_supervise(listeners, handoffs, children, stop)
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
        for sock in [*listeners.values(), *(end for ends in handoffs for end in ends.values())]:
            sock.close()
        self.stdout.write("dicom_scp: stopped")
        if code:
            raise SystemExit(code)

    def _accept_and_supervise(self, listeners, handoffs, children, stop) -> int:
        """Until a signal or a dead copy (its exit code then): accept connections and hand each to
        the next copy in turn."""
        selector = selectors.DefaultSelector()
        for name, listener in listeners.items():
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ, name)
        turn = itertools.cycle(handoffs)
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.2):
                try:
                    connection, _ = key.fileobj.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                with connection:
                    try:
                        hand_off(connection, next(turn)[key.data])
                    except OSError as exc:  # that copy is gone: the check below stops the node
                        self.stderr.write(f"dicom_scp: could not hand a connection over: {exc}")
            dead = [child for child in children if child.poll() is not None]
            if dead:
                self.stderr.write(f"dicom_scp: process {dead[0].pid} exited with code {dead[0].returncode}")
                return dead[0].returncode or 1
        return 0
