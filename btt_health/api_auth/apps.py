from django.apps import AppConfig


class ApiAuthConfig(AppConfig):
    name = "btt_health.api_auth"
    label = "api_auth"
    verbose_name = "API clients"
