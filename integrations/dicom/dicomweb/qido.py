"""QIDO-RS: search the Patient / Study / Series / Instance index (PS3.18 10.6).

Matching runs in SQL over the index: the indexed columns for the attributes PS3.18 requires
(and a few more, see `attributes.COLUMNS`), the DICOM JSON `tags` columns for any other attribute
(a sequence attribute through its first item). Files are never read. Matching follows PS3.4
C.2.2.2: single value (case-insensitive for person names), wildcards `*` and `?` (SQL LIKE), UID
lists (`,` or `\\` separated), date and time ranges (`20200101-20201231`, `-20201231`,
`20200101-`), value lists (`\\`) for other attributes, and universal matching (an empty value,
which only asks for the attribute to be returned).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.db.models.lookups import Exact, GreaterThanOrEqual, IExact, LessThanOrEqual

from integrations.dicom.dicomweb import attributes as attrs
from integrations.dicom.dicomweb.attributes import (
    COLUMNS,
    INSTANCE,
    PATIENT,
    SERIES,
    STUDY,
    Column,
)
from integrations.dicom.dicomweb.errors import bad_request, not_found
from integrations.dicom.models import Instance, Series, Study
from integrations.dicom.sql import DicomWildcard, JsonText, has_wildcard

# Query parameters that are not attribute matching keys.
CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"})

FUZZY_WARNING = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed "
    "(person names match case-insensitively)."
)

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")

# The path from each target model to each level above it (Django lookups).
PREFIXES: dict[int, dict[int, str]] = {
    STUDY: {PATIENT: "patient__", STUDY: ""},
    SERIES: {PATIENT: "study__patient__", STUDY: "study__", SERIES: ""},
    INSTANCE: {
        PATIENT: "series__study__patient__",
        STUDY: "series__study__",
        SERIES: "series__",
        INSTANCE: "",
    },
}


def max_results() -> int:
    return settings.BTT_DICOMWEB_MAX_RESULTS


@dataclass
class SearchRequest:
    """One QIDO-RS search: the target level, the URL's study/series, the query parameters."""

    level: int
    params: list[tuple[str, str]]
    base_url: str
    study_uid: str | None = None
    series_uid: str | None = None


@dataclass
class SearchResult:
    items: list[dict]
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Parsed:
    limit: int | None = None
    offset: int = 0
    include_all: bool = False
    include: set[str] = field(default_factory=set)
    returned: set[str] = field(default_factory=set)  # matching keys are returned too
    conditions: list[Q] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- Parameters -------------------------------------------------------------------------------


