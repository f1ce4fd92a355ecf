"""Running a parsed search: pages, paging state, _include/_revinclude and the searchset Bundle.

Paging must stay correct while other clients write: no match repeated or skipped between pages.
Every multi-page search has paging state that its links name (`?_getpages=<id>&...`), in one of
two ways:

- Default order (record id, no `_sort`): cursor paging. Page 1 notes the highest record id
  (`watermark`) in a signed cursor id (`CursorSnapshot`: nothing is written); each link carries the id it continues after (`_after`) or before (`_before`), and
  pages are the matches with ids up to the watermark. Record ids never change, so no resource is
  repeated or skipped; resources created after page 1 never appear; a resource updated since
  appears as it is now if it still matches, and deleted ones drop out. Each page costs what page 1
  costs (fetch `_count`+1 rows), however many resources match.
  Caveat: a transaction that was still running when page 1 was served, and whose new resources
  got ids below the watermark, shows those resources on later pages once it commits (PostgreSQL
  hands out ids before commit). Nothing is repeated or skipped because of it.
- `_sort`: the ordered ids of the matches (up to SNAPSHOT_LIMIT) are stored with page 1 in a
  `SearchSnapshot` row (the sort
  must see every match anyway), and every page is cut from that list; each resource is shown as
  it is now, deleted ones are left out.

`total` is given when it costs nothing extra (a single page, or a sorted snapshot) and counted
when `_total=accurate` or `_total=estimate` asks for it; `_total=none` leaves it out.
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
from django.core import signing
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from integrations.fhir.models import ResourceRecord
from integrations.fhir.models.search_index import ReferenceIndex, SearchSnapshot
from integrations.fhir.outcomes import FhirError, Issue, operation_outcome
from integrations.fhir.search.request import Include, SearchRequest, parse_count
from integrations.fhir.search.shaping import shape
from integrations.fhir.search.sql import RECORDS_TABLE, Sql, all_of

SNAPSHOT_LIMIT = 10_000  # ids kept for a sorted search
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
    """The first page of `request`'s results, with paging state when there are more pages."""
    issues = list(request.issues)
    counted = request.total_mode in ("accurate", "estimate")
    if request.count == 0 or request.summary == "count":
        total = None if request.total_mode == "none" else _count(request)
        return _bundle(total, [_link("self", self_url)], _outcome(issues))

    count = request.count
    if request.default_order:
        rows, watermark = _matches_and_watermark(request, count + 1)
    else:
        records = request.queryset()
        rows, watermark = _rows(records, count + 1), None
    if len(rows) <= count:
        total = None if request.total_mode == "none" else len(rows)
        entries = _page_entries(request, rows, base_url, issues)
        return _bundle(total, [_link("self", self_url)], _outcome(issues) + entries)

    if request.default_order:
        total = _count(request) if counted else None
        snapshot = _cursor_snapshot(request, kind, stored_params, watermark=watermark, total=total)
        rows = rows[:count]
        links = [
            _link("self", self_url),
            *_cursor_links(base_url, snapshot, rows, 0, count, previous=False, more=True),
        ]
    else:
        ids = list(records.values_list("pk", flat=True)[: SNAPSHOT_LIMIT + 1])
        complete = len(ids) <= SNAPSHOT_LIMIT
        ids = ids[:SNAPSHOT_LIMIT]
        total = len(ids) if complete else (records.count() if counted else None)
        snapshot = _create_snapshot(request, kind, stored_params, ids=ids, total=total, complete=complete)
        page_ids = ids[:count]
        # If a write landed between the two queries, page 1 is the snapshot's first page.
        rows = rows[:count] if [row.pk for row in rows[:count]] == page_ids else _rows_by_ids(page_ids)
        links = [_link("self", self_url), *_list_links(base_url, snapshot, len(ids), 0, count)]
    entries = _page_entries(request, rows, base_url, issues)
    if request.total_mode == "none":
        total = None
    return _bundle(total, links, _outcome(_limit_issues(snapshot, issues)) + entries)


