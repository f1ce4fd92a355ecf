"""The DICOM node's index: remote AEs, and the Patient / Study / Series / Instance hierarchy.

Instance files live in the instance storage (`storage.py`); these tables index them for C-FIND,
QIDO-RS, retrieval and the FHIR ImagingStudy. Each level keeps its main attributes as columns
for matching and the level's attributes as DICOM JSON (`tags`) for returning them.
"""

from __future__ import annotations

from django.db import models


class RemoteAE(models.Model):
    """A DICOM peer (PACS, modality, workstation) and what it may do with this node."""

    ae_title = models.CharField(max_length=16, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    allow_store = models.BooleanField(default=True, help_text="may send us objects (C-STORE)")
    allow_find = models.BooleanField(default=True, help_text="may query us (C-FIND)")
    allow_move = models.BooleanField(
        default=True, help_text="may retrieve with C-MOVE, and be a C-MOVE destination"
    )
    allow_get = models.BooleanField(default=True, help_text="may retrieve with C-GET")
    use_tls = models.BooleanField(default=False, help_text="connect to it over DICOM TLS")
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "remote AE"
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomPatient(models.Model):
    patient_id = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True, default="")
    patient_name = models.CharField(max_length=324, blank=True, default="")
    birth_date = models.CharField(max_length=8, blank=True, default="")
    sex = models.CharField(max_length=16, blank=True, default="")
    # The FHIR Patient this DICOM patient is linked to (logical id), set by ImagingStudy upkeep.
    fhir_patient_id = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["patient_id", "issuer"], name="dicom_patient_unique")]
        indexes = [models.Index(fields=["patient_name"], name="dicom_patient_name")]

    def __str__(self) -> str:
        return f"{self.patient_id} ({self.patient_name})"


class Study(models.Model):
    study_instance_uid = models.CharField(max_length=64, unique=True)
    patient = models.ForeignKey(DicomPatient, on_delete=models.PROTECT, related_name="studies")
    study_date = models.CharField(max_length=8, blank=True, default="")
    study_time = models.CharField(max_length=16, blank=True, default="")
    accession_number = models.CharField(max_length=64, blank=True, default="", db_index=True)
    study_id = models.CharField(max_length=16, blank=True, default="")
    study_description = models.CharField(max_length=64, blank=True, default="")
    referring_physician_name = models.CharField(max_length=324, blank=True, default="")
    modalities_in_study = models.CharField(max_length=128, blank=True, default="")  # backslash-separated
    number_of_series = models.PositiveIntegerField(default=0)
    number_of_instances = models.PositiveIntegerField(default=0)
    tags = models.JSONField(default=dict)
    # Study-complete detection (sliding quiet period, see study_complete.py).
    first_received_at = models.DateTimeField(null=True, blank=True)
    last_received_at = models.DateTimeField(null=True, blank=True, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    awaiting_completion = models.BooleanField(default=False)
    completion_count = models.PositiveIntegerField(default=0)
    # The completion_count whose "study_received" event has been emitted: lower than
    # completion_count while an event is still to be delivered (see study_complete.py).
    emitted_completion_count = models.PositiveIntegerField(default=0)
    # The FHIR ImagingStudy kept current for this study (logical id).
    fhir_imaging_study_id = models.CharField(max_length=64, blank=True, default="")
    calling_ae = models.CharField(max_length=16, blank=True, default="")

    class Meta:
        verbose_name_plural = "studies"
        indexes = [models.Index(fields=["study_date"], name="dicom_study_date")]

    def __str__(self) -> str:
        return self.study_instance_uid


class Series(models.Model):
    series_instance_uid = models.CharField(max_length=64, unique=True)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    modality = models.CharField(max_length=16, blank=True, default="", db_index=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=64, blank=True, default="")
    body_part_examined = models.CharField(max_length=16, blank=True, default="")
    number_of_instances = models.PositiveIntegerField(default=0)
    tags = models.JSONField(default=dict)

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.series_instance_uid


class Instance(models.Model):
    # Unique through `Meta.constraints`: `unique=True` would add a second index on PostgreSQL
    # for LIKE patterns, which UIDs never take (they match whole or from a list), and every
    # stored instance would write an entry into it.
    sop_instance_uid = models.CharField(max_length=64)
    # No index of its own: `dicom_instance_order` starts with it.
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances", db_index=False)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    # Key of the file in the instance storage (see storage.py), and its size in bytes.
    storage_key = models.CharField(max_length=255)
    file_size = models.BigIntegerField()
    received_at = models.DateTimeField()
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    tags = models.JSONField(default=dict)

    class Meta:
        indexes = [
            models.Index(fields=["series", "instance_number"], name="dicom_instance_order"),
            # The storage check (`services.check_storage`) asks which stored files are indexed.
            models.Index(fields=["storage_key"], name="dicom_instance_storage_key"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["sop_instance_uid"], name="dicom_instance_sop_uid_unique")
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid
