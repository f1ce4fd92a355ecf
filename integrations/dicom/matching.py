"""DICOM attribute matching over the index (PS3.4 C.2.2.2): one set of rules for C-FIND
(`query.py`) and QIDO-RS (`dicomweb/qido.py`).

What lives here, written once:

- the levels of the index (PATIENT, STUDY, SERIES, IMAGE) and the ORM path from a row of one
  level to the entity of a level above (`prefix`);
- the attribute table `INDEXED`: which attribute has an index column at which level, and how it
  is matched (its kind); every other attribute is matched in the levels' DICOM JSON `tags`;
- the reading of a key's values (`parse`): universal matching (no value, or only `*`), Empty
  Value Matching (`""`: the entity has no value), single values, wildcards (`*`, `?`), value
  lists (any value may match), DA / TM / DT ranges (`A-B`, `-B`, `A-`; an upper bound covers its
  whole last component: `2020` is up to 2020-12-31, `1015` up to 10:15:59.999999; a single TM or
  DT value is the period it names). Malformed values raise `MatchError`, which C-FIND answers
  with 0xA900 and QIDO-RS with 400;
- sequence matching (`parse_sequence`, PS3.4 C.2.2.2.6): an item with item keys matches an entity
  when one item of its sequence matches them all; `item_matches` / `shape_sequence` give the
  matching items, restricted to the requested item keys, for a C-FIND response;
- the SQL (`attribute_condition`, `json_condition`): everything is matched in the database, on
  PostgreSQL and SQLite. Person names compare case-insensitively (folding Unicode on both: on
  SQLite through `btt_fold`, see `sql.py`); a name without `=` matches the alphabetic group of a
  stored name. An attribute in `tags` matches when any of its values does (multi-valued ones
  such as Image Type included); a DICOM JSON number compares as a number.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db.models import BooleanField, CharField, Exists, Expression, F, OuterRef, Q
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from integrations.dicom import sql
from integrations.dicom.models import Series

# --- Levels -------------------------------------------------------------------------------------

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS: tuple[str, ...] = (PATIENT, STUDY, SERIES, IMAGE)
_PARENT_FIELD = {STUDY: "patient", SERIES: "study", IMAGE: "series"}


def rank(level: str) -> int:
    """The depth of `level`: PATIENT 0 ... IMAGE 3."""
    return LEVELS.index(level)


def prefix(row_level: str, level: str) -> str:
    """The ORM path prefix from a row of `row_level` to its `level` entity: '' for the row itself,
    'study__patient__' from a series to its patient. `level` must be `row_level` or above it."""
    if rank(level) > rank(row_level):
        raise ValueError(f"{level} is below {row_level}")
    parts = [_PARENT_FIELD[LEVELS[index]] for index in range(rank(row_level), rank(level), -1)]
    return "".join(f"{part}__" for part in parts)


def ancestry(row_level: str) -> tuple[str, ...]:
    """`row_level` and the levels above it, nearest first."""
    return tuple(reversed(LEVELS[: rank(row_level) + 1]))


# --- Kinds of matching ----------------------------------------------------------------------------

TEXT = "text"  # case-sensitive single value or wildcard (AE, CS, LO, SH, ST, LT, UC, UR, UT, AS)
PN = "pn"  # case-insensitive, by component group
UID = "uid"  # single value or list; no wildcards
DATE, TIME, DATETIME = "date", "time", "datetime"  # single value or range
NUMBER = "number"  # numeric equality (IS, DS and the binary numbers)
MODALITIES = "modalities"  # Modalities in Study: any series of the study
SEQUENCE = "sequence"
UNMATCHABLE = "unmatchable"  # bulk binary VRs, attribute tags

_NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
_UNMATCHABLE_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"})


def kind_of_vr(vr: str) -> str:
    """How an attribute of VR `vr` without an index column is matched."""
    vr = vr.split(" or ")[0]
    if vr == "PN":
        return PN
    if vr == "UI":
        return UID
    if vr == "DA":
        return DATE
    if vr == "TM":
        return TIME
    if vr == "DT":
        return DATETIME
    if vr in _NUMERIC_VRS:
        return NUMBER
    if vr == "SQ":
        return SEQUENCE
    if vr in _UNMATCHABLE_VRS:
        return UNMATCHABLE
    return TEXT


# --- The attributes kept as index columns ---------------------------------------------------------


@dataclass(frozen=True)
class IndexedAttribute:
    """An attribute with an index column: its level, the column and how it is matched.

    Modalities in Study has no column of its own: it is matched over the `modality` of the
    study's series (`field` names that column of Series)."""

    keyword: str
    level: str
    field: str
    kind: str

    @property
    def tag(self) -> int:
        return int(tag_for_keyword(self.keyword))


