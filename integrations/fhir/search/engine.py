"""Running a parsed search: pages, paging snapshots, _include/_revinclude and the searchset Bundle.

Paging: when the matches do not fit in one page, the ordered list of matching record ids is
stored in a `SearchSnapshot` (at most SNAPSHOT_LIMIT ids at a time) and the paging links name it,
so every page is cut from the list as it was when page 1 was served: a resource created, updated
or re-sorted by another client meanwhile is neither repeated nor skipped. A snapshot page shows
each resource's current version; resources deleted since are left out. Searches in the default
order (record id) extend a full snapshot with the next SNAPSHOT_LIMIT ids (those after the last one)
when paging reaches its end; searches with `_sort` stop there and say so in an outcome entry.

`total` is given whenever it costs nothing extra (one page, or a complete snapshot), and counted
when `_total=accurate`/`estimate` asks for it; `_total=none` leaves it out.
"""

from __future__ import annotations

import json
import operator
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import reduce
from urllib.parse import urlencode

import orjson
from django.db.models import Q, QuerySet
from django.utils import timezone

from integrations.fhir.models import ResourceRecord
from integrations.fhir.models.search_index import ReferenceIndex, SearchSnapshot
from integrations.fhir.outcomes import FhirError, Issue, operation_outcome
from integrations.fhir.search.request import Include, SearchRequest, parse_count
from integrations.fhir.search.shaping import shape

SNAPSHOT_LIMIT = 10_000  # record ids per snapshot (extended in steps this size in default order)
SNAPSHOT_TTL = timedelta(hours=1)
MAX_INCLUDED = 5_000  # included resources per page
MAX_INCLUDE_DEPTH = 5  # rounds of :iterate

_ROW_FIELDS = ("pk", "resource_type", "logical_id", "text")


@dataclass(frozen=True, slots=True)
class Row:
    pk: int
    resource_type: str
    logical_id: str
    text: str


def first_page(
    request: SearchRequest,
    *,
    base_url: str,
    self_url: str,
    kind: str,
    stored_params: dict,
) -> dict:
    """The first page of `request`'s results, taking a snapshot when there are more pages."""
    issues = list(request.issues)
    records = request.queryset()
    if request.count == 0 or request.summary == "count":
        total = None if request.total_mode == "none" else records.count()
        return _bundle(total, [_link("self", self_url)], _outcome(issues))

    count = request.count
    rows = _rows(records, count + 1)
    if len(rows) <= count:
        total = None if request.total_mode == "none" else len(rows)
        entries = _page_entries(request, rows, base_url, issues)
        return _bundle(total, [_link("self", self_url)], _outcome(issues) + entries)

    ids = list(records.values_list("pk", flat=True)[: SNAPSHOT_LIMIT + 1])
    complete = len(ids) <= SNAPSHOT_LIMIT
    ids = ids[:SNAPSHOT_LIMIT]
    if complete:
        total: int | None = len(ids)
    elif request.total_mode in ("accurate", "estimate"):
        total = records.count()
    else:
        total = None
    snapshot = _create_snapshot(request, kind, stored_params, ids, total, complete)
    page_ids = ids[:count]
    if [row.pk for row in rows[:count]] != page_ids:
        # A write landed between the two queries: page 1 is the snapshot's first page.
        rows = _rows_by_ids(page_ids)
    else:
        rows = rows[:count]
    entries = _page_entries(request, rows, base_url, issues)
    links = [_link("self", self_url), *_paging_links(base_url, snapshot, ids, 0, count, request)]
    if request.total_mode == "none":
        total = None
    return _bundle(total, links, _outcome(_limit_issues(snapshot, request, issues)) + entries)


def next_page(params: list[tuple[str, str]], *, base_url: str, rebuild: Callable[[SearchSnapshot], SearchRequest]) -> dict:
    """A later page of a snapshot: `_getpages=<id>&_getpagesoffset=<n>&_count=<n>`."""
    values = dict(params)
    snapshot_id = values.get("_getpages", "")
    offset_text = values.get("_getpagesoffset", "0")
    if not offset_text.isdigit():
        raise FhirError.single(400, "value", f"_getpagesoffset: '{offset_text}' is not a non-negative integer")
    offset = int(offset_text)
    snapshot = SearchSnapshot.objects.filter(pk=snapshot_id, expires__gt=timezone.now()).first()
    if snapshot is None:
        raise FhirError.single(
            410, "not-found", f"the search '{snapshot_id}' is unknown or has expired; run the search again"
        )
    request = rebuild(snapshot)
    count = parse_count(values["_count"]) if "_count" in values else request.count
    if count == 0:
        count = request.count or 1
    ids = _snapshot_ids(snapshot)
    if offset + count > len(ids) and not snapshot.complete and request.default_order:
        ids = _extend_snapshot(snapshot, request, ids)
    rows = _rows_by_ids(ids[offset : offset + count])
    issues: list[Issue] = []
    entries = _page_entries(request, rows, base_url, issues)
    self_url = _page_url(base_url, snapshot.id, offset, count)
    links = [_link("self", self_url), *_paging_links(base_url, snapshot, ids, offset, count, request)]
    total = None if request.total_mode == "none" else snapshot.total
    return _bundle(total, links, _outcome(_limit_issues(snapshot, request, issues)) + entries)


