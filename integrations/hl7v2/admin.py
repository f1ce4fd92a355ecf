"""The HL7 v2 interface in the admin console.

- Inbound messages: every message received, filterable by state; failed (AE) and rejected (AR)
  ones are the error queue, with the error naming segment and field. Action "reprocess" applies
  the selected failed or rejected messages again (`services.reprocess_message`). Read-only
  otherwise: the raw message is the record of what was received.
- Outbound messages: delivery state, attempts, next attempt, last error and the ACK received.
  Action "retry delivery now" (`services.retry_outbound`).
- Destinations: edited here or with `manage.py add_hl7_destination`.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from integrations.hl7v2 import services
from integrations.hl7v2.models import Hl7Destination, InboundMessage, OutboundMessage


class DestinationForm(forms.ModelForm):
    class Meta:
        model = Hl7Destination
        fields = (
            "name",
            "host",
            "port",
            "use_tls",
            "enabled",
            "receiving_application",
            "receiving_facility",
            "description",
        )

    def clean_port(self) -> int:
        port = self.cleaned_data["port"]
        if not 1 <= port <= 65535:
            raise forms.ValidationError(f"port must be between 1 and 65535, got {port}")
        return port


@admin.register(Hl7Destination)
class Hl7DestinationAdmin(admin.ModelAdmin):
    form = DestinationForm
    list_display = (
        "name",
        "host",
        "port",
        "use_tls",
        "enabled",
        "receiving_application",
        "receiving_facility",
    )
    list_filter = ("enabled", "use_tls")
    search_fields = ("name", "host", "description")
    readonly_fields = ("created_at", "updated_at")


def _pre(text: str):
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', text.replace("\r", "\n"))


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    list_display = (
        "received_at",
        "message_type",
        "control_id",
        "sending_application",
        "sending_facility",
        "state",
        "ack_code",
        "short_error",
        "attempts",
    )
    list_filter = ("state", "message_type", "version", "over_tls")
    search_fields = ("control_id", "sending_application", "sending_facility", "error")
    date_hierarchy = "received_at"
    actions = ("reprocess",)
    fields = (
        "received_at",
        "peer",
        "over_tls",
        "sending_application",
        "sending_facility",
        "control_id",
        "message_type",
        "version",
        "charset",
        "state",
        "error",
        "attempts",
        "processed_at",
        "resources",
        "duplicate_of",
        "message",
        "ack_text",
    )
    readonly_fields = fields

    @admin.display(description="error")
    def short_error(self, obj: InboundMessage) -> str:
        return obj.error[:120]

    @admin.display(description="message as received")
    def message(self, obj: InboundMessage):
        return _pre(obj.text())

    @admin.display(description="ACK sent")
    def ack_text(self, obj: InboundMessage):
        return _pre(obj.ack)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Reprocess the selected failed or rejected messages")
    def reprocess(self, request, queryset) -> None:
        processed = failed = skipped = 0
        for message_id, state in queryset.values_list("pk", "state"):
            if state not in (InboundMessage.State.FAILED, InboundMessage.State.REJECTED):
                skipped += 1
                continue
            row = services.reprocess_message(message_id)
            if row.state == InboundMessage.State.PROCESSED:
                processed += 1
            else:
                failed += 1
                self.message_user(request, f"message {row.control_id}: {row.error}", messages.WARNING)
        self.message_user(
            request,
            f"{processed} processed, {failed} still failing, {skipped} skipped (not failed or rejected)",
            messages.SUCCESS if not failed else messages.WARNING,
        )


@admin.register(OutboundMessage)
class OutboundMessageAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "message_type",
        "control_id",
        "destination",
        "delivery_state",
        "attempts",
        "next_attempt_at",
        "delivered_at",
        "short_error",
    )
    list_filter = ("state", "destination")
    search_fields = ("control_id", "event_id", "diagnostic_report_id", "last_error")
    actions = ("retry_now",)
    fields = (
        "destination",
        "event_id",
        "diagnostic_report_id",
        "message_type",
        "control_id",
        "state",
        "attempts",
        "last_attempt_at",
        "next_attempt_at",
        "delivered_at",
        "last_error",
        "ack_code",
        "payload_text",
        "ack_text",
        "created_at",
    )
    readonly_fields = fields

    @admin.display(description="delivery state", ordering="state")
    def delivery_state(self, obj: OutboundMessage):
        colour = {"delivered": "green", "failed": "#b00", "pending": "#a60"}.get(obj.state, "inherit")
        label = obj.get_state_display()
        if obj.ack_code:
            label += f" - ACK {obj.ack_code}"
        return format_html('<span style="color: {}">{}</span>', colour, label)

    @admin.display(description="last error")
    def short_error(self, obj: OutboundMessage) -> str:
        return obj.last_error[:120]

    @admin.display(description="message")
    def payload_text(self, obj: OutboundMessage):
        return _pre(obj.payload)

    @admin.display(description="ACK received")
    def ack_text(self, obj: OutboundMessage):
        return _pre(obj.ack)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Retry delivery now")
    def retry_now(self, request, queryset) -> None:
        count = services.retry_outbound(list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} message(s) queued for delivery")
