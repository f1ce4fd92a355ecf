"""C-FIND matching and C-MOVE / C-GET selection over the DICOM index (PS3.4 Annex C).

Service functions the Query/Retrieve SCP handlers (`scp_query.py`) call; they know nothing of
associations. `find(identifier, model)` answers a C-FIND identifier with the matching entities'
response identifiers; `instances_to_retrieve(identifier, model)` turns a C-MOVE / C-GET
identifier into the instances to send. `is_permitted(ae_title, operation)` applies the remote-AE
permissions.

Matching (PS3.4 C.2.2.2): single value, universal (zero length, or only `*`), wildcard (`*`, `?`),
list of values (backslash-separated; any may match), range on DA / TM / DT (`A-B`, `-B`, `A-`).
Sequence matching is not supported (a sequence key is returned, never matched). It runs in SQL on
the index columns (`models.py`) where an attribute has one: wildcards become `LIKE` patterns,
person names compare case-insensitively (`UPPER(..)`), `ModalitiesInStudy` becomes an `EXISTS`
over the study's series. Attributes without a column are matched in Python against the level's
`tags` (DICOM JSON; the entity's own level first, then its parents), on the rows SQL selected.

Hierarchical model: a C-FIND below the top level of its information model must carry the unique
key of every level above (single value, no wildcard); a C-MOVE / C-GET needs the unique key of its
level (upper-level unique keys, when present, must match too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from integrations.dicom import services
from integrations.dicom.models import DicomPatient, Instance, RemoteAE, Series, Study
from integrations.dicom.sql import DicomWildcard, has_wildcard

# --- Information models and levels -------------------------------------------------------------

PATIENT_ROOT = "PATIENT"
STUDY_ROOT = "STUDY"

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS: tuple[str, ...] = (PATIENT, STUDY, SERIES, IMAGE)
MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT: (PATIENT, STUDY, SERIES, IMAGE),
    STUDY_ROOT: (STUDY, SERIES, IMAGE),
}
UNIQUE_KEYS: dict[str, str] = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}
LEVEL_MODELS = {PATIENT: DicomPatient, STUDY: Study, SERIES: Series, IMAGE: Instance}
# From a row of the first level, the ORM path to the entity of the second (its parent chain).
_PATHS: dict[tuple[str, str], str] = {
    (STUDY, PATIENT): "patient",
    (SERIES, STUDY): "study",
    (SERIES, PATIENT): "study__patient",
    (IMAGE, SERIES): "series",
    (IMAGE, STUDY): "series__study",
    (IMAGE, PATIENT): "series__study__patient",
}

# Query/Retrieve SOP classes this node provides, by information model.
FIND_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT,  # Patient Root Q/R Information Model - FIND
    "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT,  # Study Root Q/R Information Model - FIND
}
MOVE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,  # Patient Root Q/R Information Model - MOVE
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,  # Study Root Q/R Information Model - MOVE
}
GET_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,  # Patient Root Q/R Information Model - GET
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,  # Study Root Q/R Information Model - GET
}
MODEL_OF_SOP_CLASS = {**FIND_SOP_CLASSES, **MOVE_SOP_CLASSES, **GET_SOP_CLASSES}

# --- Status codes (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) -----------------------------------------

STATUS_SUCCESS = 0x0000  # Success
STATUS_PENDING = 0xFF00  # Pending: matches are continuing
STATUS_CANCEL = 0xFE00  # Cancel: matching / sub-operations terminated due to a cancel request
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: Out of resources
STATUS_OUT_OF_RESOURCES_MATCHES = 0xA701  # Refused: Out of resources - unable to calculate matches
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move destination unknown
STATUS_IDENTIFIER_MISMATCH = 0xA900  # Failed: Identifier does not match SOP Class
STATUS_UNABLE_TO_PROCESS = 0xC000  # Failed: Unable to process
STATUS_NOT_PERMITTED = 0xC001  # Failed: Unable to process - calling AE not permitted (our code)
STATUS_SUBOPS_WARNING = 0xB000  # Warning: sub-operations complete, one or more failures


class QueryError(Exception):
    """A request this node refuses: a DICOM status and the error comment that goes with it."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment[:64]  # ErrorComment is LO
        self.offending = offending

    def status_dataset(self) -> Dataset:
        """The status as pynetdicom takes it from a handler: Status, ErrorComment, OffendingElement."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment
        if self.offending is not None:
            ds.OffendingElement = [self.offending]
        return ds


# --- Permissions ----------------------------------------------------------------------------------

OPERATIONS = ("store", "find", "move", "get")


def is_permitted(ae_title: str, operation: str) -> bool:
    """May the calling AE `ae_title` do `operation` (store, find, move, get) on this node?

    A configured RemoteAE answers with its `allow_<operation>` flag; an unknown AE is allowed when
    `BTT_DICOM_ALLOW_UNKNOWN_AE` is on (the default) and refused in allow-list mode.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    return services.peer_permissions(ae_title).allows(operation)


