from django.core.management.base import BaseCommand, CommandError

from btt_health.api_auth.models import ApiClient
from btt_health.api_auth.services import create_api_client


class Command(BaseCommand):
    help = "Create (or re-key) an API client and print its bearer token as the last line."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--role", required=True, choices=ApiClient.Role.values)

    def handle(self, *args, name: str, role: str, **options):
        try:
            client, token = create_api_client(name, role)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"API client {client.name!r} with role {client.role}; the token is shown only once:"
        )
        self.stdout.write(token)