def next_page(
    params: list[tuple[str, str]], *, base_url: str, rebuild: Callable[[SearchSnapshot], SearchRequest]
) -> dict:
    """A later page: `_getpages=<id>` with `_after`/`_before` (cursor) or `_getpagesoffset`, `_count`."""
    values = dict(params)
    snapshot_id = values.get("_getpages", "")
    offset = _non_negative(values, "_getpagesoffset", 0)
    after = _non_negative(values, "_after", None)
    before = _non_negative(values, "_before", None)
    snapshot = _load_snapshot(snapshot_id)
    if snapshot is None:
        raise FhirError.single(
            410, "not-found", f"the search '{snapshot_id}' is unknown or has expired; run the search again"
        )
    request = rebuild(snapshot)
    count = parse_count(values["_count"]) if "_count" in values else request.count
    count = count or request.count or 1
    issues: list[Issue] = []
    if snapshot.watermark is not None:
        rows, previous, more, offset = _cursor_page(request, snapshot, count, offset, after, before)
        links = _cursor_links(base_url, snapshot, rows, offset, count, previous=previous, more=more)
        self_url = _page_url(base_url, snapshot.id, offset, count, after=after, before=before)
    else:
        ids = _snapshot_ids(snapshot)
        rows = _rows_by_ids(ids[offset : offset + count])
        links = _list_links(base_url, snapshot, len(ids), offset, count)
        self_url = _page_url(base_url, snapshot.id, offset, count)
    entries = _page_entries(request, rows, base_url, issues)
    total = None if request.total_mode == "none" else snapshot.total
    return _bundle(
        total, [_link("self", self_url), *links], _outcome(_limit_issues(snapshot, issues)) + entries
    )


def _non_negative(values: dict[str, str], name: str, default: int | None) -> int | None:
    text = values.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise FhirError.single(400, "value", f"{name}: '{text}' is not a non-negative integer")
    return int(text)


# --- rows ---------------------------------------------------------------------------------------


def _rows(records: QuerySet, limit: int) -> list[Row]:
    # Two steps: the page's ids, which the database finds from indexes alone (the record-id walk
    # over non-matching records never touches the table), then the bodies of just those records.
    return _rows_by_ids(list(records.values_list("pk", flat=True)[:limit]))


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
    condition = reduce(operator.or_, (Q(resource_type=t, logical_id__in=ids) for t, ids in by_type.items()))
    records = ResourceRecord.objects.filter(deleted=False).filter(condition).order_by("pk")
    return _rows(records, limit)


# --- paging state --------------------------------------------------------------------------------


def _matches_and_watermark(request: SearchRequest, limit: int) -> tuple[list[Row], int]:
    """Page 1 of a default-order search and the highest record id, read by one statement so
    that both see the same state (0 for the watermark when nothing matches)."""
    rows = _matches(request, limit, watermark=True)
    return [Row(*values[:4]) for values in rows], (rows[0][4] if rows else 0)


@dataclass(frozen=True)
class CursorSnapshot:
    """The paging state of a default-order search, carried in its links instead of a table.

    Its id is the signed, compressed state itself (`c.` + django.core.signing), so page 1 of a
    search writes nothing; the signature keeps clients from handing us made-up state, and its
    timestamp gives the same one-hour life as a stored snapshot.
    """

    id: str
    resource_type: str
    kind: str
    params: str
    watermark: int
    total: int | None
    complete: bool = True
    ids: str = ""


_CURSOR_PREFIX = "c."
_CURSOR_SALT = "btt.fhir.search.cursor"


def _cursor_snapshot(
    request: SearchRequest, kind: str, stored_params: dict, *, watermark: int, total: int | None
) -> CursorSnapshot:
    state = {
        "t": request.resource_type or "",
        "k": kind,
        "p": json.dumps(stored_params),
        "w": watermark,
        "n": total,
    }
    token = _CURSOR_PREFIX + signing.dumps(state, salt=_CURSOR_SALT, compress=True)
    return CursorSnapshot(token, state["t"], kind, state["p"], watermark, total)


def _load_snapshot(snapshot_id: str) -> CursorSnapshot | SearchSnapshot | None:
    """The paging state a link names: decoded from a cursor id, or a stored (sorted) snapshot."""
    if snapshot_id.startswith(_CURSOR_PREFIX):
        try:
            state = signing.loads(snapshot_id[len(_CURSOR_PREFIX) :], salt=_CURSOR_SALT, max_age=SNAPSHOT_TTL)
        except signing.BadSignature:  # also SignatureExpired
            return None
        return CursorSnapshot(snapshot_id, state["t"], state["k"], state["p"], state["w"], state["n"])
    return SearchSnapshot.objects.filter(pk=snapshot_id, expires__gt=timezone.now()).first()