def require_permission(ae_title: str, operation: str) -> None:
    """Raise a QueryError (0xC001) when `ae_title` may not do `operation`."""
    if not is_permitted(ae_title, operation):
        raise QueryError(
            STATUS_NOT_PERMITTED, f"AE {ae_title.strip()} is not permitted to C-{operation.upper()}"
        )


def move_destination(ae_title: str) -> RemoteAE | None:
    """The configured remote AE a C-MOVE may send to, or None (unknown, or allow_move off)."""
    return RemoteAE.objects.filter(ae_title=ae_title.strip(), allow_move=True).first()


# --- Attributes: index columns and computed values -----------------------------------------------


@dataclass(frozen=True)
class Column:
    """A DICOM attribute that has an index column: its level, field and matching kind."""

    level: str
    field: str
    kind: str  # text | pn | uid | date | time | int


COLUMNS: dict[str, Column] = {
    "PatientID": Column(PATIENT, "patient_id", "text"),
    "IssuerOfPatientID": Column(PATIENT, "issuer", "text"),
    "PatientName": Column(PATIENT, "patient_name", "pn"),
    "PatientBirthDate": Column(PATIENT, "birth_date", "date"),
    "PatientSex": Column(PATIENT, "sex", "text"),
    "StudyInstanceUID": Column(STUDY, "study_instance_uid", "uid"),
    "StudyDate": Column(STUDY, "study_date", "date"),
    "StudyTime": Column(STUDY, "study_time", "time"),
    "AccessionNumber": Column(STUDY, "accession_number", "text"),
    "StudyID": Column(STUDY, "study_id", "text"),
    "StudyDescription": Column(STUDY, "study_description", "text"),
    "ReferringPhysicianName": Column(STUDY, "referring_physician_name", "pn"),
    "SeriesInstanceUID": Column(SERIES, "series_instance_uid", "uid"),
    "Modality": Column(SERIES, "modality", "text"),
    "SeriesNumber": Column(SERIES, "series_number", "int"),
    "SeriesDescription": Column(SERIES, "series_description", "text"),
    "BodyPartExamined": Column(SERIES, "body_part_examined", "text"),
    "SOPInstanceUID": Column(IMAGE, "sop_instance_uid", "uid"),
    "SOPClassUID": Column(IMAGE, "sop_class_uid", "uid"),
    "InstanceNumber": Column(IMAGE, "instance_number", "int"),
    "AvailableTransferSyntaxUID": Column(IMAGE, "transfer_syntax_uid", "uid"),
}

# Computed return keys, by the level they describe: values are never matched (universal).
COMPUTED: dict[str, str] = {
    "NumberOfPatientRelatedStudies": PATIENT,
    "NumberOfPatientRelatedSeries": PATIENT,
    "NumberOfPatientRelatedInstances": PATIENT,
    "NumberOfStudyRelatedSeries": STUDY,
    "NumberOfStudyRelatedInstances": STUDY,
    "ModalitiesInStudy": STUDY,  # matched too: in SQL, over the study's series
    "SOPClassesInStudy": STUDY,
    "NumberOfSeriesRelatedInstances": SERIES,
}
# Keys that describe the request or the response, never matched.
_CONTROL_KEYWORDS = {
    "QueryRetrieveLevel",
    "SpecificCharacterSet",
    "QueryRetrieveView",
    "TimezoneOffsetFromUTC",
}
_RETRIEVE_AE_TITLE = Tag(0x0008, 0x0054)
_INSTANCE_AVAILABILITY = Tag(0x0008, 0x0056)

