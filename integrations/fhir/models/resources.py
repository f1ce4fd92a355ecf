"""The versioned FHIR resource store.

`ResourceRecord` is the head: one row per (type, id) holding the current version, which is what
reads, searches and index rows point at. `ResourceVersion` keeps every version ever written,
including deletions, for vread and history. Resource bodies are kept as the exact JSON text
served to clients (with `id` and `meta` filled in), so a read returns stored bytes without
parsing or re-serialising them.
"""

from __future__ import annotations

from django.db import models


class ResourceRecord(models.Model):
    id = models.BigAutoField(primary_key=True)
    resource_type = models.CharField(max_length=64)
    logical_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    deleted = models.BooleanField(default=False)
    # The current version's JSON text; empty when the resource is deleted.
    text = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["resource_type", "logical_id"], name="fhir_resource_type_id_unique"
            )
        ]
        indexes = [
            models.Index(fields=["resource_type", "deleted", "last_updated"], name="fhir_res_type_updated"),
            models.Index(fields=["last_updated"], name="fhir_res_updated"),
            # Searches page in record-id order within a type: this lets the database walk the live
            # records of a type in that order from the index alone.
            models.Index(
                fields=["resource_type", "id"],
                condition=models.Q(deleted=False),
                name="fhir_res_live_type_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.logical_id} v{self.version_id}"


class ResourceVersion(models.Model):
    class Method(models.TextChoices):
        CREATE = "POST", "create"
        UPDATE = "PUT", "update"
        PATCH = "PATCH", "patch"
        DELETE = "DELETE", "delete"

    id = models.BigAutoField(primary_key=True)
    # No single-column index: the unique (record, version_id) index below serves every look-up by
    # record (history, the cascade delete), and one index fewer to write per version.
    record = models.ForeignKey(
        ResourceRecord, on_delete=models.CASCADE, related_name="versions", db_index=False
    )
    resource_type = models.CharField(max_length=64)
    logical_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField()
    last_updated = models.DateTimeField()
    method = models.CharField(max_length=8, choices=Method.choices)
    # The version's JSON text; empty for a deletion.
    text = models.TextField(blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["record", "version_id"], name="fhir_version_unique")]
        indexes = [
            models.Index(fields=["resource_type", "last_updated"], name="fhir_ver_type_updated"),
            models.Index(fields=["last_updated"], name="fhir_ver_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.logical_id}/_history/{self.version_id}"

    @property
    def deleted(self) -> bool:
        return self.method == self.Method.DELETE