def _create_snapshot(
    request: SearchRequest,
    kind: str,
    stored_params: dict,
    *,
    watermark: int | None = None,
    ids: list[int] | None = None,
    total: int | None = None,
    complete: bool = True,
) -> SearchSnapshot:
    now = timezone.now()
    # A snapshot is a disposable cache of paging state: losing the last few to a crash only makes
    # their links answer 410, so its own commit need not wait for the WAL flush. Not inside a
    # caller's transaction (a transaction Bundle's GET entry), whose writes must stay durable.
    relaxed = connection.vendor == "postgresql" and not connection.in_atomic_block
    with transaction.atomic():
        if relaxed:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        # Expired snapshots go when new ones come (an indexed range delete, usually of nothing).
        SearchSnapshot.objects.filter(expires__lt=now).delete()
        return SearchSnapshot.objects.create(
            id=str(uuid.uuid4()),
            created=now,
            expires=now + SNAPSHOT_TTL,
            resource_type=request.resource_type or "",
            kind=kind,
            params=json.dumps(stored_params),
            watermark=watermark,
            ids=",".join(map(str, ids or ())),
            total=total,
            complete=complete,
        )


def _snapshot_ids(snapshot: SearchSnapshot) -> list[int]:
    return [int(pk) for pk in snapshot.ids.split(",")] if snapshot.ids else []


def _cursor_page(
    request: SearchRequest,
    snapshot: SearchSnapshot,
    count: int,
    offset: int,
    after: int | None,
    before: int | None,
) -> tuple[list[Row], bool, bool, int]:
    """(rows, whether some precede, whether more follow, offset) of a default-order page.

    `_after` continues after a record id, `_before` goes back from one; without either the page
    starts at `_getpagesoffset` (for clients that build offsets themselves).
    """
    upto = Sql("{rec}.id <= %s", (snapshot.watermark,))
    if before is not None:
        rows = _match_rows(request, count + 1, upto & Sql("{rec}.id < %s", (before,)), descending=True)
        earlier = len(rows) > count
        rows = list(reversed(rows[:count]))
        later = _exists(request, upto & Sql("{rec}.id >= %s", (before,)))
        return rows, earlier, later, offset if earlier else 0
    if after is not None:
        rows = _match_rows(request, count + 1, upto & Sql("{rec}.id > %s", (after,)))
        return rows[:count], after > 0, len(rows) > count, offset
    rows = _match_rows(request, count + 1, upto, offset=offset)
    return rows[:count], offset > 0, len(rows) > count, offset


# --- default-order statements -----------------------------------------------------------------
# The ORM's construction and compilation of these statements cost more than running them, so the
# default-order pages (nearly every search) are plain SQL around the request's `Sql` filter.


def _where(request: SearchRequest, extra: Sql | None) -> Sql:
    """The live records `m` that match `request` (and `extra`)."""
    conditions = [Sql("NOT {rec}.deleted")]
    if request.filter is not None:
        conditions.append(request.filter)
    if extra is not None:
        conditions.append(extra)
    return all_of(conditions).on("m")


def _matches(
    request: SearchRequest,
    limit: int,
    extra: Sql | None = None,
    *,
    descending: bool = False,
    offset: int = 0,
    watermark: bool = False,
) -> list[tuple]:
    """(id, resource_type, logical_id, text[, watermark]) of up to `limit` matches in record-id
    order after skipping `offset`.

    Two steps in one statement: the page's ids, which the database finds from indexes alone
    (the record-id walk over non-matching records never touches the table), then the bodies of
    just those records. When the filter is one index condition (`Sql.records`), the ids come from
    that index alone, without walking the records of the type beside it.
    """
    driver = request.filter.records if request.filter is not None else None
    if driver is not None:
        condition = extra.on("d") if extra is not None else None
        rows = _page(
            f"FROM ({driver.text}) d" + (f" WHERE {condition.text}" if condition is not None else ""),
            [*driver.params, *(condition.params if condition is not None else ())],
            "d",
            limit,
            descending=descending,
            offset=offset,
            watermark=watermark,
            distinct=True,
        )
        # Index rows go with their record; should an id still not be a live record, the general
        # statement decides.
        if all(row[1] is not None and not row[-1] for row in rows):
            return [row[:-1] for row in rows]
    where = _where(request, extra)
    rows = _page(
        f"FROM {RECORDS_TABLE} m WHERE {where.text}",
        list(where.params),
        "m",
        limit,
        descending=descending,
        offset=offset,
        watermark=watermark,
    )
    return [row[:-1] for row in rows]


