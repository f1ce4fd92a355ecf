"""History interactions (instance, type and system) as `history` Bundles.

Pages are cut by version row id (keyset), newest first: versions written while a client pages
through get higher ids and never shift the pages it has not read yet, so nothing is skipped or
repeated.
"""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
from django.conf import settings
from django.db.models import QuerySet

from integrations.fhir.dates import parse_instant_param
from integrations.fhir.models import ResourceRecord, ResourceVersion
from integrations.fhir.outcomes import FhirError, not_found
from integrations.fhir.store import format_instant
from integrations.fhir.validation import check_resource_type

_KNOWN = {"_count", "_since", "_at", "_before_version", "_format", "_pretty"}


def _count(params: dict[str, str]) -> int:
    raw = params.get("_count", str(settings.BTT_FHIR_DEFAULT_COUNT))
    if not raw.isdigit():
        raise FhirError.single(400, "value", f"_count must be a non-negative integer, got {raw!r}")
    return min(int(raw), settings.BTT_FHIR_MAX_COUNT)


def history_bundle(
    resource_type: str | None, logical_id: str | None, params: list[tuple[str, str]], *, base_url: str
) -> dict:
    """The history Bundle of one resource, one type or the whole server, newest version first.

    Supports `_count`, `_since` (versions at or after an instant) and `_at` (the versions current
    at an instant); unknown parameters are refused with 400 naming them.
    """
    query = dict(params)
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise FhirError.single(400, "not-supported", f"unknown history parameter(s): {', '.join(unknown)}")
    versions: QuerySet[ResourceVersion] = ResourceVersion.objects.all()
    if resource_type is not None:
        check_resource_type(resource_type)
        versions = versions.filter(resource_type=resource_type)
    if logical_id is not None:
        if not ResourceRecord.objects.filter(resource_type=resource_type, logical_id=logical_id).exists():
            raise not_found(resource_type or "", logical_id)
        versions = versions.filter(logical_id=logical_id)
    if "_since" in query:
        versions = versions.filter(last_updated__gte=parse_instant_param("_since", query["_since"]))
    if "_at" in query:
        # The versions that were current at that instant: the newest one per resource at or before it.
        at = parse_instant_param("_at", query["_at"])
        versions = versions.filter(last_updated__lte=at)
    count = _count(query)
    if "_before_version" in query:
        if not query["_before_version"].isdigit():
            raise FhirError.single(400, "value", "_before_version must be an integer")
        versions = versions.filter(pk__lt=int(query["_before_version"]))
    rows = list(versions.order_by("-pk")[: count + 1])
    if "_at" in query:
        seen: set[int] = set()
        latest = []
        for row in rows:
            if row.record_id not in seen:
                seen.add(row.record_id)
                latest.append(row)
        rows = latest
    has_more = len(rows) > count
    rows = rows[:count]
    path = "/".join(p for p in (base_url, resource_type, logical_id, "_history") if p)
    bundle: dict = {
        "resourceType": "Bundle",
        "type": "history",
        "link": [{"relation": "self", "url": _url(path, params)}],
        "entry": [_entry(row, base_url) for row in rows],
    }
    if has_more:
        next_params = [(k, v) for k, v in params if k != "_before_version"]
        next_params.append(("_before_version", str(rows[-1].pk)))
        bundle["link"].append({"relation": "next", "url": _url(path, next_params)})
    return bundle


def _url(path: str, params: list[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def _entry(row: ResourceVersion, base_url: str) -> dict:
    full_url = f"{base_url}/{row.resource_type}/{row.logical_id}"
    entry: dict = {"fullUrl": full_url}
    if not row.deleted:
        entry["resource"] = orjson.loads(row.text)
    entry["request"] = {
        "method": row.method,
        "url": f"{row.resource_type}/{row.logical_id}" if row.method != "POST" else row.resource_type,
    }
    status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(row.method, "200 OK")
    entry["response"] = {
        "status": status,
        "etag": f'W/"{row.version_id}"',
        "lastModified": format_instant(row.last_updated),
    }
    return entry