_NUMERIC_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}


def _kind_of_vr(vr: str) -> str:
    if vr == "UI":
        return "uid"
    if vr == "PN":
        return "pn"
    if vr == "DA":
        return "date"
    if vr == "TM":
        return "time"
    if vr == "DT":
        return "datetime"
    if vr in _NUMERIC_VRS:
        return "number"
    if vr == "SQ":
        return "sequence"
    return "text"


def _levels_up_to(model: str, level: str) -> tuple[str, ...]:
    """The levels of `model` from the top down to `level` included."""
    levels = MODEL_LEVELS[model]
    return levels[: levels.index(level) + 1]


def _path(row_level: str, target_level: str, field_name: str) -> str:
    """ORM path from a row of `row_level` to `field_name` of its `target_level` entity."""
    if row_level == target_level:
        return field_name
    return f"{_PATHS[(row_level, target_level)]}__{field_name}"


def _ancestor(row: Any, row_level: str, target_level: str) -> Any:
    """The `target_level` entity of `row` (through the select_related parents)."""
    obj = row
    if row_level == target_level:
        return obj
    for part in _PATHS[(row_level, target_level)].split("__"):
        obj = getattr(obj, part)
    return obj


def _ancestry(row_level: str) -> tuple[str, ...]:
    """`row_level` and the levels above it, nearest first (where its `tags` are looked up)."""
    return tuple(reversed(LEVELS[: LEVELS.index(row_level) + 1]))


# --- Query values ------------------------------------------------------------------------------


def _element_values(elem: DataElement) -> list[str]:
    """The values of a key element as strings; an empty list for a zero-length key."""
    value = elem.value
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        items = [str(v) if v is not None else "" for v in value]
    elif isinstance(value, bytes):
        items = [value.decode("latin-1")]
    else:
        items = [str(value)]
    items = [item.strip() if elem.VR not in {"PN"} else item.rstrip() for item in items]
    return [item for item in items if item != ""]


def _is_universal(values: list[str], kind: str) -> bool:
    if not values:
        return True
    # A key containing only '*' is a universal match (PS3.4 C.2.2.2.3); not for UIDs and numbers.
    return kind not in {"uid", "int", "number"} and all(set(v) == {"*"} for v in values)