# --- rows ---------------------------------------------------------------------------------------


def _rows(records: QuerySet, limit: int) -> list[Row]:
    return [Row(*values) for values in records.values_list(*_ROW_FIELDS)[:limit]]


def _rows_by_ids(ids: list[int]) -> list[Row]:
    """The non-deleted records with these ids, in the order of `ids`."""
    if not ids:
        return []
    found = {
        values[0]: Row(*values)
        for values in ResourceRecord.objects.filter(pk__in=ids, deleted=False).values_list(*_ROW_FIELDS)
    }
    return [found[pk] for pk in ids if pk in found]


def _rows_for_targets(pairs: set[tuple[str, str]], limit: int) -> list[Row]:
    """Non-deleted records named by (type, id) pairs, in record id order."""
    if not pairs:
        return []
    by_type: dict[str, list[str]] = defaultdict(list)
    for resource_type, logical_id in pairs:
        by_type[resource_type].append(logical_id)
    condition = reduce(
        operator.or_, (Q(resource_type=t, logical_id__in=ids) for t, ids in by_type.items())
    )
    records = ResourceRecord.objects.filter(deleted=False).filter(condition).order_by("pk")
    return _rows(records, limit)


# --- snapshots ----------------------------------------------------------------------------------


def _create_snapshot(
    request: SearchRequest, kind: str, stored_params: dict, ids: list[int], total: int | None, complete: bool
) -> SearchSnapshot:
    now = timezone.now()
    # Expired snapshots go when new ones come (an indexed range delete, usually of nothing).
    SearchSnapshot.objects.filter(expires__lt=now).delete()
    return SearchSnapshot.objects.create(
        id=str(uuid.uuid4()),
        created=now,
        expires=now + SNAPSHOT_TTL,
        resource_type=request.resource_type or "",
        kind=kind,
        params=json.dumps(stored_params),
        ids=",".join(map(str, ids)),
        total=total,
        complete=complete,
    )


def _snapshot_ids(snapshot: SearchSnapshot) -> list[int]:
    return [int(pk) for pk in snapshot.ids.split(",")] if snapshot.ids else []


def _extend_snapshot(snapshot: SearchSnapshot, request: SearchRequest, ids: list[int]) -> list[int]:
    """Append the next SNAPSHOT_LIMIT matches after the last id (default order only)."""
    more = list(
        request.queryset().filter(pk__gt=ids[-1]).values_list("pk", flat=True)[: SNAPSHOT_LIMIT + 1]
    )
    snapshot.complete = len(more) <= SNAPSHOT_LIMIT
    ids = ids + more[:SNAPSHOT_LIMIT]
    snapshot.ids = ",".join(map(str, ids))
    if snapshot.complete and snapshot.total is None:
        snapshot.total = len(ids)
    SearchSnapshot.objects.filter(pk=snapshot.pk).update(
        ids=snapshot.ids, complete=snapshot.complete, total=snapshot.total
    )
    return ids


def _limit_issues(snapshot: SearchSnapshot, request: SearchRequest, issues: list[Issue]) -> list[Issue]:
    if not snapshot.complete and not request.default_order:
        issues = [
            *issues,
            Issue(
                severity="warning",
                code="too-costly",
                diagnostics=f"only the first {SNAPSHOT_LIMIT} matches of a sorted search can be paged through",
            ),
        ]
    return issues


# --- links --------------------------------------------------------------------------------------


def _link(relation: str, url: str) -> dict:
    return {"relation": relation, "url": url}


def _page_url(base_url: str, snapshot_id: str, offset: int, count: int) -> str:
    query = urlencode(
        {"_getpages": snapshot_id, "_getpagesoffset": offset, "_count": count, "_bundletype": "searchset"}
    )
    return f"{base_url}?{query}"


