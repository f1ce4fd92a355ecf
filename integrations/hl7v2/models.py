"""The HL7 v2 interface's tables: every message received (raw), every message to send, and the
destinations results are sent to.

- `InboundMessage`: one row per message received over MLLP, written (raw bytes as received)
  before anything is done with it; then its state, the error if any, and the ACK that was sent.
  A repeated control ID from the same sender finds the processed row and gets its ACK again.
- `OutboundMessage`: one row per message to deliver to one destination (ORU^R01 per finalised
  report version); the row is the queue: delivery state, attempts, the next attempt's time, the
  last error and the ACK received. Celery tasks only carry its id.
- `Hl7Destination`: a system results are sent to (host, port, TLS), edited in the admin or with
  `manage.py add_hl7_destination`.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class Hl7Destination(models.Model):
    """An MLLP receiver that gets an ORU^R01 for every finalised report."""

    name = models.CharField(max_length=64, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    use_tls = models.BooleanField(default=False, help_text="connect over TLS (verified with BTT_MLLP_TLS_CA)")
    enabled = models.BooleanField(default=True, help_text="send new results to it")
    receiving_application = models.CharField(max_length=180, blank=True, help_text="MSH-5 of what we send")
    receiving_facility = models.CharField(max_length=180, blank=True, help_text="MSH-6 of what we send")
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "HL7 destination"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.host}:{self.port}{', TLS' if self.use_tls else ''})"


class InboundMessage(models.Model):
    """A message received over MLLP, stored raw before it is processed."""

    class State(models.TextChoices):
        RECEIVED = "received", "received (being processed)"
        PROCESSED = "processed", "processed (AA)"
        FAILED = "failed", "failed (AE, in the error queue)"
        REJECTED = "rejected", "rejected (AR)"
        DUPLICATE = "duplicate", "duplicate (answered with the first one's ACK)"

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    peer = models.CharField(max_length=100, blank=True, help_text="address:port it came from")
    over_tls = models.BooleanField(default=False)
    raw = models.BinaryField(help_text="the message as received, without MLLP framing")
    charset = models.CharField(max_length=40, blank=True, help_text="Python codec it was decoded with")
    sending_application = models.CharField(max_length=180, blank=True)  # MSH-3 as sent
    sending_facility = models.CharField(max_length=180, blank=True)  # MSH-4 as sent
    control_id = models.CharField(max_length=199, blank=True)  # MSH-10
    message_type = models.CharField(max_length=40, blank=True)  # MSH-9 code^trigger, e.g. ADT^A01
    version = models.CharField(max_length=20, blank=True)  # MSH-12
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED)
    error = models.TextField(blank=True)
    ack_code = models.CharField(max_length=2, blank=True)
    ack = models.TextField(blank=True, help_text="the ACK sent (or to send again for a repeat)")
    attempts = models.PositiveIntegerField(default=0)
    processed_at = models.DateTimeField(null=True, blank=True)
    resources = models.JSONField(default=list, blank=True, help_text="FHIR resources written")
    duplicate_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        verbose_name = "inbound HL7 message"
        ordering = ["-received_at", "-id"]
        constraints = [
            # At most one processed row per sender and control ID: a repeat answers its ACK, and
            # two copies processed at once cannot both commit.
            models.UniqueConstraint(
                fields=["sending_application", "sending_facility", "control_id"],
                condition=Q(state="processed"),
                name="hl7v2_inbound_processed_once",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "received_at"], name="hl7v2_inbound_state"),
            models.Index(fields=["control_id"], name="hl7v2_inbound_control_id"),
        ]

    def __str__(self) -> str:
        return f"{self.message_type or 'message'} {self.control_id} from {self.sending_application}"

    def text(self) -> str:
        """The raw message decoded for display (its own character set, else Latin-1)."""
        data = bytes(self.raw)
        try:
            return data.decode(self.charset or "utf-8")
        except (UnicodeDecodeError, LookupError):
            return data.decode("latin-1")


class OutboundMessage(models.Model):
    """A message to deliver to one destination; the row is the queue entry."""

    class State(models.TextChoices):
        PENDING = "pending", "pending (to be sent or retried)"
        DELIVERED = "delivered", "delivered (AA/CA)"
        FAILED = "failed", "failed (rejected, or out of attempts)"

    destination = models.ForeignKey(Hl7Destination, on_delete=models.PROTECT, related_name="messages")
    event_id = models.CharField(max_length=200)
    message_type = models.CharField(max_length=40, default="ORU^R01")
    control_id = models.CharField(max_length=20, unique=True)  # our MSH-10, the same on every attempt
    payload = models.TextField(help_text="the message (ER7, segments ended by CR)")
    charset = models.CharField(max_length=40, default="utf-8")
    diagnostic_report_id = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    ack_code = models.CharField(max_length=2, blank=True)
    ack = models.TextField(blank=True, help_text="the ACK the destination answered")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "outbound HL7 message"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "destination"], name="hl7v2_outbound_once_per_event"),
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="hl7v2_outbound_due")]

    def __str__(self) -> str:
        return f"{self.message_type} {self.control_id} to {self.destination.name}"