INDEXED: dict[str, IndexedAttribute] = {
    attribute.keyword: attribute
    for attribute in (
        IndexedAttribute("PatientName", PATIENT, "patient_name", PN),
        IndexedAttribute("PatientID", PATIENT, "patient_id", TEXT),
        IndexedAttribute("IssuerOfPatientID", PATIENT, "issuer", TEXT),
        IndexedAttribute("PatientBirthDate", PATIENT, "birth_date", DATE),
        IndexedAttribute("PatientSex", PATIENT, "sex", TEXT),
        IndexedAttribute("StudyInstanceUID", STUDY, "study_instance_uid", UID),
        IndexedAttribute("StudyDate", STUDY, "study_date", DATE),
        IndexedAttribute("StudyTime", STUDY, "study_time", TIME),
        IndexedAttribute("AccessionNumber", STUDY, "accession_number", TEXT),
        IndexedAttribute("StudyID", STUDY, "study_id", TEXT),
        IndexedAttribute("StudyDescription", STUDY, "study_description", TEXT),
        IndexedAttribute("ReferringPhysicianName", STUDY, "referring_physician_name", PN),
        IndexedAttribute("ModalitiesInStudy", STUDY, "modality", MODALITIES),
        IndexedAttribute("NumberOfStudyRelatedSeries", STUDY, "number_of_series", NUMBER),
        IndexedAttribute("NumberOfStudyRelatedInstances", STUDY, "number_of_instances", NUMBER),
        IndexedAttribute("SeriesInstanceUID", SERIES, "series_instance_uid", UID),
        IndexedAttribute("Modality", SERIES, "modality", TEXT),
        IndexedAttribute("SeriesNumber", SERIES, "series_number", NUMBER),
        IndexedAttribute("SeriesDescription", SERIES, "series_description", TEXT),
        IndexedAttribute("BodyPartExamined", SERIES, "body_part_examined", TEXT),
        IndexedAttribute("NumberOfSeriesRelatedInstances", SERIES, "number_of_instances", NUMBER),
        IndexedAttribute("SOPInstanceUID", IMAGE, "sop_instance_uid", UID),
        IndexedAttribute("SOPClassUID", IMAGE, "sop_class_uid", UID),
        IndexedAttribute("InstanceNumber", IMAGE, "instance_number", NUMBER),
        IndexedAttribute("AvailableTransferSyntaxUID", IMAGE, "transfer_syntax_uid", UID),
    )
}
INDEXED_BY_TAG: dict[int, IndexedAttribute] = {attribute.tag: attribute for attribute in INDEXED.values()}


# --- Key values ---------------------------------------------------------------------------------------


class MatchError(ValueError):
    """A key value that cannot be matched: a malformed date, time or number, a binary attribute."""


EMPTY_VALUE = '""'  # Empty Value Matching: two QUOTATION MARK characters
EQ, WILDCARD, RANGE, EMPTY = "eq", "wildcard", "range", "empty"


@dataclass(frozen=True)
class Value:
    """One value of a key, as an entity value is tested against it."""

    op: str  # EQ, WILDCARD, RANGE or EMPTY
    text: str = ""  # EQ, WILDCARD
    number: Decimal | None = None  # EQ of a NUMBER
    low: str = ""  # RANGE; '' is open
    high: str = ""


@dataclass(frozen=True)
class KeyMatch:
    """The values of a key: an entity matches when one of its values matches one of these."""

    kind: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class ItemMatch:
    """A sequence key with item keys (PS3.4 C.2.2.2.6): an entity matches when one item of its
    sequence matches every item key. `keys` are (tag, match) pairs; a universal item key is not
    listed (it only asks for the attribute to be returned)."""

    keys: tuple[tuple[int, KeyMatch | ItemMatch], ...]


