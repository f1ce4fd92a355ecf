"""`python manage.py add_dicom_peer AET HOST PORT --allow store,find,move,get`: add or update a remote AE."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from integrations.dicom.services import OPERATIONS, PeerError, add_or_update_peer


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise CommandError(f"PORT must be a number between 1 and 65535, got {value!r}") from None
    if not 1 <= number <= 65535:
        raise CommandError(f"PORT must be between 1 and 65535, got {number}")
    return number


class Command(BaseCommand):
    help = (
        "Add the DICOM peer AET at HOST:PORT, or update it when AET exists (idempotent). --allow lists "
        "what it may do with this node: store (send us objects), find (query us), move (retrieve with "
        "C-MOVE and be a C-MOVE destination), get (retrieve with C-GET); the rest is turned off."
    )

    def add_arguments(self, parser):
        parser.add_argument("ae_title", metavar="AET", help="The peer's AE title (1-16 characters).")
        parser.add_argument("host", metavar="HOST", help="Its host name or IP address.")
        parser.add_argument("port", metavar="PORT", help="Its DICOM port.")
        parser.add_argument(
            "--allow",
            default=",".join(OPERATIONS),
            help=f"Comma-separated operations it may do: {','.join(OPERATIONS)} (default: all). "
            "Pass --allow '' for none.",
        )
        parser.add_argument("--tls", action="store_true", help="Connect to it over DICOM TLS.")
        parser.add_argument("--description", help="A note shown in the admin (kept when not given).")

    def handle(
        self, *args, ae_title: str, host: str, port: str, allow: str, tls: bool, description, **options
    ):
        try:
            peer, created = add_or_update_peer(
                ae_title,
                host,
                _port(port),
                allow=allow.split(","),
                use_tls=tls,
                description=description,
            )
        except PeerError as exc:
            raise CommandError(str(exc)) from None
        allowed = ",".join(op for op in OPERATIONS if getattr(peer, f"allow_{op}")) or "nothing"
        self.stdout.write(
            f"{'Added' if created else 'Updated'} DICOM peer {peer.ae_title} at {peer.host}:{peer.port}"
            f"{' (TLS)' if peer.use_tls else ''}, allowed: {allowed}"
        )
