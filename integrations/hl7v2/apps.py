from django.apps import AppConfig


class Hl7v2Config(AppConfig):
    name = "integrations.hl7v2"
    label = "hl7v2"
    verbose_name = "HL7 v2 interface"

    def ready(self) -> None:
        # Results go out as ORU^R01 when a DiagnosticReport is finalised (subscribers.py).
        from btt_health.events import REPORT_FINALISED, subscribe
        from integrations.hl7v2 import subscribers

        subscribe(REPORT_FINALISED, subscribers.on_report_finalised)
