"""FHIR dates: the range a date/dateTime/instant covers, and instants given as parameters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from integrations.fhir.outcomes import FhirError

_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def fhir_date_range(s: str) -> tuple[datetime, datetime | None] | None:
    """Half-open [low, high) covered by a FHIR date/dateTime/instant string; None if invalid."""
    m = _DATE_RE.match(s)
    if m is None:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        year = int(y)
        if mo is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return low, (datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else None)
        month = int(mo)
        if d is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            if month == 12:
                return low, (datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else None)
            return low, datetime(year, month + 1, 1, tzinfo=UTC)
        if hh is None:
            low = datetime(year, month, int(d), tzinfo=UTC)
            step = timedelta(days=1)
        else:
            micro = 0
            if ss is None:
                step = timedelta(minutes=1)
            elif frac is None:
                step = timedelta(seconds=1)
            else:
                digits = frac[:6]
                micro = int(digits.ljust(6, "0"))
                step = timedelta(microseconds=10 ** (6 - len(digits)))
            low = datetime(year, month, int(d), int(hh), int(mi), int(ss or 0), micro, tzinfo=UTC)
            if tz is not None and tz != "Z":
                sign = 1 if tz[0] == "+" else -1
                low -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    except (ValueError, OverflowError):
        return None
    try:
        return low, low + step
    except OverflowError:
        return low, None


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
