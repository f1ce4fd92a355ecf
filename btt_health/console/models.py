"""Users, organizations and roles of the web console and clinician viewer; worker heartbeats.

- `Organization`: a hospital or department. Each has a FHIR Organization (written through the
  FHIR store by `accounts.create_organization`), and the AE titles of its modalities/PACS.
- `Membership`: which users belong to which organizations. A clinician sees the patients of the
  organizations they are a member of (`access.py` says exactly how a study belongs to one).
- `Profile`: a user's role (clinician, hospital IT, admin) and the FHIR Practitioner that stands
  for them in signed reports.
- `WorkerHeartbeat`, `QueueSample`: written by every Celery worker (`heartbeat.py`) for the admin
  status page.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Organization(models.Model):
    """A hospital (or department) whose patients a group of clinicians may see."""

    name = models.CharField(max_length=200, unique=True)
    fhir_organization_id = models.CharField(
        max_length=64, blank=True, default="", help_text="logical id of its FHIR Organization"
    )
    ae_titles = models.CharField(
        max_length=400,
        blank=True,
        default="",
        help_text="AE titles (comma-separated) of its modalities/PACS: studies they send belong to it "
        "when the patient has no managing organization",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def ae_title_list(self) -> list[str]:
        return [ae.strip() for ae in self.ae_titles.split(",") if ae.strip()]

    @property
    def fhir_reference(self) -> str:
        return f"Organization/{self.fhir_organization_id}" if self.fhir_organization_id else ""


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="console_membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization}"


class Role(models.TextChoices):
    CLINICIAN = "clinician", "Clinician (reads and signs reports)"
    HOSPITAL_IT = "hospital_it", "Hospital IT (runs the system from the admin console)"
    ADMIN = "admin", "Administrator (everything)"


class Profile(models.Model):
    """A web user's role and FHIR Practitioner. Users without a profile have no role."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.CLINICIAN)
    fhir_practitioner_id = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="logical id of the FHIR Practitioner (made at first sign-off)",
    )

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


class WorkerHeartbeat(models.Model):
    """The last sign of life of one Celery worker process (its node name)."""

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField(default=0)
    queues = models.CharField(max_length=400, blank=True, default="")
    concurrency = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return self.hostname


class QueueSample(models.Model):
    """Messages waiting in a broker queue, as one worker saw it at `at` (kept a few hours)."""

    queue = models.CharField(max_length=200)
    depth = models.PositiveIntegerField()
    at = models.DateTimeField(db_index=True)
    hostname = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["queue", "at"], name="console_queue_sample")]

    def __str__(self) -> str:
        return f"{self.queue}: {self.depth} at {self.at:%H:%M:%S}"