def parse(values: Sequence[str], kind: str) -> KeyMatch | None:
    """The match for a key's `values` (stripped, backslash-separated values already split), or
    None for universal matching (no value, or a value of only `*`: C.2.2.2.4 makes a lone `*`
    universal, and for the kinds without wildcards it could match nothing else)."""
    items = [value for value in values if value != ""]
    if not items:
        return None
    if any(value != EMPTY_VALUE and set(value) == {"*"} for value in items):
        return None
    if kind == UNMATCHABLE:
        raise MatchError("attributes of this VR cannot be matched")
    if kind == SEQUENCE:
        raise MatchError("a sequence is matched by its item keys")
    return KeyMatch(kind, tuple(_parse_value(value, kind) for value in items))


def _parse_value(value: str, kind: str) -> Value:
    if value == EMPTY_VALUE:
        return Value(EMPTY)
    if kind == UID:
        return Value(EQ, text=value)
    if kind == NUMBER:
        try:
            number = Decimal(value)
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            raise MatchError(f"{value!r} is not a number")
        return Value(EQ, number=number)
    if kind == DATE:
        return _date_value(value)
    if kind == TIME:
        return _time_value(value)
    if kind == DATETIME:
        return _datetime_value(value)
    return Value(WILDCARD if sql.has_wildcard(value) else EQ, text=value)


# Dates: YYYYMMDD (ACR-NEMA's YYYY.MM.DD read too). A range bound may stop after the year or month.
_DATE = re.compile(r"(\d{4})(\d{2})?(\d{2})?")
_DATE_HELP = "is not a DICOM date (YYYYMMDD) or date range (YYYYMMDD-YYYYMMDD)"


def _date(text: str, value: str, *, bound: bool) -> str:
    digits = text.strip().replace(".", "")
    match = _DATE.fullmatch(digits)
    if (
        match is None
        or (not bound and len(digits) != 8)
        or (match.group(2) and not 1 <= int(match.group(2)) <= 12)
        or (match.group(3) and not 1 <= int(match.group(3)) <= 31)
    ):
        raise MatchError(f"{value!r} {_DATE_HELP}")
    return digits


def _date_value(value: str) -> Value:
    if "-" not in value:
        return Value(EQ, text=_date(value, value, bound=False))
    low, _, high = value.partition("-")
    if not low.strip() and not high.strip():
        raise MatchError(f"{value!r} {_DATE_HELP}")
    low = _date(low, value, bound=True) if low.strip() else ""
    high = _date(high, value, bound=True) if high.strip() else ""
    return Value(RANGE, low=low, high=high + "9" * (8 - len(high)) if high else "")


# Times: HHMMSS.FFFFFF, trailing components optional (the old HH:MM:SS read too).
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_TIME_HELP = "is not a DICOM time (HHMMSS) or time range (HHMMSS-HHMMSS)"


def _time(text: str, value: str) -> str:
    digits = text.strip().replace(":", "")
    match = _TIME.fullmatch(digits)
    if (
        match is None
        or (match.group(4) and not match.group(3))
        or int(match.group(1)) > 23
        or (match.group(2) and int(match.group(2)) > 59)
        or (match.group(3) and int(match.group(3)) > 60)
    ):
        raise MatchError(f"{value!r} {_TIME_HELP}")
    return digits


def _period_end(digits: str, whole_length: int) -> str:
    """The last moment of the period a partial time or date-time names: its missing components
    and fraction filled with 9s (`1015` -> `101599.999999`; as text it sorts after every value
    that starts with `1015`)."""
    whole, _, fraction = digits.partition(".")
    return whole + "9" * (whole_length - len(whole)) + "." + fraction + "9" * (6 - len(fraction))


def _time_value(value: str) -> Value:
    if "-" not in value:
        digits = _time(value, value)
        return Value(RANGE, low=digits, high=_period_end(digits, 6))
    low, _, high = value.partition("-")
    if not low.strip() and not high.strip():
        raise MatchError(f"{value!r} {_TIME_HELP}")
    low = _time(low, value) if low.strip() else ""
    high = _time(high, value) if high.strip() else ""
    return Value(RANGE, low=low, high=_period_end(high, 6) if high else "")


