"""Subscribers of the HL7 v2 interface to the server's events (btt_health/events.py)."""

from __future__ import annotations


def on_report_finalised(payload: dict) -> None:
    """`report_finalised`: queue one ORU^R01 per enabled destination (see `services.queue_report`)."""
    from integrations.hl7v2 import services

    services.queue_report(payload)