def _non_negative_int(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < minimum:
        kind = "a positive integer" if minimum else "a non-negative integer"
        raise bad_request(f"{name} must be {kind}, got {value!r}")
    return number


def _parse(request: SearchRequest) -> _Parsed:
    parsed = _Parsed()
    seen: dict[tuple[str, ...], str] = {}
    for name, value in request.params:
        key = name.strip()
        lowered = key.lower()
        if lowered == "limit":
            parsed.limit = _non_negative_int("limit", value, 1)
        elif lowered == "offset":
            parsed.offset = _non_negative_int("offset", value, 0)
        elif lowered == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise bad_request(f"fuzzymatching must be true or false, got {value!r}")
            if value.lower() == "true" and FUZZY_WARNING not in parsed.warnings:
                parsed.warnings.append(FUZZY_WARNING)
        elif lowered == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    parsed.include_all = True
                else:
                    parsed.include.add(attrs.resolve_path(item, f"includefield={item}")[0])
        elif lowered in CONTROL_PARAMS:
            continue  # accept / charset: handled by the view's content negotiation
        else:
            path = attrs.resolve_path(key)
            if path in seen and seen[path] != value:
                if path[-1] in COLUMNS and COLUMNS[path[-1]].kind == attrs.UID and len(path) == 1:
                    value = seen[path] + "," + value  # StudyInstanceUID=a&StudyInstanceUID=b: a list
                else:
                    raise bad_request(f"the query key {key!r} is given more than once")
            seen[path] = value
    for path, value in seen.items():
        parsed.returned.add(path[0])
        condition = _condition(request.level, path, value)
        if condition is not None:
            parsed.conditions.append(condition)
    return parsed


# --- Matching ---------------------------------------------------------------------------------


def _split_values(value: str, kind: str) -> list[str]:
    separators = r"[\\,]" if kind in (attrs.UID, attrs.MODALITIES) else r"\\"
    return [item.strip() for item in re.split(separators, value) if item.strip()]


def _range(lhs, value: str, key: str, vr: str) -> Q:
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not low and not high:
        raise bad_request(f"{key}={value!r} is not a range: give a lower bound, an upper bound or both")
    for bound in filter(None, (low, high)):
        _check_value(bound, key, vr)
    condition = ~Q(Exact(lhs, ""))  # an empty value is in no range
    if low:
        condition &= Q(GreaterThanOrEqual(lhs, low))
    if high:
        # A partial time or date-time upper bound covers the whole period it names (1200 -> 12:00:59).
        condition &= Q(LessThanOrEqual(lhs, high if vr == "DA" else high + "~"))
    return condition


def _check_value(value: str, key: str, vr: str) -> None:
    if vr == "DA" and not _DATE.match(value):
        raise bad_request(
            f"{key}: {value!r} is not a DICOM date (YYYYMMDD) or date range (YYYYMMDD-YYYYMMDD)"
        )
    if vr == "TM" and not _TIME.match(value):
        raise bad_request(f"{key}: {value!r} is not a DICOM time (HHMMSS) or time range (HHMMSS-HHMMSS)")


def _match_values(lhs, values: list[str], key: str, vr: str, text_column: bool = True) -> Q:
    """OR of the single-value / wildcard / range matches of `values` against the expression `lhs`."""
    condition = Q()
    for value in values:
        if vr in ("DA", "TM", "DT") and "-" in value:
            condition |= _range(lhs, value, key, vr)
            continue
        _check_value(value, key, vr)
        if value == "*":
            return Q()  # a lone '*' matches everything, empty values included
        if text_column and has_wildcard(value):
            condition |= Q(DicomWildcard(lhs, value, case_insensitive=vr == "PN"))
        elif vr == "PN":
            condition |= Q(IExact(lhs, value))
        else:
            condition |= Q(Exact(lhs, value))
    return condition


def _column_condition(level: int, column: Column, tag: str, value: str, key: str) -> Q:
    prefix = PREFIXES[level][column.level]
    lhs = F(prefix + column.column)
    if column.kind == attrs.UID:
        uids = _split_values(value, attrs.UID)
        if uids == ["*"]:
            return Q()
        return Q(**{f"{prefix}{column.column}__in": uids})
    if column.kind == attrs.INT:
        numbers = []
        for item in _split_values(value, attrs.INT):
            try:
                numbers.append(int(item))
            except ValueError:
                raise bad_request(f"{key}: {item!r} is not an integer") from None
        return Q(**{f"{prefix}{column.column}__in": numbers})
    if column.kind == attrs.MODALITIES:
        modalities = _split_values(value, attrs.MODALITIES)
        if "*" in modalities:
            return Q()
        series = Series.objects.filter(study_id=OuterRef(f"{prefix}id"))
        series = series.filter(_match_values(F("modality"), modalities, key, "CS"))
        return Q(Exists(series))
    vr = {attrs.DATE: "DA", attrs.TIME: "TM", attrs.PN: "PN"}.get(column.kind, attrs.vr_of(tag))
    return _match_values(lhs, _split_values(value, column.kind), key, vr)


def _json_condition(level: int, path: tuple[str, ...], value: str, key: str) -> Q:
    """Match an attribute that has no column in the `tags` JSON of every level up to `level`."""
    json_path: list[str | int] = []
    for tag in path:
        json_path += [tag, "Value", 0]
    vr = attrs.vr_of(path[-1])
    if vr == "PN":
        json_path.append("Alphabetic")
    if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise bad_request(f"{key}: attributes of VR {vr} cannot be matched")
    kind = attrs.UID if vr == "UI" else attrs.TEXT
    values = _split_values(value, kind)
    if not values:
        return Q()
    condition = Q()
    for source_level, prefix in PREFIXES[level].items():
        if source_level > level:
            continue
        lhs = JsonText(f"{prefix}tags", tuple(json_path))
        condition |= _match_values(lhs, values, key, vr)
    return condition


def _condition(level: int, path: tuple[str, ...], value: str) -> Q | None:
    key = ".".join(attrs.keyword_of(tag) for tag in path)
    if value.strip() == "":
        return None  # universal matching: return the attribute, match everything
    tag = path[0]
    if len(path) == 1 and tag in COLUMNS:
        column = COLUMNS[tag]
        if column.level > level:
            raise bad_request(
                f"{key} is a {attrs.LEVEL_NAMES[column.level]}-level attribute; it cannot be matched in a "
                f"{attrs.LEVEL_NAMES[level]}-level search"
                + (" (use ModalitiesInStudy)" if tag == "00080060" else "")
            )
        return _column_condition(level, column, tag, value, key)
    if tag in (attrs.RETRIEVE_URL, attrs.INSTANCE_AVAILABILITY, attrs.SPECIFIC_CHARACTER_SET):
        raise bad_request(f"{key} cannot be used as a matching key")
    return _json_condition(level, path, value, key)


# --- Results ----------------------------------------------------------------------------------


def _element(tag: str, value) -> dict:
    vr = attrs.vr_of(tag)
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": str(item)} for item in values]
    return {"vr": vr, "Value": values}


def _fill_columns(merged: dict, obj, level: int) -> None:
    """Add the attributes kept as columns of `obj` that its `tags` lack."""
    for tag, column in COLUMNS.items():
        if column.level != level or column.kind in (attrs.MODALITIES, attrs.INT):
            continue
        if tag not in merged or "Value" not in merged[tag]:
            value = getattr(obj, column.column, "")
            if value not in (None, ""):
                merged[tag] = _element(tag, value)
    if level == SERIES and obj.series_number is not None and "Value" not in merged.get("00200011", {}):
        merged["00200011"] = _element("00200011", obj.series_number)
    if level == INSTANCE and obj.instance_number is not None and "Value" not in merged.get("00200013", {}):
        merged["00200013"] = _element("00200013", obj.instance_number)


def study_url(base_url: str, study_uid: str) -> str:
    return f"{base_url}/studies/{study_uid}"


def series_url(base_url: str, study_uid: str, series_uid: str) -> str:
    return f"{study_url(base_url, study_uid)}/series/{series_uid}"


def instance_url(base_url: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    return f"{series_url(base_url, study_uid, series_uid)}/instances/{sop_uid}"


def _study_summaries(study_ids: list[int]) -> dict[int, tuple[list[str], int, int]]:
    """Per study: the modalities of its series, its number of series and of instances."""
    modalities: dict[int, set[str]] = defaultdict(set)
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    rows = (
        Series.objects.filter(study_id__in=study_ids)
        .values("study_id", "modality")
        .annotate(series=Count("id", distinct=True), instances=Count("instances"))
        .order_by()
    )
    for row in rows:
        if row["modality"]:
            modalities[row["study_id"]].add(row["modality"])
        counts[row["study_id"]][0] += row["series"]
        counts[row["study_id"]][1] += row["instances"]
    return {sid: (sorted(modalities[sid]), *counts[sid]) for sid in study_ids}


def _series_counts(series_ids: list[int]) -> dict[int, int]:
    rows = (
        Instance.objects.filter(series_id__in=series_ids)
        .values("series_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {row["series_id"]: row["n"] for row in rows}


def _study_attributes(study: Study, summary: tuple[list[str], int, int], base_url: str) -> dict:
    merged: dict = {}
    merged.update(study.patient.tags or {})
    _fill_columns(merged, study.patient, PATIENT)
    merged.update(study.tags or {})
    _fill_columns(merged, study, STUDY)
    modalities, n_series, n_instances = summary
    merged["00080061"] = _element("00080061", modalities)
    merged["00201206"] = _element("00201206", n_series)
    merged["00201208"] = _element("00201208", n_instances)
    merged[attrs.RETRIEVE_URL] = _element(attrs.RETRIEVE_URL, study_url(base_url, study.study_instance_uid))
    return merged


def _series_attributes(series: Series, n_instances: int, base_url: str) -> dict:
    merged = dict(series.tags or {})
    _fill_columns(merged, series, SERIES)
    merged["0020000D"] = _element("0020000D", series.study.study_instance_uid)
    merged["00201209"] = _element("00201209", n_instances)
    merged[attrs.RETRIEVE_URL] = _element(
        attrs.RETRIEVE_URL, series_url(base_url, series.study.study_instance_uid, series.series_instance_uid)
    )
    return merged


def _instance_attributes(instance: Instance, base_url: str) -> dict:
    merged = dict(instance.tags or {})
    _fill_columns(merged, instance, INSTANCE)
    series = instance.series
    merged["0020000D"] = _element("0020000D", series.study.study_instance_uid)
    merged["0020000E"] = _element("0020000E", series.series_instance_uid)
    merged[attrs.RETRIEVE_URL] = _element(
        attrs.RETRIEVE_URL,
        instance_url(
            base_url, series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid
        ),
    )
    return merged


def _select(merged: dict, defaults: tuple[str, ...], parsed: _Parsed) -> dict:
    # DICOM JSON is UTF-8 whatever the stored character set was.
    merged[attrs.SPECIFIC_CHARACTER_SET] = _element(attrs.SPECIFIC_CHARACTER_SET, "ISO_IR 192")
    merged[attrs.INSTANCE_AVAILABILITY] = _element(attrs.INSTANCE_AVAILABILITY, "ONLINE")
    if parsed.include_all:
        wanted = set(merged) | set(defaults)
    else:
        wanted = set(defaults) | parsed.include | parsed.returned | {attrs.SPECIFIC_CHARACTER_SET}
    asked = parsed.include | parsed.returned
    result = {}
    for tag in sorted(wanted):
        if tag in merged:
            result[tag] = merged[tag]
        elif tag not in attrs.OPTIONAL_DEFAULTS or tag in asked:
            result[tag] = {"vr": attrs.vr_of(tag)}
    return result


# --- Search -----------------------------------------------------------------------------------


def _scope(request: SearchRequest) -> QuerySet:
    """The level's queryset, narrowed to the study / series of the URL (404 when unknown)."""
    if (
        request.study_uid is not None
        and not Study.objects.filter(study_instance_uid=request.study_uid).exists()
    ):
        raise not_found(f"study {request.study_uid} is not stored here")
    if (
        request.series_uid is not None
        and not Series.objects.filter(
            series_instance_uid=request.series_uid, study__study_instance_uid=request.study_uid
        ).exists()
    ):
        raise not_found(f"series {request.series_uid} of study {request.study_uid} is not stored here")
    if request.level == STUDY:
        return Study.objects.select_related("patient").order_by("-study_date", "-study_time", "-id")
    if request.level == SERIES:
        queryset = Series.objects.select_related("study__patient").order_by("study_id", "series_number", "id")
        if request.study_uid is not None:
            queryset = queryset.filter(study__study_instance_uid=request.study_uid)
        return queryset
    queryset = Instance.objects.select_related("series__study__patient").order_by(
        "series__study_id", "series_id", "instance_number", "id"
    )
    if request.study_uid is not None:
        queryset = queryset.filter(series__study__study_instance_uid=request.study_uid)
    if request.series_uid is not None:
        queryset = queryset.filter(series__series_instance_uid=request.series_uid)
    return queryset


def search(request: SearchRequest) -> SearchResult:
    """Run one QIDO-RS search; its DICOM JSON results (one object per match) and warnings."""
    parsed = _parse(request)
    queryset = _scope(request)
    for condition in parsed.conditions:
        queryset = queryset.filter(condition)
    cap = max_results()
    warnings = list(parsed.warnings)
    count = parsed.limit if parsed.limit is not None else cap
    if count > cap:
        warnings.append(f"limit {count} is above this server's maximum of {cap}; {cap} results are returned")
        count = cap
    rows = list(queryset[parsed.offset : parsed.offset + count + 1])
    if len(rows) > count:
        rows = rows[:count]
        if parsed.limit is None or parsed.limit > cap:
            warnings.append(
                f"There are more than {cap} matches; results are truncated. Use limit and offset to page."
            )
    return SearchResult(_render(request, rows, parsed), warnings)


def _render(request: SearchRequest, rows: list, parsed: _Parsed) -> list[dict]:
    base = request.base_url
    if request.level == STUDY:
        summaries = _study_summaries([study.id for study in rows])
        return [
            _select(_study_attributes(study, summaries[study.id], base), attrs.STUDY_DEFAULTS, parsed)
            for study in rows
        ]
    # Series and instances of "all studies" also carry the study's attributes (PS3.18 10.6.3.3.1).
    with_study = request.study_uid is None
    if request.level == SERIES:
        counts = _series_counts([series.id for series in rows])
        summaries = _study_summaries(sorted({series.study_id for series in rows})) if with_study else {}
        defaults = attrs.SERIES_DEFAULTS + (attrs.STUDY_DEFAULTS if with_study else ())
        items = []
        for series in rows:
            merged = {}
            if with_study:
                merged.update(_study_attributes(series.study, summaries[series.study_id], base))
            merged.update(_series_attributes(series, counts.get(series.id, 0), base))
            items.append(_select(merged, defaults, parsed))
        return items
    with_series = request.series_uid is None
    series_ids = sorted({instance.series_id for instance in rows})
    counts = _series_counts(series_ids) if with_series else {}
    summaries = (
        _study_summaries(sorted({instance.series.study_id for instance in rows})) if with_study else {}
    )
    defaults = (
        attrs.INSTANCE_DEFAULTS
        + (attrs.SERIES_DEFAULTS if with_series else ())
        + (attrs.STUDY_DEFAULTS if with_study else ())
    )
    items = []
    for instance in rows:
        merged = {}
        if with_study:
            merged.update(_study_attributes(instance.series.study, summaries[instance.series.study_id], base))
        if with_series:
            merged.update(_series_attributes(instance.series, counts.get(instance.series_id, 0), base))
        merged.update(_instance_attributes(instance, base))
        items.append(_select(merged, defaults, parsed))
    return items