# Date-times: YYYYMMDDHHMMSS.FFFFFF&ZZXX. A UTC offset follows at least the hour (so `2020-2021`
# is a range of years, not 2020 at offset -20:21). The offset of a key is not applied (no timezone
# query adjustment is offered): bounds compare with the stored date-time as written.
_DATETIME = re.compile(r"(\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?)([+-]\d{4})?")
_DATETIME_HELP = "is not a DICOM date-time (YYYYMMDDHHMMSS) or date-time range"


def _datetime(text: str) -> str | None:
    """The date-time `text` without its UTC offset; None when it is not one."""
    match = _DATETIME.fullmatch(text.strip())
    if match is None:
        return None
    digits = match.group(1)
    whole = digits.partition(".")[0]
    if ("." in digits and len(whole) != 14) or (match.group(2) and len(whole) < 10):
        return None
    return digits


def _datetime_value(value: str) -> Value:
    single = _datetime(value)
    if single is not None:
        return Value(RANGE, low=single, high=_period_end(single, 14))
    # A range: the first '-' that leaves a date-time (or nothing) on both sides.
    for index, character in enumerate(value):
        if character != "-":
            continue
        low_text, high_text = value[:index].strip(), value[index + 1 :].strip()
        low = _datetime(low_text) if low_text else ""
        high = _datetime(high_text) if high_text else ""
        if low is not None and high is not None and (low or high):
            return Value(RANGE, low=low, high=_period_end(high, 14) if high else "")
    raise MatchError(f"{value!r} {_DATETIME_HELP}")


def combine_date_time(date: KeyMatch, time: KeyMatch) -> KeyMatch | None:
    """Combined Date-Time range matching (PS3.4 C.2.2.2.5, negotiated by C-FIND extended
    negotiation): a date range and a time range as one DT range, e.g. `20060705-20060707` with
    `1000-1800` is from 2006-07-05 10:00 to 2006-07-07 18:00:59.999999. An open end of the time
    range is the start (or the end) of its day; an open end of the date range stays open. None
    when the keys are not one range each (they are then matched separately)."""
    if len(date.values) != 1 or len(time.values) != 1:
        return None
    day, clock = date.values[0], time.values[0]
    if day.op != RANGE or clock.op != RANGE:
        return None
    low = _first_day(day.low) + clock.low if day.low else ""
    high = ""
    if day.high:
        high = _last_day(day.high) + clock.high if clock.high else _period_end(_last_day(day.high), 14)
    return KeyMatch(DATETIME, (Value(RANGE, low=low, high=high),))


def _first_day(bound: str) -> str:
    """A date range's lower bound as a whole date (`2020` -> `20200101`)."""
    return bound + "0101"[len(bound) - 4 :] if len(bound) < 8 else bound


def _last_day(bound: str) -> str:
    """A date range's upper bound as a whole date: the padded `20209999` -> `20201231`,
    `20200299` -> `20200229`."""
    year, month, day = bound[:4], bound[4:6], bound[6:8]
    if month == "99":
        return year + "1231"
    if day == "99":
        return year + month + str(calendar.monthrange(int(year), int(month))[1])
    return bound


def parse_sequence(items: Sequence[Any]) -> ItemMatch | None:
    """The match for a sequence key (a pydicom Sequence of at most one item): None when it is
    universal (no item, an empty item, or only universal item keys), else its ItemMatch."""
    if not items:
        return None
    keys: list[tuple[int, KeyMatch | ItemMatch]] = []
    for element in items[0]:
        if element.tag.element == 0:
            continue
        vr = str(element.VR)
        if vr == "SQ":
            nested = parse_sequence(element.value or [])
            if nested is not None:
                keys.append((int(element.tag), nested))
            continue
        try:
            match = parse(element_values(element), kind_of_vr(vr))
        except MatchError as exc:
            raise MatchError(f"{element.keyword or element.tag}: {exc}") from None
        if match is not None:
            keys.append((int(element.tag), match))
    return ItemMatch(tuple(keys)) if keys else None


