"""`python manage.py mllp_listener`: run the HL7 v2 MLLP listener in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from btt_health.foreground import stop_on_signals
from integrations.hl7v2.listener import MllpListener


class Command(BaseCommand):
    help = (
        "Run the HL7 v2 MLLP listener in the foreground on BTT_MLLP_PORT (and MLLP over TLS on "
        "BTT_MLLP_TLS_PORT when a certificate is configured) until SIGINT or SIGTERM. `serve` runs "
        "it as its `mllp` child."
    )
    # The listener serves no URLs; `serve` and `migrate` have run the checks already.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, help="Port to listen on (default: BTT_MLLP_PORT).")
        parser.add_argument("--host", help="Address to bind (default: BTT_MLLP_HOST).")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=10.0,
            help="Seconds messages being processed may take to finish after a stop signal (10).",
        )

    def handle(self, *args, port: int | None, host: str | None, stop_timeout: float, **options):
        def say(message: str) -> None:
            self.stdout.write(f"mllp_listener: {message}")
            self.stdout.flush()

        with stop_on_signals() as (stop, received):
            listener = MllpListener(host=host, port=port, say=say)
            try:
                listener.run(stop, stop_timeout=stop_timeout)
            except OSError as exc:
                self.stderr.write(f"mllp_listener: cannot listen: {exc}")
                raise SystemExit(1) from None
            say(f"{received[0] if received else 'stop'} received, stopped")
