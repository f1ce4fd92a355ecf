"""A search request parsed from its query parameters: the filter, and the result parameters.

`parse_request` separates the result parameters (`_count`, `_sort`, `_include`, ...) from the
filter parameters, builds the filter as a `ResourceRecord` queryset condition and collects the
parameters it had to ignore (unknown ones in lenient mode) for the outcome entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from django.conf import settings
from django.db.models import F, OuterRef, QuerySet, Subquery

from integrations.fhir.models import ResourceRecord
from integrations.fhir.outcomes import FhirError, Issue
from integrations.fhir.search.conditions import (
    MODEL_FOR_TYPE,
    ConditionBuilder,
    UnknownParameter,
    param_def,
)
from integrations.fhir.search.shaping import SUMMARY_MODES
from integrations.fhir.search.sql import NOTHING, Sql, all_of, any_of, equals, one_of
from integrations.fhir.searchparams import index_params, resource_types

# Accepted and not acted on here: formats are the views' business, paging has its own entry point.
SILENT_PARAMS = frozenset({"_format", "_pretty", "_bundletype", "_getpages", "_getpagesoffset"})
# Result parameters this server does not implement: reported like unknown parameters.
UNSUPPORTED_PARAMS = frozenset(
    {"_contained", "_containedType", "_filter", "_query", "_list", "_text", "_content"}
)
TOTAL_MODES = ("none", "estimate", "accurate")


@dataclass(frozen=True)
class Include:
    """One _include / _revinclude: `source_type:param[:target_type]`; '*' for any."""

    source_type: str  # '*' for any type
    param: str  # '*' for every reference parameter
    target_type: str | None
    iterate: bool


@dataclass
class SearchRequest:
    resource_type: str | None
    # The types searched: one for a type-level search, _type's list (or None: every type) otherwise.
    types: tuple[str, ...] | None
    filter: Sql | None  # about the record `{rec}` (see sql.py); None: every record of `types`
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param code, descending)
    count: int = 20
    total_mode: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def default_order(self) -> bool:
        """Whether results come in record id order (no _sort), which pages by cursor."""
        return not self.sort

    def queryset(self) -> QuerySet[ResourceRecord]:
        """The matching, non-deleted records in result order."""
        records = ResourceRecord.objects.filter(deleted=False)
        if self.filter is not None:
            records = records.filter(self.filter.as_expression())
        return order(records, self.sort, self.types)


def parse_count(value: str, name: str = "_count") -> int:
    """A `_count` value capped at BTT_FHIR_MAX_COUNT; 400 unless a non-negative integer."""
    if not value.isdigit():
        raise FhirError.single(400, "value", f"{name}: '{value}' is not a non-negative integer")
    return min(int(value), settings.BTT_FHIR_MAX_COUNT)


def parse_request(
    resource_type: str | None,
    params: list[tuple[str, str]],
    *,
    strict: bool,
    base_url: str | None = None,
) -> SearchRequest:
    """Parse `params` for a search on `resource_type` (None: all types / `_type`).

    Unknown or unsupported parameters raise 400 when `strict`, else they are left out and
    reported in `issues`. Bad values always raise 400. `base_url` lets absolute references to
    this server match relative ones.
    """
    if resource_type is not None and resource_type not in resource_types():
        raise FhirError.single(404, "not-supported", f"'{resource_type}' is not a FHIR R4 resource type")
    request = SearchRequest(resource_type=resource_type, types=None, filter=None)
    request.count = settings.BTT_FHIR_DEFAULT_COUNT
    filters: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    types: tuple[str, ...] | None = (resource_type,) if resource_type else None

    for name, value in params:
        code = name.split(":", 1)[0]
        if name in SILENT_PARAMS:
            continue
        if code in UNSUPPORTED_PARAMS:
            ignored.append((name, "is not supported by this server"))
            continue
        if not code.startswith("_") or code in ("_id", "_lastUpdated", "_has") or code not in _RESULT_PARAMS:
            filters.append((name, value))
            continue
        if code == "_type":
            if resource_type is not None:
                ignored.append((name, "only applies to a search across all types"))
                continue
            names = tuple(t for t in (v.strip() for v in value.split(",")) if t)
            unknown = [t for t in names if t not in resource_types()]
            if unknown:
                raise FhirError.single(400, "value", f"_type: {', '.join(unknown)} is not a resource type")
            types = tuple(sorted(set(names))) if names else None
        else:
            apply_result_param(request, name, code, value)

    request.types = types
    builder = ConditionBuilder(base_url)
    request.filter = _build_filter(builder, types, filters, ignored)
    for code, _ in request.sort:
        _check_sort_key(code, request.types)
    if ignored:
        if strict:
            raise FhirError(
                400,
                [
                    Issue(code="not-supported", diagnostics=f"search parameter '{n}' {why}")
                    for n, why in ignored
                ],
            )
        request.issues.extend(
            Issue(
                severity="warning", code="not-supported", diagnostics=f"search parameter '{n}' {why}: ignored"
            )
            for n, why in ignored
        )
    return request


_RESULT_PARAMS = frozenset(
    {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_type"}
)


def apply_result_param(request: SearchRequest, name: str, code: str, value: str) -> None:
    """Apply one result parameter (`_count`, `_summary`, `_elements`, `_total`, ...) to `request`."""
    modifier = name.split(":", 1)[1] if ":" in name else None
    if code == "_count":
        request.count = parse_count(value)
    elif code == "_summary":
        if value not in SUMMARY_MODES:
            raise FhirError.single(
                400, "value", f"_summary: '{value}' is not one of {', '.join(SUMMARY_MODES)}"
            )
        request.summary = value
    elif code == "_elements":
        request.elements = tuple(e.strip() for e in value.split(",") if e.strip()) or None
    elif code == "_total":
        if value not in TOTAL_MODES:
            raise FhirError.single(400, "value", f"_total: '{value}' is not one of {', '.join(TOTAL_MODES)}")
        request.total_mode = value
    elif code == "_sort":
        request.sort.extend(_parse_sort(value))
    elif code in ("_include", "_revinclude"):
        if modifier not in (None, "iterate", "recurse"):
            raise FhirError.single(400, "invalid", f"{name}: the modifier :{modifier} is not known")
        include = _parse_include(name, value, iterate=modifier is not None)
        (request.revincludes if code == "_revinclude" else request.includes).append(include)


def _parse_sort(value: str) -> list[tuple[str, bool]]:
    keys = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        descending = item.startswith("-")
        keys.append((item[1:] if descending else item, descending))
    return keys


def _check_sort_key(code: str, types: tuple[str, ...] | None) -> None:
    name = "_sort"
    if code in ("_id", "_lastUpdated"):
        return
    candidates = types or tuple(sorted(resource_types()))
    definitions = [param_def(t, code) for t in candidates]
    known = [d for d in definitions if d is not None]
    if not known:
        raise FhirError.single(
            400, "value", f"{name}: '{code}' is not a search parameter of the searched types"
        )
    if any(d.type not in MODEL_FOR_TYPE for d in known):
        raise FhirError.single(400, "value", f"{name}: cannot sort on the {known[0].type} parameter '{code}'")


def _parse_include(name: str, value: str, *, iterate: bool) -> Include:
    if value == "*":
        return Include("*", "*", None, iterate)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise FhirError.single(
            400, "value", f"{name}: '{value}' is not [type]:[parameter] or [type]:[parameter]:[target type]"
        )
    source, param = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in resource_types():
        raise FhirError.single(400, "value", f"{name}: '{source}' is not a resource type")
    if target is not None and target not in resource_types():
        raise FhirError.single(400, "value", f"{name}: '{target}' is not a resource type")
    if param != "*":
        definition = param_def(source, param)
        if definition is None or definition.type != "reference":
            raise FhirError.single(
                400, "value", f"{name}: '{param}' is not a reference parameter of {source}"
            )
    return Include(source, param, target, iterate)


_LOWER_PREFIXES = ("gt", "ge", "sa")
_UPPER_PREFIXES = ("lt", "le", "eb")


def _pair_range_bounds(filters: list[tuple[str, str]]) -> list[tuple[str, str | tuple[str, str]]]:
    """Join `date=ge2021-03-01&date=lt2021-03-08` into one (name, (lower, upper)) range.

    As HAPI FHIR does, a lower and an upper bound on the same parameter then apply to the same
    value (a range), and the database answers them from one index row instead of intersecting
    two half-open conditions that each match half the table. Only single values with a prefix
    followed by a digit pair up; the condition builder pairs them for date parameters and ANDs
    them separately for any other type.
    """
    lower: dict[str, int] = {}
    upper: dict[str, int] = {}
    for index, (name, value) in enumerate(filters):
        if ":" in name or "." in name or name.startswith("_") or "," in value or len(value) < 3:
            continue
        if not value[2].isdigit():
            continue
        if value[:2] in _LOWER_PREFIXES:
            lower.setdefault(name, index)
        elif value[:2] in _UPPER_PREFIXES:
            upper.setdefault(name, index)
    pairs = {lower[name]: upper[name] for name in lower if name in upper}
    if not pairs:
        return list(filters)
    paired_uppers = set(pairs.values())
    result: list[tuple[str, str | tuple[str, str]]] = []
    for index, (name, value) in enumerate(filters):
        if index in pairs:
            result.append((name, (value, filters[pairs[index]][1])))
        elif index not in paired_uppers:
            result.append((name, value))
    return result


def _build_filter(
    builder: ConditionBuilder,
    types: tuple[str, ...] | None,
    filters: list[tuple[str, str]],
    ignored: list[tuple[str, str]],
) -> Sql | None:
    """The record filter; for several types, the OR of each type's own conditions.

    With several types, a parameter counts when some searched type defines it, and the types
    that lack it cannot match. `ignored` collects the parameters no searched type defines.
    """
    common: list[Sql] = []
    typed: list[tuple[str, str]] = []
    for name, value in filters:
        if name.split(":", 1)[0] in ("_id", "_lastUpdated"):
            condition = builder.condition("Resource", name, value)
            if condition is not None:
                common.append(condition)
        else:
            typed.append((name, value))
    typed = _pair_range_bounds(typed)
    candidates = types or tuple(sorted(resource_types()))
    alive = list(candidates)
    per_type: dict[str, list[Sql]] = {t: [] for t in candidates}
    shared: list[Sql] = []
    for name, value in typed:
        results: dict[str, Sql | None] = {}
        reason = "is not a known search parameter"
        for resource_type in alive:
            try:
                results[resource_type] = builder.condition(resource_type, name, value)
            except UnknownParameter as exc:
                reason = exc.reason
        if not results:
            ignored.append((name, reason))
            continue
        alive = [t for t in alive if t in results]
        if len(alive) > 1 and _same_definition(alive, name):
            # One subquery for all types instead of one per type (`_tag`, `_profile`, ...).
            condition = builder.condition(alive[0], name, value, any_type=True)
            if condition is not None:
                shared.append(condition)
            continue
        for resource_type, condition in results.items():
            if condition is not None:
                per_type[resource_type].append(condition)

    resource_type = "{rec}.resource_type"
    if len(alive) == len(candidates) and not any(per_type[t] for t in alive):
        # Nothing type-specific: a plain type filter (none at all across every type).
        type_filter = [] if types is None else [one_of(resource_type, alive)]
        conditions = [*type_filter, *shared, *common]
        return all_of(conditions) if conditions else None
    branches = [all_of([equals(resource_type, t), *per_type[t]]) for t in alive]
    if not branches:
        return NOTHING
    combined = all_of([any_of(branches), *shared, *common])
    if len(alive) == 1 and len(per_type[alive[0]]) == 1 and not shared and not common:
        # One condition on one type: its index alone can give the matches in record order.
        return replace(combined, records=per_type[alive[0]][0].records)
    return combined


def _same_definition(types: list[str], name: str) -> bool:
    """Whether `name` is a simple parameter with the same definition on every type."""
    if "." in name or name.startswith("_has:"):
        return False
    code = name.split(":", 1)[0]
    urls = {getattr(param_def(t, code), "url", None) for t in types}
    return len(urls) == 1 and None not in urls


# --- ordering -----------------------------------------------------------------------------------


def order(
    records: QuerySet[ResourceRecord], sort: list[tuple[str, bool]], types: tuple[str, ...] | None
) -> QuerySet:
    """`records` ordered by the _sort keys, then by record id (a stable, total order).

    A parameter with several values sorts by its lowest (ascending) or highest (descending)
    value; records without a value come last either way.
    """
    ordering = []
    for index, (code, descending) in enumerate(sort):
        if code == "_id":
            ordering.append(F("logical_id").desc() if descending else F("logical_id").asc())
            continue
        if code == "_lastUpdated":
            ordering.append(F("last_updated").desc() if descending else F("last_updated").asc())
            continue
        alias = f"sort_{index}"
        records = records.annotate(**{alias: _sort_value(code, descending, types)})
        ordering.append(F(alias).desc(nulls_last=True) if descending else F(alias).asc(nulls_last=True))
    ordering.append(F("pk").asc())
    return records.order_by(*ordering)


def _sort_value(code: str, descending: bool, types: tuple[str, ...] | None) -> Subquery:
    candidates = types or tuple(sorted(resource_types()))
    definition = next(d for d in (param_def(t, code) for t in candidates) if d is not None)
    model = MODEL_FOR_TYPE[definition.type]
    column = {
        "token": "code",
        "string": "value",
        "reference": "url",
        "number": "value",
        "quantity": "value",
        "uri": "uri",
    }.get(definition.type)
    if definition.type == "date":
        column = "high" if descending else "low"
    assert column is not None
    params = sorted({param for t in candidates for param in index_params(t, code)})
    rows = model.objects.filter(record_id=OuterRef("pk"), param__in=params)
    rows = rows.order_by(f"-{column}" if descending else column).values(column)[:1]
    return Subquery(rows)
