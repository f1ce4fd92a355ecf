"""Parsing of FHIR instants given as request parameters (`_since`, `_at`)."""

from __future__ import annotations

from datetime import UTC, datetime

from integrations.fhir.outcomes import FhirError


def parse_instant_param(name: str, value: str) -> datetime:
    """A timezone-aware datetime from a FHIR date/dateTime/instant; 400 naming `name` if invalid.

    A value without a time zone is taken as UTC; a date alone means its start.
    """
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FhirError.single(
            400, "value", f"{name}: {value!r} is not a valid FHIR instant (e.g. 2024-01-31T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
