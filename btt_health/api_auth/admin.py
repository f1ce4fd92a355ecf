from django.contrib import admin

from btt_health.api_auth.models import ApiClient


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ("name", "role", "token_prefix", "is_active", "created_at", "last_used_at")
    list_filter = ("role", "is_active")
    search_fields = ("name",)
    readonly_fields = ("token_hash", "token_prefix", "created_at", "last_used_at")
