from django.core.management import call_command
from django.core.management.base import BaseCommand

from btt_health.supervisor import Supervisor, stack_children


class Command(BaseCommand):
    help = (
        "Run the whole stack in the foreground: apply migrations, collect static files, then run "
        "the HTTP server and (unless BTT_RUN_WORKER=false) a Celery worker until SIGINT/SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=30.0,
            help="Seconds to wait for the processes to stop after SIGTERM before killing them (30).",
        )

    def handle(self, *args, stop_timeout: float, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        supervisor = Supervisor(stack_children(), stop_timeout=stop_timeout, out=self.stdout)
        code = supervisor.run()
        if code:
            raise SystemExit(code)
