from __future__ import annotations

from django.db import models


class ApiClient(models.Model):
    """A system that calls the APIs with a bearer token (an EHR, a PACS bridge, a script).

    Only the SHA-256 of the token is stored: tokens are 256-bit random strings, so a fast hash is
    enough to make a leaked table useless, and it keeps the per-request lookup cheap.
    """

    class Role(models.TextChoices):
        ADMIN = "admin", "Administrator (everything)"
        HOSPITAL_IT = "hospital_it", "Hospital IT (read and write clinical data)"
        CLINICIAN = "clinician", "Clinician (read and write clinical data)"
        READER = "reader", "Read-only"

    name = models.CharField(max_length=200, unique=True)
    role = models.CharField(max_length=32, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(max_length=12, help_text="First characters of the token, to recognise it")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API client"

    def __str__(self) -> str:
        return f"{self.name} ({self.role})"
