"""Typed search values extracted from a resource for one search parameter.

This is the contract between `searchparams` (which evaluates each SearchParameter's FHIRPath
expression against a resource and turns the matched elements into these values) and `indexing`
(which writes them into the index tables that searches query). All datetimes are timezone-aware
UTC; a value's `low`/`high` give the range the element covers (a date `2020-01` covers the whole
month, a decimal `5.4` covers [5.35, 5.45) by its implicit precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None
    code: str | None
    # Display text of the coding or the CodeableConcept.text, for the :text modifier.
    text: str | None = None


@dataclass(frozen=True, slots=True)
class StringValue:
    value: str


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    # For a relative or absolute RESTful reference: its type and id ("Patient", "123");
    # `url` keeps the literal reference (or canonical URL, with any |version removed).
    target_type: str | None
    target_id: str | None
    url: str | None
    # Reference.identifier, for the :identifier modifier.
    identifier_system: str | None = None
    identifier_value: str | None = None


@dataclass(frozen=True, slots=True)
class DateValue:
    low: datetime | None  # None means unbounded (e.g. a Period without a start)
    high: datetime | None


@dataclass(frozen=True, slots=True)
class NumberValue:
    value: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True, slots=True)
class QuantityValue:
    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None
    code: str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class UriValue:
    uri: str


SimpleValue = TokenValue | StringValue | ReferenceValue | DateValue | NumberValue | QuantityValue | UriValue


@dataclass(frozen=True, slots=True)
class CompositeValue:
    # One tuple entry per component of the composite SearchParameter, in definition order; each
    # holds the values that component's expression found within the same matched element.
    components: tuple[tuple[SimpleValue, ...], ...]


SearchValue = SimpleValue | CompositeValue
