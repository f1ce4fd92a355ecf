from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The clinician viewer (at `/`) and the admin console's additions (at `/admin/`)."""

    name = "btt_health.console"
    label = "console"
    verbose_name = "Users and organizations"

    def ready(self) -> None:
        # Celery workers write a heartbeat row (status page); connecting the signal is harmless
        # in processes that never start a worker.
        from btt_health.console import heartbeat

        heartbeat.connect_worker_signals()
