"""`python manage.py dicom_scp`: run the DICOM node (SCP) in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from integrations.dicom.scp import DicomNode


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

    def handle(self, *args, port: int | None, host: str | None, stop_timeout: float, **options):
        stop = threading.Event()
        received: list[str] = []

        def on_signal(signum: int, frame: object) -> None:
            received.append(signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            node = DicomNode(host=host, port=port)
            try:
                lines = node.start()
            except OSError as exc:
                self.stderr.write(f"dicom_scp: cannot listen: {exc}")
                raise SystemExit(1) from None
            for line in lines:
                self.stdout.write(f"dicom_scp: listening: {line}")
            self.stdout.flush()
            while not stop.wait(0.5):
                pass
            self.stdout.write(f"dicom_scp: {received[0] if received else 'stop'} received, stopping")
            node.stop(timeout=stop_timeout, say=lambda message: self.stdout.write(f"dicom_scp: {message}"))
            self.stdout.write("dicom_scp: stopped")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
