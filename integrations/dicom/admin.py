"""The DICOM node in the admin console: remote AEs to edit, the index to look at.

Remote AEs are edited here as with `manage.py add_dicom_peer` (same validation). The
Patient / Study / Series / Instance index is read-only: it is written by the ingest path
(`services.store_instance`) only, so that it always matches the stored files.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin

from integrations.dicom.models import DicomPatient, Instance, RemoteAE, Series, Study
from integrations.dicom.services import PeerError, validate_ae_title, validate_port


class RemoteAEForm(forms.ModelForm):
    class Meta:
        model = RemoteAE
        fields = (
            "ae_title",
            "host",
            "port",
            "allow_store",
            "allow_find",
            "allow_move",
            "allow_get",
            "use_tls",
            "description",
        )

    def clean_ae_title(self) -> str:
        try:
            return validate_ae_title(self.cleaned_data["ae_title"])
        except PeerError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_port(self) -> int:
        try:
            return validate_port(self.cleaned_data["port"])
        except PeerError as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(RemoteAE)
class RemoteAEAdmin(admin.ModelAdmin):
    form = RemoteAEForm
    list_display = RemoteAEForm.Meta.fields
    list_filter = ("allow_store", "allow_find", "allow_move", "allow_get", "use_tls")
    search_fields = ("ae_title", "host", "description")
    readonly_fields = ("created_at", "updated_at")


class ReadOnlyIndexAdmin(admin.ModelAdmin):
    """The index is written by the ingest path only: view, search, no add / change / delete."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DicomPatient)
class DicomPatientAdmin(ReadOnlyIndexAdmin):
    list_display = ("patient_id", "issuer", "patient_name", "birth_date", "sex", "fhir_patient_id")
    search_fields = ("patient_id", "patient_name")


@admin.register(Study)
class StudyAdmin(ReadOnlyIndexAdmin):
    list_display = (
        "study_instance_uid",
        "patient",
        "study_date",
        "accession_number",
        "modalities_in_study",
        "number_of_series",
        "number_of_instances",
        "last_received_at",
        "completed_at",
    )
    list_filter = ("modalities_in_study",)
    search_fields = ("study_instance_uid", "accession_number", "patient__patient_id", "patient__patient_name")
    list_select_related = ("patient",)
    date_hierarchy = "last_received_at"


@admin.register(Series)
class SeriesAdmin(ReadOnlyIndexAdmin):
    list_display = (
        "series_instance_uid",
        "study",
        "modality",
        "series_number",
        "series_description",
        "body_part_examined",
        "number_of_instances",
    )
    list_filter = ("modality",)
    search_fields = ("series_instance_uid", "study__study_instance_uid")
    list_select_related = ("study",)


@admin.register(Instance)
class InstanceAdmin(ReadOnlyIndexAdmin):
    list_display = (
        "sop_instance_uid",
        "series",
        "instance_number",
        "sop_class_uid",
        "transfer_syntax_uid",
        "file_size",
        "calling_ae",
        "received_at",
    )
    search_fields = ("sop_instance_uid", "series__series_instance_uid")
    list_select_related = ("series",)
    date_hierarchy = "received_at"
