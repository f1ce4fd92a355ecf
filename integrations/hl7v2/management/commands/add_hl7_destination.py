"""`python manage.py add_hl7_destination NAME HOST PORT`: add or update where results (ORU^R01) go."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from integrations.hl7v2.services import add_or_update_destination


class Command(BaseCommand):
    help = (
        "Add or update an HL7 v2 destination: every DiagnosticReport that becomes final (or is "
        "corrected) is sent there as ORU^R01 over MLLP. Running it again updates the destination."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="a name for the destination (unique)")
        parser.add_argument("host")
        parser.add_argument("port", type=int)
        parser.add_argument(
            "--tls", action="store_true", help="connect over TLS (verified with BTT_MLLP_TLS_CA)"
        )
        parser.add_argument("--disabled", action="store_true", help="keep it, but send it nothing")
        parser.add_argument("--receiving-application", default="", help="MSH-5 of the messages sent")
        parser.add_argument("--receiving-facility", default="", help="MSH-6 of the messages sent")
        parser.add_argument("--description", default="")

    def handle(self, *args, **options):
        try:
            destination, created = add_or_update_destination(
                options["name"],
                options["host"],
                options["port"],
                use_tls=options["tls"],
                enabled=not options["disabled"],
                receiving_application=options["receiving_application"],
                receiving_facility=options["receiving_facility"],
                description=options["description"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{'added' if created else 'updated'} HL7 destination {destination}")