def _paging_links(
    base_url: str, snapshot: SearchSnapshot, ids: list[int], offset: int, count: int, request: SearchRequest
) -> list[dict]:
    links = [_link("first", _page_url(base_url, snapshot.id, 0, count))]
    if offset > 0:
        links.append(_link("previous", _page_url(base_url, snapshot.id, max(offset - count, 0), count)))
    more = offset + count < len(ids) or (not snapshot.complete and request.default_order)
    if more:
        links.append(_link("next", _page_url(base_url, snapshot.id, offset + count, count)))
    if snapshot.complete and ids:
        links.append(_link("last", _page_url(base_url, snapshot.id, (len(ids) - 1) // count * count, count)))
    return links


def self_link(base_url: str, path: str, params: list[tuple[str, str]]) -> str:
    """The absolute URL of a search as the client asked it."""
    url = f"{base_url}{path}"
    return f"{url}?{urlencode(params)}" if params else url


# --- entries ------------------------------------------------------------------------------------


def _bundle(total: int | None, links: list[dict], entries: list[dict]) -> dict:
    bundle: dict = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": timezone.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")},
        "type": "searchset",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def _outcome(issues: list[Issue]) -> list[dict]:
    if not issues:
        return []
    return [{"resource": operation_outcome(issues), "search": {"mode": "outcome"}}]


def _entry(row: Row, mode: str, base_url: str, summary: str | None, elements: tuple[str, ...] | None) -> dict:
    resource = shape(orjson.loads(row.text), summary, elements)
    return {
        "fullUrl": f"{base_url}/{row.resource_type}/{row.logical_id}",
        "resource": resource,
        "search": {"mode": mode},
    }


def _page_entries(request: SearchRequest, rows: list[Row], base_url: str, issues: list[Issue]) -> list[dict]:
    """Entries for a page's matches, followed by what _include/_revinclude add to them."""
    entries = [_entry(row, "match", base_url, request.summary, request.elements) for row in rows]
    included, truncated = _included(request, rows)
    # _elements shapes the matches only; included resources come whole (or as _summary says).
    entries.extend(_entry(row, "include", base_url, request.summary, None) for row in included)
    if truncated:
        issues.append(
            Issue(
                severity="warning",
                code="too-costly",
                diagnostics=f"_include/_revinclude stopped at {MAX_INCLUDED} included resources for this page",
            )
        )
    return entries


# --- _include / _revinclude -----------------------------------------------------------------------


def _included(request: SearchRequest, matches: list[Row]) -> tuple[list[Row], bool]:
    """Resources the page's _include/_revinclude add, and whether MAX_INCLUDED cut them short.

    Plain includes apply to the matches; `:iterate` ones also to what was included, round after
    round, until nothing new comes (or MAX_INCLUDE_DEPTH rounds).
    """
    specs = [(spec, False) for spec in request.includes] + [(spec, True) for spec in request.revincludes]
    if not specs or not matches:
        return [], False
    seen = {row.pk for row in matches}
    included: list[Row] = []
    frontier = matches
    for depth in range(MAX_INCLUDE_DEPTH + 1):
        active = specs if depth == 0 else [(spec, rev) for spec, rev in specs if spec.iterate]
        if not active or not frontier:
            break
        found: list[Row] = []
        for spec, reverse in active:
            budget = MAX_INCLUDED - len(included) - len(found) + 1
            rows = _revinclude(spec, frontier, budget) if reverse else _include(spec, frontier, budget)
            for row in rows:
                if row.pk not in seen:
                    seen.add(row.pk)
                    found.append(row)
        included.extend(found)
        if len(included) > MAX_INCLUDED:
            return included[:MAX_INCLUDED], True
        frontier = found
    return included, False


def _include(spec: Include, sources: list[Row], limit: int) -> list[Row]:
    """The targets of the sources' references named by `spec` (`Type:param[:Target]`, `*`)."""
    pks = [row.pk for row in sources if spec.source_type in ("*", row.resource_type)]
    if not pks:
        return []
    references = ReferenceIndex.objects.filter(record_id__in=pks).exclude(target_id="")
    if spec.param != "*":
        references = references.filter(param=spec.param)
    if spec.target_type:
        references = references.filter(target_type=spec.target_type)
    pairs = set(references.values_list("target_type", "target_id"))
    return _rows_for_targets(pairs, limit)


def _revinclude(spec: Include, sources: list[Row], limit: int) -> list[Row]:
    """Resources whose reference `spec` (`Type:param[:Target]`, `*`) points at one of the sources."""
    targets: dict[str, list[str]] = defaultdict(list)
    for row in sources:
        if spec.target_type in (None, row.resource_type):
            targets[row.resource_type].append(row.logical_id)
    if not targets:
        return []
    references = ReferenceIndex.objects.filter(
        reduce(operator.or_, (Q(target_type=t, target_id__in=ids) for t, ids in targets.items()))
    )
    if spec.source_type != "*":
        references = references.filter(resource_type=spec.source_type)
    if spec.param != "*":
        references = references.filter(param=spec.param)
    records = ResourceRecord.objects.filter(
        pk__in=references.values("record_id"), deleted=False
    ).order_by("pk")
    return _rows(records, limit)
