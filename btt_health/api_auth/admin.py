from django.contrib import admin, messages

from btt_health.api_auth.models import ApiClient
from btt_health.api_auth.services import create_api_client


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ("name", "role", "token_prefix", "is_active", "created_at", "last_used_at")
    list_filter = ("role", "is_active")
    search_fields = ("name",)
    readonly_fields = ("token_hash", "token_prefix", "created_at", "last_used_at")
    actions = ("issue_new_token",)

    def get_fields(self, request, obj=None):
        # Adding a client asks for its name and role only: the token is made by the service.
        if obj is None:
            return ("name", "role")
        return super().get_fields(request, obj)

    def save_model(self, request, obj: ApiClient, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        client, token = create_api_client(obj.name, obj.role)
        obj.pk = client.pk
        obj.refresh_from_db()
        messages.warning(request, f"Bearer token of {client.name} (shown only now, copy it): {token}")

    @admin.action(description="Issue a new token (the old one stops working)")
    def issue_new_token(self, request, queryset) -> None:
        for client in queryset:
            _, token = create_api_client(client.name, client.role)
            messages.warning(request, f"New bearer token of {client.name} (shown only now, copy it): {token}")