def element_values(element: Any) -> list[str]:
    """A key element's values as strings: backslash-separated values split, padding removed
    (trailing only for person names, where leading spaces may be significant); [] for none."""
    value = element.value
    if value is None:
        return []
    if isinstance(value, bytes):
        items = value.decode("latin-1").split("\\")
    elif isinstance(value, MultiValue | list | tuple):
        items = ["" if item is None else str(item) for item in value]
    else:  # str, PersonName, numbers
        items = str(value).split("\\")
    if str(element.VR) == "PN":
        items = [item.rstrip(" \0") for item in items]
    else:
        items = [item.strip(" \0") for item in items]
    return [item for item in items if item != ""]


# --- The same tests in Python (to shape the items of a sequence in a C-FIND response) ---------------


def value_matches(match: KeyMatch, values: Sequence[Any]) -> bool:
    """Whether an entity's `values` (strings or numbers; PN values joined by `=`) match."""
    present = [value for value in values if value not in (None, "")]
    for key_value in match.values:
        if key_value.op == EMPTY:
            if not present:
                return True
            continue
        if any(_one_matches(match.kind, key_value, value) for value in present):
            return True
    return False


def _one_matches(kind: str, key_value: Value, value: Any) -> bool:
    if kind == NUMBER:
        try:
            return Decimal(str(value)) == key_value.number
        except InvalidOperation:
            return False
    text = str(value)
    if key_value.op == RANGE:
        return (not key_value.low or text >= key_value.low) and (not key_value.high or text <= key_value.high)
    if kind == PN:
        return any(
            _text_matches(key_value, candidate, fold=True) for candidate in _name_candidates(key_value, text)
        )
    return _text_matches(key_value, text, fold=False)


def _name_candidates(key_value: Value, name: str) -> list[str]:
    """What a person-name key is compared with: the whole name when the key has component
    groups (`=`), else its alphabetic group only."""
    return [name] if "=" in key_value.text else [name.split("=")[0]]


def _text_matches(key_value: Value, text: str, *, fold: bool) -> bool:
    pattern, candidate = key_value.text, text
    if fold:
        pattern, candidate = sql.fold_case(pattern), sql.fold_case(candidate)
    if key_value.op == WILDCARD:
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        return re.fullmatch(regex, candidate, re.DOTALL) is not None
    return candidate == pattern


def item_matches(match: ItemMatch, item: dict) -> bool:
    """Whether one DICOM JSON item (a sequence item of `tags`) matches every item key."""
    for tag, key in match.keys:
        element = item.get(f"{tag:08X}") or {}
        if isinstance(key, ItemMatch):
            if not any(
                isinstance(sub, dict) and item_matches(key, sub) for sub in element.get("Value") or []
            ):
                return False
        elif not value_matches(key, json_values(element)):
            return False
    return True