def _page(
    source: str,
    params: list,
    alias: str,
    limit: int,
    *,
    descending: bool,
    offset: int,
    watermark: bool,
    distinct: bool = False,
) -> list[tuple]:
    """(id, resource_type, logical_id, text[, watermark], deleted) of the page of the ids
    `{alias}.id` that `source` (`FROM ... [WHERE ...]`, with `params`) gives, in id order."""
    direction = "DESC" if descending else "ASC"
    highest = f", (SELECT MAX(h.id) FROM {RECORDS_TABLE} h) AS w" if watermark else ""
    sql = (
        f"SELECT p.id, r.resource_type, r.logical_id, r.text{', p.w' if watermark else ''}, r.deleted"
        f" FROM (SELECT {'DISTINCT ' if distinct else ''}{alias}.id{highest} {source}"
        f" ORDER BY {alias}.id {direction} LIMIT %s OFFSET %s) p"
        f" LEFT JOIN {RECORDS_TABLE} r ON r.id = p.id ORDER BY p.id {direction}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, limit, offset])
        return cursor.fetchall()


def _match_rows(
    request: SearchRequest, limit: int, extra: Sql | None = None, *, descending: bool = False, offset: int = 0
) -> list[Row]:
    return [Row(*values) for values in _matches(request, limit, extra, descending=descending, offset=offset)]


def _exists(request: SearchRequest, extra: Sql | None = None) -> bool:
    where = _where(request, extra)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 FROM {RECORDS_TABLE} m WHERE {where.text} LIMIT 1", where.params)
        return cursor.fetchone() is not None


def _count(request: SearchRequest) -> int:
    where = _where(request, None)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {RECORDS_TABLE} m WHERE {where.text}", where.params)
        return cursor.fetchone()[0]


def _limit_issues(snapshot: SearchSnapshot, issues: list[Issue]) -> list[Issue]:
    if not snapshot.complete:
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


def _page_url(
    base_url: str,
    snapshot_id: str,
    offset: int,
    count: int,
    *,
    after: int | None = None,
    before: int | None = None,
) -> str:
    query: dict[str, str | int] = {"_getpages": snapshot_id, "_getpagesoffset": offset, "_count": count}
    if after is not None:
        query["_after"] = after
    if before is not None:
        query["_before"] = before
    query["_bundletype"] = "searchset"
    return f"{base_url}?{urlencode(query)}"


def _cursor_links(
    base_url: str,
    snapshot: SearchSnapshot,
    rows: list[Row],
    offset: int,
    count: int,
    *,
    previous: bool,
    more: bool,
) -> list[dict]:
    links = [_link("first", _page_url(base_url, snapshot.id, 0, count, after=0))]
    if previous and rows:
        links.append(
            _link(
                "previous", _page_url(base_url, snapshot.id, max(offset - count, 0), count, before=rows[0].pk)
            )
        )
    if more and rows:
        links.append(
            _link("next", _page_url(base_url, snapshot.id, offset + count, count, after=rows[-1].pk))
        )
    if snapshot.total is not None:
        last = max(snapshot.total - 1, 0) // count * count
        links.append(_link("last", _page_url(base_url, snapshot.id, last, count)))
    return links


def _list_links(base_url: str, snapshot: SearchSnapshot, length: int, offset: int, count: int) -> list[dict]:
    links = [_link("first", _page_url(base_url, snapshot.id, 0, count))]
    if offset > 0:
        links.append(_link("previous", _page_url(base_url, snapshot.id, max(offset - count, 0), count)))
    if offset + count < length:
        links.append(_link("next", _page_url(base_url, snapshot.id, offset + count, count)))
    if length:
        links.append(_link("last", _page_url(base_url, snapshot.id, (length - 1) // count * count, count)))
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
    records = ResourceRecord.objects.filter(pk__in=references.values("record_id"), deleted=False).order_by(
        "pk"
    )
    return _rows(records, limit)
