"""FHIR R4 search: the functions the views and the store call.

- `search_bundle(resource_type, params, base_url=..., strict=...)`: a searchset Bundle (dict) for
  a type-level (`/Observation?...`) or system-level (`resource_type=None`: `/?_type=...`) search;
- `page_bundle(params, base_url=...)`: a later page, from the paging links
  (`/?_getpages=<id>&_getpagesoffset=<n>&_count=<n>`);
- `everything_bundle(patient_id, params, base_url=...)`: `Patient/<id>/$everything`;
- `find_matches(resource_type, params)`: the matching records, for conditional create, update
  and delete (unknown parameters are errors there).

All matching goes through the index tables (`integrations.fhir.indexing`); resources are read
only to be returned. Client errors raise `FhirError` (400 naming the parameter and value).
"""

from __future__ import annotations

import json

from django.db.models import QuerySet

from integrations.fhir.compartment import in_compartment
from integrations.fhir.dates import parse_instant_param
from integrations.fhir.models import ResourceRecord
from integrations.fhir.models.search_index import SearchSnapshot
from integrations.fhir.outcomes import FhirError, Issue
from integrations.fhir.search.engine import first_page, next_page, self_link
from integrations.fhir.search.request import (
    SILENT_PARAMS,
    Include,
    SearchRequest,
    apply_result_param,
    parse_request,
)
from integrations.fhir.search.sql import Sql, adapt_datetime
from integrations.fhir.searchparams import resource_types

__all__ = ["everything_bundle", "find_matches", "page_bundle", "search_bundle"]


def search_bundle(
    resource_type: str | None,
    params: list[tuple[str, str]],
    *,
    base_url: str,
    strict: bool,
    compartment: tuple[str, str] | None = None,
) -> dict:
    """The first page of a search, as a `searchset` Bundle.

    `resource_type` None searches every type (or those `_type` lists). `strict` (Prefer:
    handling=strict) makes unknown parameters a 400; otherwise they are ignored and listed in an
    OperationOutcome entry with search.mode `outcome`. `compartment=("Patient", "123")` limits
    the search to that patient's compartment (`/Patient/123/Observation?...`).
    """
    request = parse_request(resource_type, params, strict=strict, base_url=base_url)
    path = f"/{resource_type}" if resource_type else ""
    if compartment is not None:
        request.filter = _in_compartment(request, compartment)
        path = f"/{compartment[0]}/{compartment[1]}{path}"
    stored = {"params": params, "compartment": list(compartment) if compartment else None}
    return first_page(
        request,
        base_url=base_url,
        self_url=self_link(base_url, path, params),
        kind="search",
        stored_params=stored,
    )


def find_matches(resource_type: str, params: list[tuple[str, str]]) -> QuerySet[ResourceRecord]:
    """The non-deleted records of `resource_type` matching `params` (strict: unknown params are 400).

    Result parameters (`_count`, `_sort`, ...) are accepted and have no effect.
    """
    request = parse_request(resource_type, params, strict=True)
    records = ResourceRecord.objects.filter(deleted=False, resource_type=resource_type)
    if request.filter is not None:
        records = records.filter(request.filter.as_expression())
    return records.order_by("pk")


def page_bundle(params: list[tuple[str, str]], *, base_url: str) -> dict:
    """A page of an earlier search, from its paging link (`_getpages`, `_getpagesoffset`, `_count`).

    410 when the search has expired (snapshots live an hour) or is unknown.
    """
    return next_page(params, base_url=base_url, rebuild=lambda snapshot: _rebuild(snapshot, base_url))


def everything_bundle(patient_id: str, params: list[tuple[str, str]], *, base_url: str) -> dict:
    """`Patient/<id>/$everything`: the patient, every resource in its compartment, and the
    resources they refer to (as `include` entries), paged like a search.

    Supports `_count`, `_since` (last updated at or after) and `_type` (compartment types to
    return; no referenced resources are added then); `_summary` and `_elements` shape the
    entries. `total` counts the matches (not the included resources). The caller checks that
    the Patient exists.
    """
    request = _everything_request(patient_id, params)
    return first_page(
        request,
        base_url=base_url,
        self_url=self_link(base_url, f"/Patient/{patient_id}/$everything", params),
        kind="everything",
        stored_params={"params": params, "patient": patient_id},
    )


# --- helpers ------------------------------------------------------------------------------------


def _in_compartment(request: SearchRequest, compartment: tuple[str, str]) -> Sql:
    compartment_type, compartment_id = compartment
    if compartment_type != "Patient":
        raise FhirError.single(400, "not-supported", f"the {compartment_type} compartment is not supported")
    condition = in_compartment(compartment_id, request.types)
    return condition if request.filter is None else request.filter & condition


def _rebuild(snapshot: SearchSnapshot, base_url: str) -> SearchRequest:
    """The request a snapshot was taken for, for its _include, _summary, ... on later pages."""
    stored = json.loads(snapshot.params)
    params = [tuple(pair) for pair in stored["params"]]
    if snapshot.kind == "everything":
        return _everything_request(stored["patient"], params)
    request = parse_request(snapshot.resource_type or None, params, strict=False, base_url=base_url)
    if stored.get("compartment"):
        request.filter = _in_compartment(request, tuple(stored["compartment"]))
    return request


def _everything_request(patient_id: str, params: list[tuple[str, str]]) -> SearchRequest:
    request = SearchRequest(resource_type=None, types=None, filter=None)
    request.count = parse_request(None, [], strict=False).count
    # A patient's compartment is small enough to count: $everything always gives its total.
    request.total_mode = "accurate"
    since = None
    types: tuple[str, ...] | None = None
    for name, value in params:
        if name in ("_count", "_summary", "_elements"):
            apply_result_param(request, name, name, value)
        elif name == "_since":
            since = parse_instant_param("_since", value)
        elif name == "_type":
            names = tuple(t.strip() for t in value.split(",") if t.strip())
            unknown = [t for t in names if t not in resource_types()]
            if unknown:
                raise FhirError.single(400, "value", f"_type: {', '.join(unknown)} is not a resource type")
            types = names or None
        elif name not in SILENT_PARAMS:
            request.issues.append(
                Issue(
                    severity="warning",
                    code="not-supported",
                    diagnostics=f"parameter '{name}' is not supported by $everything: ignored",
                )
            )
    condition = in_compartment(patient_id, types)
    if since is not None:
        condition &= Sql("{rec}.last_updated >= %s", (adapt_datetime(since),))
    request.filter = condition
    if types is None:
        # Resources the compartment refers to (Practitioner, Organization, Medication, ...).
        request.includes = [Include("*", "*", None, iterate=False)]
    return request