def json_values(element: dict | None) -> list[Any]:
    """The values of a DICOM JSON element; a person name as its groups joined by `=`."""
    out: list[Any] = []
    for value in (element or {}).get("Value") or []:
        if isinstance(value, dict):
            groups = [value.get(group, "") for group in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            out.append("=".join(groups))
        else:
            out.append(value)
    return out


# --- SQL ----------------------------------------------------------------------------------------------


def attribute_condition(row_level: str, attribute: IndexedAttribute, match: KeyMatch) -> Q:
    """The condition on rows of `row_level` for an indexed attribute of that level or above."""
    if attribute.kind != MODALITIES:
        return Q(ColumnMatch(F(prefix(row_level, attribute.level) + attribute.field), match))
    # Modalities in Study: some series of the study has a matching modality; `""`: none has one.
    found, empty = _split_empty(match)
    study_series = Series.objects.filter(study_id=OuterRef(f"{prefix(row_level, STUDY)}pk"))
    alternatives = []
    if found is not None:
        modality = ColumnMatch(F(attribute.field), KeyMatch(TEXT, found.values))
        alternatives.append(Q(Exists(study_series.filter(modality))))
    if empty:
        alternatives.append(~Q(Exists(study_series.exclude(**{attribute.field: ""}))))
    return _any_of(alternatives)


def json_condition(row_level: str, levels: Iterable[str], tag: int, match: KeyMatch | ItemMatch) -> Q:
    """The condition on rows of `row_level` for an attribute kept in the `tags` of `levels` (the
    row's own and its parents'): a value matches wherever it is found; `""` (Empty Value
    Matching) needs the attribute to have no value at any of them."""
    sources = [F(f"{prefix(row_level, level)}tags") for level in levels if rank(level) <= rank(row_level)]
    found, empty = (match, False) if isinstance(match, ItemMatch) else _split_empty(match)
    alternatives = []
    if found is not None:
        alternatives.append(_any_of([Q(JsonMatch(source, tag, found)) for source in sources]))
    if empty:
        nowhere = Q()
        for source in sources:
            nowhere &= Q(JsonMatch(source, tag, KeyMatch(match.kind, (Value(EMPTY),))))
        alternatives.append(nowhere)
    return _any_of(alternatives)


def _any_of(conditions: list[Q]) -> Q:
    if not conditions:
        return Q(pk__in=[])  # matches nothing
    combined = conditions[0]
    for condition in conditions[1:]:
        combined |= condition
    return combined


def _split_empty(match: KeyMatch) -> tuple[KeyMatch | None, bool]:
    """`match` without its Empty Value Matching value (None when nothing else is left), and
    whether it had one."""
    found = tuple(value for value in match.values if value.op != EMPTY)
    return (KeyMatch(match.kind, found) if found else None), len(found) != len(match.values)


class _MatchExpression(Expression):
    output_field = BooleanField()

    def __init__(self, source: Any, *args: Any) -> None:
        super().__init__()
        self.source = source

    def get_source_expressions(self) -> list[Any]:
        return [self.source]

    def set_source_expressions(self, expressions: list[Any]) -> None:
        (self.source,) = expressions


class ColumnMatch(_MatchExpression):
    """A column (or any text / number expression) matches a KeyMatch."""

    def __init__(self, source: Any, match: KeyMatch) -> None:
        super().__init__(source, match)
        self.match = match

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list]:
        column, params = compiler.compile(self.source)
        if params:  # the tests repeat the column's SQL: its parameters would have to repeat too
            raise ValueError(f"ColumnMatch needs an expression without parameters, not {column}")
        return _key_sql(column, self.match, connection.vendor)


class Joined(Expression):
    """Two text columns written one after the other (`study_date || study_time`): the date-time
    that combined date-time matching compares. The index's text columns are never NULL."""

    output_field = CharField()

    def __init__(self, first: Any, second: Any) -> None:
        super().__init__()
        self.first, self.second = first, second

    def get_source_expressions(self) -> list[Any]:
        return [self.first, self.second]

    def set_source_expressions(self, expressions: list[Any]) -> None:
        self.first, self.second = expressions

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list]:
        first, first_params = compiler.compile(self.first)
        second, second_params = compiler.compile(self.second)
        return f"({first} || {second})", [*first_params, *second_params]


class JsonMatch(_MatchExpression):
    """The attribute `tag` of a DICOM JSON `tags` column matches a KeyMatch or an ItemMatch."""

    def __init__(self, source: Any, tag: int, match: KeyMatch | ItemMatch) -> None:
        super().__init__(source, tag, match)
        self.tag = tag
        self.match = match

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list]:
        column, params = compiler.compile(self.source)
        condition, condition_params = _json_sql(column, self.tag, self.match, connection.vendor, depth=1)
        return condition, [*params, *condition_params]


def _json_sql(
    source: str, tag: int, match: KeyMatch | ItemMatch, vendor: str, depth: int
) -> tuple[str, list]:
    """SQL for the attribute `tag` of the DICOM JSON object `source` matching `match`."""
    alias = f"btt_j{depth}"
    elements, params = sql.json_elements(source, f"{tag:08X}", alias, vendor)
    if isinstance(match, ItemMatch):
        item = sql.json_item(alias, vendor)
        parts, part_params = [], []
        for item_tag, item_match in match.keys:
            part, more = _json_sql(item, item_tag, item_match, vendor, depth + 1)
            parts.append(part)
            part_params += more
        return f"EXISTS (SELECT 1 FROM {elements} WHERE {' AND '.join(parts)})", [*params, *part_params]
    value = sql.json_value(alias, vendor, number=match.kind == NUMBER, person_name=match.kind == PN)
    found = [v for v in match.values if v.op != EMPTY]
    clauses, clause_params = [], []
    if found:
        condition, condition_params = _key_sql(value, KeyMatch(match.kind, tuple(found)), vendor)
        clauses.append(f"EXISTS (SELECT 1 FROM {elements} WHERE {condition})")
        clause_params += [*params, *condition_params]
    if len(found) != len(match.values):
        present = f"{value} IS NOT NULL" + ("" if match.kind == NUMBER else f" AND {value} <> ''")
        clauses.append(f"NOT EXISTS (SELECT 1 FROM {elements} WHERE {present})")
        clause_params += params
    return "(" + " OR ".join(clauses) + ")", clause_params