def _wildcard_regex(value: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _range_bounds(value: str, kind: str) -> tuple[str, str] | None:
    """(low, high) of a range value `A-B`, `-B` or `A-` (empty string: open); None if not a range."""
    if "-" not in value or kind not in {"date", "time", "datetime"}:
        return None
    if kind == "datetime":
        # A DT bound may end in a UTC offset (+hhmm or -hhmm), so the separator is not simply the
        # first '-': each bound is digits (and a fraction) with an optional offset.
        match = re.fullmatch(r"([0-9.+]*(?:[+-]\d{4})?)-([0-9.+]*(?:[+-]\d{4})?)", value)
        if not match:
            raise ValueError(value)
        low, high = match.group(1), match.group(2)
    else:
        low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not low and not high:
        raise ValueError(value)
    if kind == "date":
        low = low.replace(".", "")
        high = high.replace(".", "")
        if (low and not low.isdigit()) or (high and not high.isdigit()):
            raise ValueError(value)
    if kind == "time":
        low = low.replace(":", "")
        high = high.replace(":", "")
        # An upper bound covers the whole of its last given component: 12 means up to 12:59:59.99..
        if high:
            whole, _, fraction = high.partition(".")
            high = whole + "9" * (6 - len(whole)) if len(whole) < 6 else whole
            high += "." + (fraction + "9" * (6 - len(fraction)) if fraction else "999999")
    if kind == "date" and high and len(high) < 8:
        high = high + "9" * (8 - len(high))
    if kind == "datetime" and high:
        high = high + "\uffff"
    return low, high


def _parse_int(value: str, keyword: str, tag: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH, f"{keyword}: {value!r} is not an integer", offending=tag
        ) from None


def _column_condition(column: Column, path: str, values: list[str], keyword: str, tag: int) -> Q:
    """The SQL condition for `values` (a list: any may match) on the column at `path`."""
    kind = column.kind
    if kind == "uid":
        return Q(**{path: values[0]}) if len(values) == 1 else Q(**{f"{path}__in": values})
    if kind == "int":
        numbers = [_parse_int(v, keyword, tag) for v in values]
        return Q(**{f"{path}__in": numbers})
    condition = Q()
    for value in values:
        condition |= _single_column_condition(kind, path, value, keyword, tag)
    return condition


def _single_column_condition(kind: str, path: str, value: str, keyword: str, tag: int) -> Q:
    if kind in {"date", "time"}:
        try:
            bounds = _range_bounds(value, kind)
        except ValueError:
            raise QueryError(
                STATUS_IDENTIFIER_MISMATCH, f"{keyword}: invalid range {value!r}", offending=tag
            ) from None
        if bounds is not None:
            low, high = bounds
            q = ~Q(**{path: ""})
            if low:
                q &= Q(**{f"{path}__gte": low})
            if high:
                q &= Q(**{f"{path}__lte": high})
            return q
        if kind == "date":
            return Q(**{path: value.replace(".", "")})
        # A single time value matches the times that start with it (1015 matches 101530.5).
        return Q(**{f"{path}__startswith": value.replace(":", "")})
    if kind == "pn":
        # Person names match case-insensitively; a value without '=' matches only the alphabetic
        # group (before any '=' of the ideographic and phonetic groups).
        def name_matches(pattern: str) -> Q:
            return Q(DicomWildcard(F(path), pattern, case_insensitive=True))

        if "=" in value:
            return name_matches(value)
        if has_wildcard(value):
            return (name_matches(value) & ~name_matches("*=*")) | name_matches(value + "=*")
        return name_matches(value) | name_matches(value + "=*")
    if has_wildcard(value):
        return Q(DicomWildcard(F(path), value))
    return Q(**{path: value})


# --- Python matching for attributes without a column (the levels' DICOM JSON) -----------------------


def _json_strings(element: dict | None) -> list[str]:
    """The values of a DICOM JSON element as strings (PN: each component group joined by '=')."""
    if not element:
        return []
    values = element.get("Value") or []
    out = []
    for value in values:
        if isinstance(value, dict):
            groups = [value.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            if groups:
                out.append("=".join(groups))
        elif value is not None:
            out.append(str(value))
    return out


def _python_match(kind: str, query_values: list[str], entity_values: list[str]) -> bool:
    """Does any entity value match any query value (single, wildcard, range)?"""
    for query in query_values:
        for value in entity_values:
            if _python_match_one(kind, query, value):
                return True
    return False


def _python_match_one(kind: str, query: str, value: str) -> bool:
    if kind in {"date", "time", "datetime"}:
        try:
            bounds = _range_bounds(query, kind)
        except ValueError:
            return False
        if bounds is not None:
            low, high = bounds
            return bool(value) and (not low or value >= low) and (not high or value <= high)
        return value == query or (kind != "date" and value.startswith(query))
    if kind == "number":
        try:
            return float(query) == float(value)
        except ValueError:
            return False
    if kind == "uid":
        return query == value
    ignore_case = kind == "pn"
    if has_wildcard(query):
        return _wildcard_regex(query, ignore_case).fullmatch(value) is not None
    if ignore_case:
        return query.upper() == value.upper() or (
            "=" not in query and value.upper().startswith(query.upper() + "=")
        )
    return query == value


def _tags_lookup(row: Any, row_level: str, tag_key: str) -> dict | None:
    """The DICOM JSON element `tag_key` of `row`, from its own level's tags or its parents'."""
    for level in _ancestry(row_level):
        entity = _ancestor(row, row_level, level)
        element = (entity.tags or {}).get(tag_key)
        if element is not None:
            return element
    return None


# --- The query plan ---------------------------------------------------------------------------------


@dataclass
class _Plan:
    model: str
    level: str
    condition: Q = field(default_factory=Q)
    python_filters: list[Callable[[Any], bool]] = field(default_factory=list)
    # Requested return keys, in identifier order: (tag, keyword, vr).
    return_keys: list[tuple[int, str, str]] = field(default_factory=list)
    computed: set[str] = field(default_factory=set)


def _tag_key(tag: int) -> str:
    return f"{tag:08X}"


def query_level(identifier: Dataset, model: str) -> str:
    """The identifier's QueryRetrieveLevel, checked against the information model."""
    if "QueryRetrieveLevel" not in identifier:
        raise QueryError(STATUS_IDENTIFIER_MISMATCH, "QueryRetrieveLevel is missing", offending=0x00080052)
    raw = identifier.QueryRetrieveLevel
    level = str(raw[0] if isinstance(raw, MultiValue) else (raw or "")).strip().upper()
    if level not in MODEL_LEVELS[model]:
        root = "Patient Root" if model == PATIENT_ROOT else "Study Root"
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"QueryRetrieveLevel {level or '(empty)'!r} is invalid for {root}",
            offending=0x00080052,
        )
    return level


def _unique_key_values(identifier: Dataset, keyword: str) -> list[str] | None:
    """The values of a unique key, or None when the key is absent."""
    if keyword not in identifier:
        return None
    return _element_values(identifier[keyword])


def _check_upper_unique_keys(identifier: Dataset, model: str, level: str, required: bool) -> None:
    for upper in _levels_up_to(model, level)[:-1]:
        keyword = UNIQUE_KEYS[upper]
        values = _unique_key_values(identifier, keyword)
        tag = int(Tag(keyword))
        if values is None or not values:
            if required:
                raise QueryError(
                    STATUS_IDENTIFIER_MISMATCH,
                    f"{level} level query needs a single {keyword}",
                    offending=tag,
                )
            continue
        if any(has_wildcard(v) for v in values):
            raise QueryError(
                STATUS_IDENTIFIER_MISMATCH, f"{keyword}: no wildcards in unique keys", offending=tag
            )


def _plan(identifier: Dataset, model: str, level: str) -> _Plan:
    plan = _Plan(model=model, level=level)
    visible = set(_levels_up_to(model, level)) | ({PATIENT} if model == STUDY_ROOT else set())
    for elem in identifier:
        tag = int(elem.tag)
        if elem.tag.group in (0x0000, 0x0002) or elem.keyword in _CONTROL_KEYWORDS:
            continue
        if tag == _RETRIEVE_AE_TITLE:
            continue  # always returned
        keyword = elem.keyword
        vr = elem.VR
        if keyword and " or " in vr:
            vr = vr.split(" or ")[0]
        plan.return_keys.append((tag, keyword, vr))
        if vr == "SQ":
            continue  # sequence matching is not supported: returned, never matched
        column = COLUMNS.get(keyword)
        if column is not None:
            if column.level not in visible:
                continue  # a key of a lower level: not matched, returned empty
            values = _element_values(elem)
            if _is_universal(values, column.kind):
                continue
            path = _path(level, column.level, column.field)
            plan.condition &= _column_condition(column, path, values, keyword, tag)
            continue
        if keyword in COMPUTED:
            if COMPUTED[keyword] not in visible:
                continue
            plan.computed.add(keyword)
            if keyword == "ModalitiesInStudy":
                values = _element_values(elem)
                if not _is_universal(values, "text"):
                    plan.condition &= _modalities_condition(level, values)
            continue
        if tag == _INSTANCE_AVAILABILITY:
            continue
        values = _element_values(elem)
        kind = _kind_of_vr(vr)
        if _is_universal(values, kind):
            continue
        plan.python_filters.append(_json_filter(level, _tag_key(tag), kind, values))
    return plan


def _modalities_condition(level: str, values: list[str]) -> Q:
    study_pk = OuterRef(_path(level, STUDY, "pk") if level != STUDY else "pk")
    modality = Q()
    for value in values:
        modality |= Q(DicomWildcard(F("modality"), value)) if has_wildcard(value) else Q(modality=value)
    return Q(Exists(Series.objects.filter(modality, study_id=study_pk)))


def _json_filter(level: str, tag_key: str, kind: str, values: list[str]) -> Callable[[Any], bool]:
    def matches(row: Any) -> bool:
        return _python_match(kind, values, _json_strings(_tags_lookup(row, level, tag_key)))

    return matches


def _base_queryset(level: str) -> QuerySet:
    if level == PATIENT:
        return DicomPatient.objects.all()
    if level == STUDY:
        return Study.objects.select_related("patient")
    if level == SERIES:
        return Series.objects.select_related("study__patient")
    return Instance.objects.select_related("series__study__patient")


# --- C-FIND ---------------------------------------------------------------------------------------


def find(
    identifier: Dataset, model: str, *, retrieve_aet: str | None = None, chunk_size: int = 500
) -> Iterator[Dataset]:
    """The response identifiers of the entities matching a C-FIND `identifier`.

    `model` is PATIENT_ROOT or STUDY_ROOT. The identifier is checked here (QueryError on a bad
    level or missing unique keys) before the iterator is returned; rows are read in keyset-paged
    chunks, so the iterator holds no database cursor between results. Each response holds the
    requested keys (zero length where the entity has no value), QueryRetrieveLevel,
    SpecificCharacterSet and RetrieveAETitle (`retrieve_aet`, default BTT_DICOM_AET).
    """
    level = query_level(identifier, model)
    _check_upper_unique_keys(identifier, model, level, required=True)
    plan = _plan(identifier, model, level)
    aet = retrieve_aet or settings.BTT_DICOM_AET
    queryset = _base_queryset(level).filter(plan.condition)
    return _iterate(plan, queryset, aet, chunk_size)


def _iterate(plan: _Plan, queryset: QuerySet, aet: str, chunk_size: int) -> Iterator[Dataset]:
    last_pk = None
    while True:
        page = queryset.order_by("pk")
        if last_pk is not None:
            page = page.filter(pk__gt=last_pk)
        fetched = list(page[:chunk_size])
        if not fetched:
            return
        last_pk = fetched[-1].pk
        rows = [row for row in fetched if all(f(row) for f in plan.python_filters)]
        computed = _computed_values(rows, plan)
        for row in rows:
            yield _response(row, plan, computed, aet)
        if len(fetched) < chunk_size:
            return


def _computed_values(rows: list[Any], plan: _Plan) -> dict[tuple[str, int], str]:
    """Values of the computed keys for a chunk of rows, keyed by (keyword, entity pk)."""
    values: dict[tuple[str, int], str] = {}
    if not rows or not plan.computed:
        return values

    def ids(level: str) -> set[int]:
        return {_ancestor(row, plan.level, level).pk for row in rows}

    def counts(keyword: str, queryset: QuerySet, group: str, entity_ids: set[int]) -> None:
        found = dict(queryset.values_list(group).annotate(n=Count("pk")).values_list(group, "n"))
        for pk in entity_ids:
            values[(keyword, pk)] = str(found.get(pk, 0))

    for keyword in plan.computed:
        if keyword == "NumberOfPatientRelatedStudies":
            pks = ids(PATIENT)
            counts(keyword, Study.objects.filter(patient_id__in=pks).order_by(), "patient_id", pks)
        elif keyword == "NumberOfPatientRelatedSeries":
            pks = ids(PATIENT)
            counts(
                keyword, Series.objects.filter(study__patient_id__in=pks).order_by(), "study__patient_id", pks
            )
        elif keyword == "NumberOfPatientRelatedInstances":
            pks = ids(PATIENT)
            counts(
                keyword,
                Instance.objects.filter(series__study__patient_id__in=pks).order_by(),
                "series__study__patient_id",
                pks,
            )
        elif keyword == "NumberOfStudyRelatedSeries":
            pks = ids(STUDY)
            counts(keyword, Series.objects.filter(study_id__in=pks).order_by(), "study_id", pks)
        elif keyword == "NumberOfStudyRelatedInstances":
            pks = ids(STUDY)
            counts(
                keyword, Instance.objects.filter(series__study_id__in=pks).order_by(), "series__study_id", pks
            )
        elif keyword == "NumberOfSeriesRelatedInstances":
            pks = ids(SERIES)
            counts(keyword, Instance.objects.filter(series_id__in=pks).order_by(), "series_id", pks)
        elif keyword in {"ModalitiesInStudy", "SOPClassesInStudy"}:
            pks = ids(STUDY)
            if keyword == "ModalitiesInStudy":
                pairs = Series.objects.filter(study_id__in=pks).values_list("study_id", "modality")
            else:
                pairs = Instance.objects.filter(series__study_id__in=pks).values_list(
                    "series__study_id", "sop_class_uid"
                )
            grouped: dict[int, list[str]] = {pk: [] for pk in pks}
            for pk, value in pairs.order_by().distinct():
                if value and value not in grouped[pk]:
                    grouped[pk].append(value)
            for pk, items in grouped.items():
                values[(keyword, pk)] = "\\".join(sorted(items))
    return values


def _response(row: Any, plan: _Plan, computed: dict[tuple[str, int], str], aet: str) -> Dataset:
    ds = Dataset()
    non_ascii = False
    for tag, keyword, vr in plan.return_keys:
        value: Any = None
        column = COLUMNS.get(keyword)
        if column is not None and column.level in _ancestry(plan.level):
            raw = getattr(_ancestor(row, plan.level, column.level), column.field)
            value = None if raw in (None, "") else raw
            if column.kind == "int" and value is not None:
                value = str(value)
        elif keyword in COMPUTED and COMPUTED[keyword] in _ancestry(plan.level):
            entity = _ancestor(row, plan.level, COMPUTED[keyword])
            value = computed.get((keyword, entity.pk))
        elif tag == _INSTANCE_AVAILABILITY:
            value = "ONLINE"
        else:
            element = _tags_lookup(row, plan.level, _tag_key(tag))
            if element is not None and _copy_json_element(ds, tag, element):
                non_ascii = non_ascii or not _is_ascii(ds[tag].value)
                continue
        if value is None:
            ds.add_new(tag, vr, [] if vr == "SQ" else None)
            continue
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds.add_new(tag, vr, value)
    ds.QueryRetrieveLevel = plan.level
    ds.RetrieveAETitle = aet
    ds.SpecificCharacterSet = "ISO_IR 192" if non_ascii else "ISO_IR 100"
    return ds


def _copy_json_element(ds: Dataset, tag: int, element: dict) -> bool:
    """Set `tag` in `ds` from its DICOM JSON; False when it cannot be (bulk data by reference)."""
    if "BulkDataURI" in element:
        return False
    try:
        parsed = Dataset.from_json({_tag_key(tag): element})
    except Exception:
        return False
    ds[tag] = parsed[tag]
    return True


def _is_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, Iterable) and not isinstance(value, bytes | Dataset):
        return all(_is_ascii(v) for v in value)
    return str(value).isascii()


