from django.apps import AppConfig
from django.db.backends.signals import connection_created


class DicomConfig(AppConfig):
    name = "integrations.dicom"
    label = "dicom"
    verbose_name = "DICOM node"

    def ready(self) -> None:
        from integrations.dicom.sql import register_sqlite_functions

        # Person-name matching folds case with `btt_fold` on SQLite (see integrations/dicom/sql.py).
        connection_created.connect(register_sqlite_functions, dispatch_uid="integrations.dicom.sql")
