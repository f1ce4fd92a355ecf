"""Parsing of search parameter values: escapes, prefixes, dates and numbers with their precision.

Every parser raises `FhirError` 400 naming the parameter and the offending value, so a client
learns which part of its query was wrong.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from integrations.fhir.dates import fhir_date_range
from integrations.fhir.outcomes import FhirError

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

_SPACE_OFFSET = re.compile(r" (\d{2}:\d{2})$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def bad_value(param: str, value: str, why: str) -> FhirError:
    """400 naming the parameter and the value it could not use."""
    return FhirError.single(400, "value", f"search parameter '{param}': invalid value '{value}': {why}")


def split_unescaped(text: str, separator: str) -> list[str]:
    r"""Split on `separator` where it is not escaped with a backslash (`\,` `\$` `\|`).

    Escapes are kept in the parts, so a part can be split again on another separator; call
    `unescape` on the final pieces.
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    r"""Remove search escapes: `\,` `\$` `\|` `\\` become the character itself."""
    if "\\" not in text:
        return text
    return re.sub(r"\\([,$|\\])", r"\1", text)


def split_prefix(value: str) -> tuple[str, str]:
    """('gt', '100') for 'gt100'; ('eq', value) when there is no prefix.

    A value starting with two letters that are not a known prefix is refused for ordered types
    (dates, numbers, quantities never start with letters).
    """
    head = value[:2]
    if head in PREFIXES:
        return head, value[2:]
    return "eq", value


def parse_date_range(param: str, value: str) -> tuple[datetime, datetime]:
    """The half-open UTC range [low, high) a search date covers, given its precision.

    `2020` covers the year, `2020-03-04T10:00` the minute, `...:05.123` the millisecond. A
    time without a timezone is taken as UTC.
    """
    # An unencoded '+' of a timezone arrives as a space after form decoding; take it back.
    covered = fhir_date_range(_SPACE_OFFSET.sub(r"+\1", value))
    if covered is None:
        raise bad_value(
            param,
            value,
            "not a valid FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|+hh:mm])",
        )
    low, high = covered
    return low, high if high is not None else datetime.max.replace(tzinfo=UTC)


def parse_number(param: str, value: str) -> tuple[Decimal, Decimal, Decimal]:
    """(value, low, high): the number and the half-open range its precision implies.

    `100` covers [99.5, 100.5), `100.00` covers [99.995, 100.005), `1e2` covers [50, 150).
    """
    if not _NUMBER_RE.match(value):
        raise bad_value(param, value, "not a number")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise bad_value(param, value, "not a number") from None
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):
        raise bad_value(param, value, "not a finite number")
    half = Decimal((0, (5,), exponent - 1))
    return number, number - half, number + half


def parse_bool(param: str, value: str) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise bad_value(param, value, "expected true or false")
