"""The AI pipeline in the admin console: models (enable/disable, re-scan), routing rules, jobs (filters,
retry, sweep), trust weights, de-identified studies."""

from __future__ import annotations

from django.contrib import admin, messages

from ai_pipeline import jobs
from ai_pipeline.models import (
    AIModel,
    DeidentifiedStudy,
    InferenceJob,
    OutsideDispatch,
    RoutingRule,
    TrustWeights,
)
from ai_pipeline.registry import sync_registry


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "version",
        "enabled",
        "status",
        "specialty",
        "clinical_use",
        "verified_at",
        "path",
    )
    list_filter = ("enabled", "status", "specialty", "clinical_use")
    search_fields = ("name", "version", "title", "sha256")
    list_editable = ("enabled",)
    readonly_fields = (
        "name",
        "version",
        "sha256",
        "manifest",
        "path",
        "status",
        "status_detail",
        "title",
        "specialty",
        "clinical_use",
        "registered_at",
        "updated_at",
        "verified_at",
    )
    actions = ("enable", "disable", "rescan")

    def has_add_permission(self, request) -> bool:
        return False  # models come from the model folders (re-scan)

    @admin.action(description="Enable the selected models")
    def enable(self, request, queryset) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable the selected models")
    def disable(self, request, queryset) -> None:
        queryset.update(enabled=False)

    @admin.action(description="Re-scan the model folders (BTT_MODEL_DIR)")
    def rescan(self, request, queryset) -> None:
        result = sync_registry()
        self.message_user(
            request,
            f"{len(result.registered)} model(s) available, {len(result.refused)} refused, {len(result.missing)} missing",
        )
        for folder, reason in result.refused:
            self.message_user(request, f"{folder}: {reason}", level=messages.ERROR)


@admin.register(RoutingRule)
class RoutingRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "enabled",
        "model_name",
        "model_version",
        "modality",
        "body_part",
        "sop_class_uid",
        "calling_ae",
        "order_code",
        "specialty",
        "priority",
        "outside",
        "dicom_sr",
        "result_destinations",
    )
    list_filter = ("enabled", "modality", "model_name", "priority", "outside", "dicom_sr")
    search_fields = ("name", "model_name", "order_code", "calling_ae")


@admin.register(InferenceJob)
class InferenceJobAdmin(admin.ModelAdmin):
    list_display = (
        "study_instance_uid",
        "model_name",
        "model_version",
        "state",
        "short_reason",
        "priority",
        "outside",
        "trust_score",
        "attempts",
        "worker",
        "queued_at",
        "started_at",
        "finished_at",
        "queue_seconds",
        "run_seconds",
        "diagnostic_report_id",
    )
    list_filter = ("state", "priority", "outside", "model_name", "model_version", "queued_at")
    search_fields = (
        "study_instance_uid",
        "accession_number",
        "model_name",
        "diagnostic_report_id",
        "worker",
        "reason",
    )
    date_hierarchy = "queued_at"
    actions = ("retry", "sweep")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="reason")
    def short_reason(self, job: InferenceJob) -> str:
        return job.reason if len(job.reason) <= 80 else job.reason[:79] + "…"

    @admin.action(description="Retry the selected failed jobs")
    def retry(self, request, queryset) -> None:
        retried, refused = 0, []
        for job_id in queryset.values_list("pk", flat=True):
            try:
                jobs.retry_job(job_id, requested_by=f"admin user {request.user.get_username()}")
                retried += 1
            except (jobs.JobNotRetryable, jobs.JobNotFound) as exc:
                refused.append(str(exc))
        self.message_user(request, f"{retried} job(s) queued again")
        for message in refused:
            self.message_user(request, message, level=messages.WARNING)

    @admin.action(description="Re-queue stuck jobs now (all jobs, not only the selected)")
    def sweep(self, request, queryset) -> None:
        result = jobs.requeue_stuck_jobs()
        self.message_user(
            request,
            f"{len(result.unpublished)} never published, {len(result.lost)} lost, "
            f"{len(result.overdue)} running past the time limit: re-queued",
        )


@admin.register(TrustWeights)
class TrustWeightsAdmin(admin.ModelAdmin):
    list_display = ("specialty", "alpha", "beta", "gamma", "note", "updated_at")


@admin.register(DeidentifiedStudy)
class DeidentifiedStudyAdmin(admin.ModelAdmin):
    """The re-identification keys of studies sent outside: read only (they are made by the pipeline)."""

    list_display = ("study_instance_uid", "deidentified_study_uid", "patient_pseudonym", "created_at")
    search_fields = ("study_instance_uid", "deidentified_study_uid", "patient_pseudonym")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(OutsideDispatch)
class OutsideDispatchAdmin(admin.ModelAdmin):
    """Outside jobs handed out (ai_pipeline/outside.py): read only; the token itself is never stored."""

    list_display = ("ref", "job", "active", "created_at", "downloaded_at", "result_at", "expires_at")
    list_filter = ("active",)
    search_fields = ("ref", "job__study_instance_uid", "deidentified_study_uid")
    exclude = ("token_sha256",)

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in self.model._meta.fields if field.name != "token_sha256"]

    def has_add_permission(self, request) -> bool:
        return False
