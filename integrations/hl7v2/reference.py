"""The HL7 v2 reference, from hl7apy: supported versions, field names and data types, code tables,
and the parsing of HL7 dates and times.

hl7apy carries the HL7 definitions of every version (2.1 to 2.8.2). The server uses them to
answer what a field is called (for the ERR segment and the admin: "PID-7 (DATE_TIME_OF_BIRTH,
TS)"), to check coded values against HL7 tables (administrative sex, table 0001), and to read
DT/DTM/TS values (`hl7apy.utils`). Look-ups are cached: they cost nothing after the first.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache

import hl7apy
from django.conf import settings
from hl7apy import utils as hl7apy_utils
from hl7apy.exceptions import ChildNotFound, UnsupportedVersion

# The versions this interface accepts (issue 6: 2.3 to 2.5.1).
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
# Tables are shipped with the newer libraries only; their values are a superset of the older ones'.
_TABLE_VERSION = "2.5.1"


def is_supported_version(version: str) -> bool:
    return version in SUPPORTED_VERSIONS and version in hl7apy.SUPPORTED_LIBRARIES


@lru_cache(maxsize=4096)
def field_description(segment: str, number: int, version: str) -> str:
    """ "PID-7 (DATE_TIME_OF_BIRTH, TS)"; just "ZPI-2" for segments or fields hl7apy does not know."""
    label = f"{segment}-{number}"
    if version not in hl7apy.SUPPORTED_LIBRARIES:
        version = _TABLE_VERSION
    try:
        reference = hl7apy.load_reference(f"{segment}_{number}", "Field", version)
    except (ChildNotFound, UnsupportedVersion, KeyError):
        return label
    # ('leaf'|'sequence', children, datatype, long name, table, max length)
    return f"{label} ({reference[3]}, {reference[2]})"


@lru_cache(maxsize=256)
def table_values(table: str) -> frozenset[str]:
    """The codes of an HL7 table ("HL70001"), empty when hl7apy does not ship it."""
    library = hl7apy.load_library(_TABLE_VERSION)
    entry = library.TABLES.get(table)
    return frozenset(entry[1]) if entry else frozenset()


@dataclass(frozen=True)
class HL7DateTime:
    """A DT/DTM/TS value as read: the moment, how precise it is, and its UTC offset if it had one."""

    moment: dt.datetime
    precision: str  # "year", "month", "day", "minute", "second" (hours count as minutes)
    offset: str  # "+0100", "" when absent

    def fhir_date(self) -> str:
        """FHIR `date`: YYYY, YYYY-MM or YYYY-MM-DD."""
        if self.precision == "year":
            return f"{self.moment.year:04d}"
        if self.precision == "month":
            return f"{self.moment.year:04d}-{self.moment.month:02d}"
        return self.moment.date().isoformat()

    def fhir_datetime(self) -> str:
        """FHIR `dateTime`: a date alone, or date and time with a zone (the value's offset, else
        `BTT_HL7_TIME_ZONE`)."""
        if self.precision in ("year", "month", "day"):
            return self.fhir_date()
        if self.offset:
            sign = 1 if self.offset[0] == "+" else -1
            zone: dt.tzinfo = dt.timezone(
                sign * dt.timedelta(hours=int(self.offset[1:3]), minutes=int(self.offset[3:5]))
            )
        else:
            zone = zoneinfo.ZoneInfo(settings.BTT_HL7_TIME_ZONE)
        moment = self.moment.replace(tzinfo=zone)
        return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")


def parse_datetime(value: str) -> HL7DateTime:
    """Read an HL7 DT, DTM or TS value (`YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`).

    Raises ValueError naming the value when it is not one (hl7apy's parser decides).
    """
    value = value.strip()
    if len(value) == 8 and value.isascii() and value.isdigit():
        # A plain date (a birth date, the common case): what hl7apy's parser makes of it
        # (strptime "%Y%m%d"), without its regular expressions; ValueError for a date that is none.
        return HL7DateTime(dt.datetime(int(value[:4]), int(value[4:6]), int(value[6:])), "day", "")
    info = hl7apy_utils.get_datetime_info(value)
    moment, fmt, offset = info[0], info[1], info[2]
    precision = {
        "%Y": "year",
        "%Y%m": "month",
        "%Y%m%d": "day",
        "%Y%m%d%H": "minute",
        "%Y%m%d%H%M": "minute",
    }.get(fmt, "second")
    return HL7DateTime(moment, precision, offset or "")