# --- C-MOVE / C-GET ------------------------------------------------------------------------------


def instances_to_retrieve(identifier: Dataset, model: str) -> QuerySet:
    """The Instance rows a C-MOVE / C-GET `identifier` asks for, in series / instance order.

    The unique key of the retrieve level must be present (a single value or a list of UIDs); the
    unique keys of levels above are optional but, when present, must match. Other keys are ignored.
    Raises QueryError (0xA900) otherwise.
    """
    level = query_level(identifier, model)
    _check_upper_unique_keys(identifier, model, level, required=False)
    own_key = UNIQUE_KEYS[level]
    values = _unique_key_values(identifier, own_key)
    if not values:
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"{level} level retrieve needs {own_key}",
            offending=int(Tag(own_key)),
        )
    if any(has_wildcard(v) for v in values):
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"{own_key}: no wildcards in unique keys",
            offending=int(Tag(own_key)),
        )
    condition = Q()
    for upper in _levels_up_to(model, level):
        keyword = UNIQUE_KEYS[upper]
        key_values = _unique_key_values(identifier, keyword)
        if not key_values:
            continue
        column = COLUMNS[keyword]
        path = _path(IMAGE, column.level, column.field)
        condition &= Q(**{path: key_values[0]}) if len(key_values) == 1 else Q(**{f"{path}__in": key_values})
    return (
        Instance.objects.filter(condition)
        .select_related("series")
        .order_by("series__series_number", "series_id", "instance_number", "pk")
    )