def _key_sql(column: str, match: KeyMatch, vendor: str) -> tuple[str, list]:
    """OR of the values of `match` tested on the SQL expression `column`."""
    clauses: list[str] = []
    params: list[Any] = []
    equal = [v.text for v in match.values if v.op == EQ and match.kind in (UID, TEXT, DATE)]
    if len(equal) > 1:
        clauses.append(f"{column} IN ({', '.join(['%s'] * len(equal))})")
        params += equal
    for key_value in match.values:
        if len(equal) > 1 and key_value.op == EQ and match.kind in (UID, TEXT, DATE):
            continue
        clause, clause_params = _value_sql(column, match.kind, key_value, vendor)
        clauses.append(clause)
        params += clause_params
    return "(" + " OR ".join(clauses) + ")", params


def _value_sql(column: str, kind: str, key_value: Value, vendor: str) -> tuple[str, list]:
    op = key_value.op
    if op == EMPTY:
        if kind == NUMBER:
            return f"{column} IS NULL", []
        return f"({column} IS NULL OR {column} = '')", []
    if kind == NUMBER:
        number: Any = key_value.number
        if number == number.to_integral_value():
            number = int(number)
        elif vendor == "sqlite":
            number = float(number)  # sqlite3 binds a Decimal as text, which equals no number
        return f"{column} = %s", [number]
    if op == RANGE:
        clause, params = f"{column} <> ''", []
        if key_value.low:
            clause += f" AND {column} >= %s"
            params.append(key_value.low)
        if key_value.high:
            clause += f" AND {column} <= %s"
            params.append(key_value.high)
        return f"({clause})", params
    if kind != PN:
        if op == WILDCARD:
            return sql.wildcard_sql(column, key_value.text, vendor, fold=False)
        return f"{column} = %s", [key_value.text]
    # Person names: case-insensitive; a key without '=' matches the alphabetic group only.
    text = key_value.text

    def name(pattern: str) -> tuple[str, list]:
        if sql.has_wildcard(pattern):
            return sql.wildcard_sql(column, pattern, vendor, fold=True)
        return sql.folded_equal_sql(column, pattern, vendor)

    if "=" in text:
        return name(text)
    whole, whole_params = name(text)
    grouped, grouped_params = name(text + "=*")
    if op == WILDCARD:
        groups, groups_params = name("*=*")
        return (
            f"(({whole} AND NOT ({groups})) OR {grouped})",
            [*whole_params, *groups_params, *grouped_params],
        )
    return f"({whole} OR {grouped})", [*whole_params, *grouped_params]


# --- C-FIND responses: the items of a matched sequence --------------------------------------------


def shape_sequence(element: dict | None, requested: Sequence[Any], match: ItemMatch | None) -> list[dict]:
    """The items of a stored sequence (DICOM JSON) for a C-FIND response to a sequence key whose
    item holds the `requested` item key elements (pydicom elements): the items that match
    `match` (every item when None), each with only the requested attributes (zero length where
    the item has none; nested sequence keys shaped the same way). With no item keys requested,
    the whole sequence is returned (C.2.2.2.6 universal matching)."""
    items = [item for item in (element or {}).get("Value") or [] if isinstance(item, dict)]
    if match is not None:
        items = [item for item in items if item_matches(match, item)]
    if not requested:
        return items
    shaped = []
    for item in items:
        out: dict = {}
        for key in requested:
            tag = f"{int(key.tag):08X}"
            vr = str(key.VR)
            if vr == "SQ":
                nested_keys = [e for e in (key.value[0] if key.value else []) if e.tag.element != 0]
                nested_match = parse_sequence(key.value or [])
                out[tag] = {"vr": "SQ", "Value": shape_sequence(item.get(tag), nested_keys, nested_match)}
                continue
            out[tag] = item.get(tag) or {"vr": vr.split(" or ")[0]}
        shaped.append(out)
    return shaped
