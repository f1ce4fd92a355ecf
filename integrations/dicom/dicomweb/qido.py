"""QIDO-RS: search the Patient / Study / Series / Instance index (PS3.18 10.6).

Matching runs in SQL over the index with the rules C-FIND uses too (`integrations/dicom/matching.py`,
PS3.4 C.2.2.2): the indexed columns for the attributes PS3.18 requires (and a few more), the
DICOM JSON `tags` columns for any other attribute, sequence attributes by dotted paths
(`RequestAttributesSequence.ScheduledProcedureStepID`: some item matches). Files are never read.
Single values (case-insensitive for person names), wildcards `*` and `?`, UID and modality lists
(`,` or `\\` separated), value lists (`\\`) for other attributes, date, time and date-time ranges
(`20200101-20201231`, `-20201231`, `20200101-`), `""` for attributes without a value, and
universal matching (an empty value, which only asks for the attribute to be returned). What is
specific to QIDO-RS stays here: the parameters, `,` lists, 400s naming the parameter.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Q, QuerySet

from integrations.dicom import matching
from integrations.dicom.dicomweb import attributes as attrs
from integrations.dicom.dicomweb.attributes import INSTANCE, PATIENT, SERIES, STUDY
from integrations.dicom.dicomweb.errors import bad_request, not_found
from integrations.dicom.matching import MatchError
from integrations.dicom.models import Instance, Series, Study

# Query parameters that are not attribute matching keys.
CONTROL_PARAMS = frozenset({"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"})

FUZZY_WARNING = (
    "The fuzzymatching parameter is not supported. Only literal matching has been performed "
    "(person names match case-insensitively)."
)


def max_results() -> int:
    return settings.BTT_DICOMWEB_MAX_RESULTS


@dataclass
class SearchRequest:
    """One QIDO-RS search: the target level, the URL's study/series, the query parameters."""

    level: str  # attributes.STUDY, SERIES or INSTANCE
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
                attribute = _indexed(path[0]) if len(path) == 1 else None
                if attribute is not None and attribute.kind == matching.UID:
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


def _indexed(tag: str) -> matching.IndexedAttribute | None:
    return matching.INDEXED_BY_TAG.get(int(tag, 16))


def _split_values(value: str, kind: str) -> list[str]:
    """A parameter's values: `\\`-separated, and `,` for UIDs and modalities too (as PS3.18 allows)."""
    separators = r"[\\,]" if kind in (matching.UID, matching.MODALITIES) else r"\\"
    return [item.strip() for item in re.split(separators, value) if item.strip()]


def _condition(level: str, path: tuple[str, ...], value: str) -> Q | None:
    key = ".".join(attrs.keyword_of(tag) for tag in path)
    if value.strip() == "":
        return None  # universal matching: return the attribute, match everything
    tag = path[0]
    attribute = _indexed(tag) if len(path) == 1 else None
    if attribute is not None and matching.rank(attribute.level) > matching.rank(level):
        raise bad_request(
            f"{key} is a {attribute.level}-level attribute; it cannot be matched in a {level}-level search"
            + (" (use ModalitiesInStudy)" if tag == "00080060" else "")
        )
    if attribute is None and tag in (
        attrs.RETRIEVE_URL,
        attrs.INSTANCE_AVAILABILITY,
        attrs.SPECIFIC_CHARACTER_SET,
    ):
        raise bad_request(f"{key} cannot be used as a matching key")
    vr = attrs.vr_of(path[-1])
    kind = attribute.kind if attribute is not None else matching.kind_of_vr(vr)
    if kind in (matching.SEQUENCE, matching.UNMATCHABLE):
        raise bad_request(f"{key}: attributes of VR {vr} cannot be matched")
    try:
        match = matching.parse(_split_values(value, kind), kind)
    except MatchError as exc:
        raise bad_request(f"{key}: {exc}") from None
    if match is None:
        return None
    if attribute is not None:
        return matching.attribute_condition(level, attribute, match)
    # Not a column: the attribute in the DICOM JSON of the level and those above it; a dotted
    # path matches in some item of each sequence on the way.
    nested: matching.KeyMatch | matching.ItemMatch = match
    for inner in reversed(path[1:]):
        nested = matching.ItemMatch(((int(inner, 16), nested),))
    return matching.json_condition(level, matching.ancestry(level), int(tag, 16), nested)


# --- Results ----------------------------------------------------------------------------------


def _element(tag: str, value) -> dict:
    vr = attrs.vr_of(tag)
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": str(item)} for item in values]
    return {"vr": vr, "Value": values}


def _fill_columns(merged: dict, obj, level: str) -> None:
    """Add the attributes kept as columns of `obj` that its `tags` lack."""
    for attribute in matching.INDEXED.values():
        if attribute.level != level or attribute.kind in (matching.MODALITIES, matching.NUMBER):
            continue
        tag = attrs.tag_hex(attribute.tag)
        if tag not in merged or "Value" not in merged[tag]:
            value = getattr(obj, attribute.field, "")
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
