from django.apps import AppConfig


class FhirConfig(AppConfig):
    name = "integrations.fhir"
    label = "fhir"
    verbose_name = "FHIR store"

    def ready(self) -> None:
        # The `report_finalised` event comes from the store's writes (report_events.py).
        from integrations.fhir import report_events

        report_events.register()
