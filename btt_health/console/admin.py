"""The admin console's parts owned by the console: users with their role and organizations,
organizations, worker heartbeats, and the status page (`/admin/status`).

The DICOM node's and the AI pipeline's own admin pages (remote AEs, models, routing rules,
inference jobs with retry) are registered by their apps; API clients by `btt_health.api_auth`.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from btt_health.celery import app as celery_app
from btt_health.console import accounts, status
from btt_health.console.models import Membership, Organization, Profile, WorkerHeartbeat

User = get_user_model()

admin.site.site_header = "BTT Health console"
admin.site.site_title = "BTT Health console"
admin.site.index_title = "Run the integration server"
admin.site.index_template = "console/admin_index.html"


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ("name", "ae_titles", "fhir_organization_id", "members", "created_at")
    search_fields = ("name", "ae_titles")
    readonly_fields = ("fhir_organization_id", "created_at")
    inlines = (MembershipInline,)

    @admin.display(description="members")
    def members(self, organization: Organization) -> int:
        return organization.memberships.count()

    def save_model(self, request, obj: Organization, form, change) -> None:
        # The FHIR Organization is written with it (accounts.create_organization's contract).
        accounts.ensure_fhir_organization(obj)
        super().save_model(request, obj, form, change)


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ("role", "fhir_practitioner_id")
    readonly_fields = ("fhir_practitioner_id",)


class UserMembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    verbose_name = "organization"
    verbose_name_plural = "organizations (the patients this user may see)"


admin.site.unregister(User)


@admin.register(User)
class ConsoleUserAdmin(UserAdmin):
    list_display = ("username", "first_name", "last_name", "role", "organizations", "is_active", "last_login")
    list_filter = ("profile__role", "is_active", "memberships__organization")
    inlines = (ProfileInline, UserMembershipInline)

    @admin.display(description="role")
    def role(self, user) -> str:
        return accounts.role_of(user) or "—"

    @admin.display(description="organizations")
    def organizations(self, user) -> str:
        return ", ".join(m.organization.name for m in user.memberships.select_related("organization"))

    def get_readonly_fields(self, request, obj=None):
        # Only superusers grant superuser status, groups or single permissions: hospital IT
        # manages users without being able to raise anyone's rights (their own included).
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ["is_superuser", "is_staff", "groups", "user_permissions"]
        return fields

    def save_related(self, request, form, formsets, change) -> None:
        super().save_related(request, form, formsets, change)
        user = form.instance
        profile = Profile.objects.filter(user=user).first()
        if profile is not None and (request.user.is_superuser or profile.role != "admin"):
            accounts.set_role(user, profile.role)
        elif profile is not None:
            messages.warning(request, "only a superuser can make someone an administrator")
            accounts.set_role(user, "clinician")


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("hostname", "pid", "queues", "concurrency", "started_at", "last_seen_at", "stopped_at")
    search_fields = ("hostname",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def status_view(request: HttpRequest) -> HttpResponse:
    """`/admin/status`: ingest, queues, workers, AI jobs and recent errors (staff only)."""
    context = {
        **admin.site.each_context(request),
        "title": "System status",
        "status": status.collect(celery_app),
    }
    return TemplateResponse(request, "console/admin_status.html", context)
