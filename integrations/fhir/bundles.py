"""Batch and transaction Bundles: `POST /fhir` with a Bundle body (FHIR R4 http.html#transaction).

Every entry runs through `interactions.dispatch`, the routing the HTTP views use, so an entry
behaves like the same request sent alone; the exceptions are the plain creates of a transaction,
which take a bulk path for speed (one INSERT per table for the whole Bundle) with the same checks.

batch
    Entries are independent: each runs in its own savepoint, and a failure becomes that entry's
    `response.status` and `response.outcome` while the other entries still apply. References
    between entries (`urn:uuid:`) are refused: they need a transaction.

transaction
    All or nothing, in one database transaction. Entries are processed in the order the spec
    gives (DELETE, then POST, then PUT/PATCH, then GET/HEAD) and answered in request order.
    Server ids for creates are assigned up front, so every reference to an entry's fullUrl
    (`urn:uuid:`, `urn:oid:` or an absolute URL) is rewritten to `Type/id` before anything is
    stored: in references anywhere in the resource (extensions and contained resources too) and
    in narrative links. Conditional creates (ifNoneExist) and conditional updates are resolved
    first, so references to their fullUrl point at the matched resource. The first failure rolls
    everything back and is answered as an OperationOutcome with the failing entry's status, its
    diagnostics and expressions prefixed with the entry (`Bundle.entry[3]: ...`).

Both: conditional references (`"reference": "Patient?identifier=sys|123"`) are resolved by search
to exactly one resource (none: 400, several: 412); in a transaction a resource written by the
same Bundle counts as a match when the criteria are a single `identifier`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction

from btt_health.api_auth.services import Principal
from integrations.fhir import interactions, store
from integrations.fhir.interactions import InteractionRequest, InteractionResponse
from integrations.fhir.outcomes import FhirError, Issue, information, operation_outcome
from integrations.fhir.validation import check_resource_type, is_known_resource_type, validate_resource

logger = logging.getLogger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
_BATCH_TYPES = frozenset({"batch", "transaction"})
_PLACEHOLDER_PREFIXES = ("urn:uuid:", "urn:oid:")
# `Patient?identifier=sys|1`: a conditional reference (R4 http.html#trules).
_CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]*)\?(.+)$")
# `href="..."` / `src="..."` in a narrative's XHTML, which the spec says to rewrite as well.
_NARRATIVE_LINK = re.compile(r'((?:href|src)\s*=\s*")([^"]*)(")')
_JSON_PATCH_TYPES = frozenset({"application/json-patch+json", "application/json"})


class _Kind:
    """What an entry does, which decides when a transaction processes it."""

    DELETE = "delete"
    CREATE = "create"  # POST [type]
    UPDATE = "update"  # PUT [type]/[id] or PUT [type]?criteria
    PATCH = "patch"
    READ = "read"  # GET, HEAD, POST _search
    OTHER = "other"  # POST/PUT to any other path: dispatched after the creates (dispatch refuses it)


# Transaction processing order (R4 http.html#trules); reads come last so they see the writes.
_ORDER = (_Kind.DELETE, _Kind.CREATE, _Kind.OTHER, _Kind.UPDATE, _Kind.PATCH, _Kind.READ)


@dataclass
class _Entry:
    """One Bundle entry as parsed, plus what a transaction decides about it."""

    index: int
    kind: str
    full_url: str | None
    request: InteractionRequest
    # The type named by request.url, when it names one.
    resource_type: str | None
    # Transaction only: the (type, id) this entry writes (or matched), once known.
    target: tuple[str, str] | None = None
    # Transaction only: created through `store.create_resources_bulk`.
    bulk: bool = False
    # Transaction only: an ifNoneExist that matched this resource (nothing is written).
    matched: store.StoredResource | None = None
    # The Bundle.entry answered for this entry.
    answer: dict | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def segments(self) -> list[str]:
        return self.request.segments

    @property
    def body(self) -> Any:
        return self.request.body


class _EntryError(FhirError):
    """A FhirError already prefixed with the entry it came from (so it is not prefixed twice)."""


def process_bundle(
    bundle: dict,
    *,
    base_url: str,
    principal: Principal | None,
    prefer_return: str = "representation",
) -> dict:
    """Carry out a `batch` or `transaction` Bundle and return the `batch-response` /
    `transaction-response` Bundle, one entry per request entry in request order.

    Raises FhirError (answered as an OperationOutcome) when the Bundle itself is malformed
    (not a Bundle, another type, an entry without request.method/url, duplicate fullUrls, more
    than BTT_FHIR_MAX_BUNDLE_ENTRIES entries), and for any failing entry of a transaction, after
    rolling back everything it did. Each entry is authorised with `interactions.authorize` for
    `principal` (None skips authorisation: internal callers). `prefer_return` is the request's
    Prefer return= value, applied to every entry: `minimal` leaves out the resources.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError.single(
            400,
            "invalid",
            "POST to the server base needs a Bundle of type batch or transaction",
            expression=("resourceType",),
        )
    bundle_type = bundle.get("type")
    if bundle_type not in _BATCH_TYPES:
        raise FhirError.single(
            400,
            "invalid",
            f"Bundle.type must be 'batch' or 'transaction' to be processed, not {bundle_type!r}",
            expression=("Bundle.type",),
        )
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise FhirError.single(
            400, "structure", "Bundle.entry must be an array", expression=("Bundle.entry",)
        )
    limit = settings.BTT_FHIR_MAX_BUNDLE_ENTRIES
    if len(raw_entries) > limit:
        raise FhirError.single(
            413,
            "too-costly",
            f"the Bundle has {len(raw_entries)} entries; this server takes at most {limit} per Bundle",
            expression=("Bundle.entry",),
        )
    entries = [
        _parse_entry(index, raw, base_url=base_url, principal=principal, prefer_return=prefer_return)
        for index, raw in enumerate(raw_entries)
    ]
    _check_unique_full_urls(entries)
    if bundle_type == "batch":
        by_full_url = {entry.full_url: entry.index for entry in entries if entry.full_url}
        answers = [
            _run_batch_entry(entry, by_full_url, base_url=base_url, principal=principal) for entry in entries
        ]
    else:
        answers = _run_transaction(
            entries, base_url=base_url, principal=principal, prefer_return=prefer_return
        )
    response: dict = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": f"{bundle_type}-response",
        "link": [{"relation": "self", "url": base_url}],
    }
    if answers:
        response["entry"] = answers
    return response


# --- parsing and per-entry checks ---------------------------------------------------------------


def _bad(diagnostics: str, expression: str, *, code: str = "invalid", status: int = 400) -> FhirError:
    return FhirError.single(status, code, diagnostics, expression=(expression,))


def _optional_string(request: dict, key: str, where: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{where}.request.{key} must be a string", f"{where}.request.{key}", code="structure")
    return value


def _relative_url(url: str, base_url: str, where: str) -> str:
    """request.url below the server base: absolute URLs on this server are accepted too."""
    url = url.strip()
    base = base_url.rstrip("/")
    if url == base or url.startswith(base + "/") or url.startswith(base + "?"):
        return url[len(base) :]
    if "://" in url.split("?", 1)[0]:
        raise _bad(
            f"{where}.request.url {url!r} is not on this server; use a URL relative to {base}",
            f"{where}.request.url",
        )
    # A path-absolute URL that repeats the base path ('/fhir/Patient').
    base_path = urlsplit(base).path.rstrip("/")
    if base_path and (url.startswith(base_path + "/") or url.startswith(base_path + "?")):
        return url[len(base_path) :]
    return url


def _parse_entry(
    index: int, raw: object, *, base_url: str, principal: Principal | None, prefer_return: str
) -> _Entry:
    """Check one entry's structure (request.method and request.url); errors reject the Bundle."""
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be a JSON object", where, code="structure")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise _bad(f"{where}.request is required (with method and url)", f"{where}.request", code="required")
    method = request.get("method")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise _bad(
            f"{where}.request.method must be one of {', '.join(sorted(_METHODS))}, not {method!r}",
            f"{where}.request.method",
            code="required" if method is None else "value",
        )
    url = request.get("url")
    if not isinstance(url, str) or not url.strip():
        raise _bad(f"{where}.request.url is required", f"{where}.request.url", code="required")
    full_url = raw.get("fullUrl")
    if full_url is not None and (not isinstance(full_url, str) or not full_url.strip()):
        raise _bad(f"{where}.fullUrl must be a non-empty string", f"{where}.fullUrl", code="structure")
    interaction = InteractionRequest.from_url(
        method,
        _relative_url(url, base_url, where),
        base_url=base_url,
        body=raw.get("resource"),
        if_match=_optional_string(request, "ifMatch", where),
        if_none_exist=_optional_string(request, "ifNoneExist", where),
        if_none_match=_optional_string(request, "ifNoneMatch", where),
        if_modified_since=_optional_string(request, "ifModifiedSince", where),
        prefer_return=prefer_return,
        in_bundle=True,
        principal=principal,
    )
    segments = interaction.segments
    head = segments[0] if segments else None
    resource_type = head if head and not head.startswith(("_", "$")) and head != "metadata" else None
    return _Entry(
        index=index,
        kind=_kind(interaction.method, segments, resource_type),
        full_url=full_url.strip() if full_url else None,
        request=interaction,
        resource_type=resource_type,
    )


def _kind(method: str, segments: list[str], resource_type: str | None) -> str:
    if method == "DELETE":
        return _Kind.DELETE
    if method in interactions.READ_METHODS or (method == "POST" and segments[-1:] == ["_search"]):
        return _Kind.READ
    if method == "POST":
        return _Kind.CREATE if resource_type and len(segments) == 1 else _Kind.OTHER
    if method == "PUT":
        return _Kind.UPDATE if resource_type and len(segments) <= 2 else _Kind.OTHER
    return _Kind.PATCH


def _check_unique_full_urls(entries: list[_Entry]) -> None:
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.full_url is None:
            continue
        if entry.full_url in seen:
            raise _bad(
                f"{entry.where}.fullUrl {entry.full_url!r} is also the fullUrl of Bundle.entry[{seen[entry.full_url]}]; "
                "fullUrls must be unique within a Bundle",
                f"{entry.where}.fullUrl",
            )
        seen[entry.full_url] = entry.index


def _check_entry(entry: _Entry) -> None:
    """The checks a Bundle adds to the interaction itself; raises FhirError (not prefixed).

    Writes need a resource of the type in request.url (no nested batch/transaction), a PUT needs
    an id or criteria, and a PATCH body (a JSON Patch, sent as a Binary) is decoded here.
    """
    if entry.kind in (_Kind.CREATE, _Kind.UPDATE):
        check_resource_type(entry.resource_type or "")
        resource = entry.body
        if not isinstance(resource, dict):
            raise _bad(
                f"{entry.request.method} needs the resource in entry.resource",
                f"{entry.where}.resource",
                code="required",
            )
        actual = resource.get("resourceType")
        if actual != entry.resource_type:
            raise _bad(
                f"resourceType {actual!r} of entry.resource does not match the type {entry.resource_type!r} in request.url",
                f"{entry.where}.resource.resourceType",
            )
        if actual == "Bundle" and resource.get("type") in _BATCH_TYPES:
            raise _bad(
                "a Bundle entry cannot hold a nested batch or transaction Bundle",
                f"{entry.where}.resource",
                code="not-supported",
            )
        if entry.kind == _Kind.UPDATE and len(entry.segments) == 1 and not entry.request.params:
            raise _bad(
                f"PUT needs the resource id in request.url ('{entry.resource_type}/[id]') "
                "or search criteria for a conditional update",
                f"{entry.where}.request.url",
            )
    elif entry.kind == _Kind.PATCH:
        entry.request.body = _json_patch_body(entry)


def _json_patch_body(entry: _Entry) -> object:
    """The JSON Patch of a PATCH entry: a Binary whose data is the patch (R4), or the bare array."""
    body = entry.body
    if isinstance(body, list):
        return body  # Not a resource, but unambiguous: accepted as the patch itself.
    if isinstance(body, dict) and body.get("resourceType") == "Binary":
        content_type = str(body.get("contentType", "")).split(";", 1)[0].strip().lower()
        if content_type not in _JSON_PATCH_TYPES:
            raise _bad(
                f"a PATCH Binary must have contentType application/json-patch+json, not {content_type!r}",
                f"{entry.where}.resource.contentType",
                code="not-supported",
            )
        try:
            return orjson.loads(base64.b64decode(str(body.get("data", "")), validate=True))
        except (binascii.Error, ValueError):
            raise _bad(
                "the PATCH Binary's data is not base64-encoded JSON",
                f"{entry.where}.resource.data",
                code="structure",
            ) from None
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        raise _bad(
            "FHIRPath Patch is not supported; send a JSON Patch as a Binary (application/json-patch+json)",
            f"{entry.where}.resource",
            code="not-supported",
        )
    raise _bad(
        "PATCH needs a JSON Patch in entry.resource (a Binary)", f"{entry.where}.resource", code="required"
    )


# --- entry responses ------------------------------------------------------------------------------


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _location(stored: store.StoredResource) -> str:
    return f"{stored.resource_type}/{stored.logical_id}/_history/{stored.version_id}"


def _answer(response: InteractionResponse, *, base_url: str, method: str) -> dict:
    """The Bundle entry (resource and response) for what dispatch answered."""
    result: dict = {"status": _status_line(response.status)}
    stored = response.stored
    if stored is not None:
        if "Location" in response.headers:
            # Relative, as HAPI answers in Bundles; the HTTP header is absolute.
            result["location"] = _location(stored)
        result["etag"] = stored.etag
        result["lastModified"] = store.format_instant(stored.last_updated)
    elif "ETag" in response.headers:
        result["etag"] = response.headers["ETag"]
    answer: dict = {}
    if method != "HEAD":
        if response.text is not None:
            if stored is not None:
                answer["fullUrl"] = f"{base_url}/{stored.resource_type}/{stored.logical_id}"
            answer["resource"] = orjson.loads(response.text)
        elif response.body is not None:
            if response.body.get("resourceType") == "OperationOutcome":
                result["outcome"] = response.body
            else:
                answer["resource"] = response.body
    answer["response"] = result
    return answer


def _stored_answer(
    stored: store.StoredResource, *, status: int, base_url: str, prefer_return: str, verb: str
) -> dict:
    """The Bundle entry for a resource created by the bulk path or matched by ifNoneExist."""
    result = {
        "status": _status_line(status),
        "location": _location(stored),
        "etag": stored.etag,
        "lastModified": store.format_instant(stored.last_updated),
    }
    if prefer_return == "representation":
        return {
            "fullUrl": f"{base_url}/{stored.resource_type}/{stored.logical_id}",
            "resource": orjson.loads(stored.text),
            "response": result,
        }
    if prefer_return == "OperationOutcome":
        result["outcome"] = operation_outcome(
            [information(f"{stored.resource_type}/{stored.logical_id} {verb} (version {stored.version_id})")]
        )
    return {"response": result}


def _error_answer(error: FhirError) -> dict:
    return {"response": {"status": _status_line(error.status), "outcome": operation_outcome(error.issues)}}


# --- references ---------------------------------------------------------------------------------

# (reference, FHIRPath of the element holding it) -> what to store instead.
_Resolver = Callable[[str, str], str]


def _rewrite_references(node: Any, path: list[str], resolve: _Resolver, links: dict[str, str]) -> Any:
    """`node` with every Reference.reference passed through `resolve`, and narrative links to
    a key of `links` replaced; containers are copied only where something changed.

    `path` is the FHIRPath down to `node` as a list of parts, kept for error messages.
    """
    if isinstance(node, dict):
        changed: dict | None = None
        for key, value in node.items():
            new = value
            if isinstance(value, str):
                if key == "reference":
                    new = resolve(value, "".join(path) + ".reference")
                elif key == "div" and links and ("href" in value or "src" in value):
                    rewritten = _NARRATIVE_LINK.sub(lambda m: m[1] + links.get(m[2], m[2]) + m[3], value)
                    if rewritten != value:  # keep the same object when nothing changed
                        new = rewritten
            elif isinstance(value, dict | list):
                path.append("." + key)
                new = _rewrite_references(value, path, resolve, links)
                path.pop()
            if new is not value:
                if changed is None:
                    changed = dict(node)
                changed[key] = new
        return node if changed is None else changed
    if isinstance(node, list):
        changed_list: list | None = None
        for index, item in enumerate(node):
            if isinstance(item, dict | list):
                path.append(f"[{index}]")
                new = _rewrite_references(item, path, resolve, links)
                path.pop()
                if new is not item:
                    if changed_list is None:
                        changed_list = list(node)
                    changed_list[index] = new
        return node if changed_list is None else changed_list
    return node


def _conditional_reference(reference: str) -> tuple[str, list[tuple[str, str]]] | None:
    """(type, search parameters) when `reference` is a conditional one ('Patient?identifier=x')."""
    match = _CONDITIONAL_REFERENCE.match(reference)
    if match is None or not is_known_resource_type(match[1]):
        return None
    return match[1], store.parse_search_criteria(match[2])


def _identifier_token(params: list[tuple[str, str]]) -> tuple[str | None, str] | None:
    """(system, value) when the criteria are exactly one `identifier` token; None otherwise.

    system None: any system; '' : no system. value '': any value (from 'system|').
    """
    if len(params) != 1 or params[0][0] != "identifier":
        return None
    value = params[0][1]
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, code


def _has_identifier(resource: dict, system: str | None, value: str) -> bool:
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if not isinstance(identifier, dict):
            continue
        if system is not None and (identifier.get("system") or "") != system:
            continue
        if value and identifier.get("value") != value:
            continue
        return True
    return False


class _ConditionalReferences:
    """Resolves conditional references to `Type/id`, each distinct one searched once per Bundle.

    `in_bundle` lists (type, id, resource) written by the same transaction: with single-identifier
    criteria they count as matches too, since a search cannot see them yet.
    """

    def __init__(self, principal: Principal | None, in_bundle: list[tuple[str, str, dict]] = ()) -> None:
        self.principal = principal
        self.in_bundle = in_bundle
        self.resolved: dict[str, str] = {}

    def resolve(self, reference: str, element: str) -> str | None:
        """`Type/id` for a conditional reference; None when `reference` is not one."""
        if "?" not in reference:
            return None
        if reference in self.resolved:
            return self.resolved[reference]
        parsed = _conditional_reference(reference)
        if parsed is None:
            return None
        resource_type, params = parsed
        if self.principal is not None:
            # Resolving reveals whether such a resource exists: that is a read of the type.
            interactions.authorize(self.principal, "GET", [resource_type])
        try:
            ids = {record.logical_id for record in store.first_two_matches(resource_type, params)}
        except FhirError as error:
            # A search error (unknown parameter, bad value) is about this element's criteria.
            raise FhirError(
                error.status,
                [
                    Issue(
                        code=issue.code,
                        diagnostics=f"{element}: conditional reference {reference!r}: {issue.diagnostics}",
                        expression=(element,),
                    )
                    for issue in error.issues
                ],
            ) from None
        token = _identifier_token(params)
        if token is not None:
            ids.update(
                logical_id
                for type_, logical_id, resource in self.in_bundle
                if type_ == resource_type and _has_identifier(resource, *token)
            )
        if not ids:
            raise _bad(
                f"{element}: no {resource_type} matches the conditional reference {reference!r}", element
            )
        if len(ids) > 1:
            raise _bad(
                f"{element}: more than one {resource_type} matches the conditional reference {reference!r}",
                element,
                code="multiple-matches",
                status=412,
            )
        target = f"{resource_type}/{ids.pop()}"
        self.resolved[reference] = target
        return target


# --- batch -----------------------------------------------------------------------------------------


def _run_batch_entry(
    entry: _Entry, by_full_url: dict[str, int], *, base_url: str, principal: Principal | None
) -> dict:
    """One batch entry in its own savepoint; its failure becomes its answer, never the Bundle's."""
    try:
        with transaction.atomic():
            if principal is not None:
                interactions.authorize(principal, entry.request.method, entry.segments)
            _check_entry(entry)
            request = entry.request
            if entry.kind in (_Kind.CREATE, _Kind.UPDATE, _Kind.PATCH) and request.body is not None:
                request = replace(request, body=_batch_references(entry, by_full_url, principal))
            return _answer(interactions.dispatch(request), base_url=base_url, method=request.method)
    except FhirError as error:
        return _error_answer(error)
    except IntegrityError:
        return _error_answer(_conflict())
    except Exception:
        # One broken entry must not hide that the others were applied: answer it as a 500.
        logger.exception(
            "batch %s failed: %s %s", entry.where, entry.request.method, "/".join(entry.segments)
        )
        return _error_answer(
            FhirError.single(500, "exception", "internal server error; this entry was not applied")
        )


def _batch_references(entry: _Entry, by_full_url: dict[str, int], principal: Principal | None) -> Any:
    """The entry's body with conditional references resolved; links to other entries refused."""
    conditional = _ConditionalReferences(principal)

    def resolve(reference: str, element: str) -> str:
        if reference.startswith(_PLACEHOLDER_PREFIXES):
            if reference in by_full_url:
                raise _bad(
                    f"{element}: {reference} is the fullUrl of Bundle.entry[{by_full_url[reference]}], but the "
                    "entries of a batch are independent; send a transaction to link entries",
                    element,
                )
            raise _bad(f"{element}: {reference} cannot be resolved on this server", element, code="not-found")
        return conditional.resolve(reference, element) or reference

    root = entry.body.get("resourceType", "") if isinstance(entry.body, dict) else ""
    return _rewrite_references(entry.body, [root], resolve, {})


# --- transaction -------------------------------------------------------------------------------------


def _entry_expression(expression: str, entry: _Entry) -> str:
    """An issue's expression, relative to the entry's resource, made relative to the Bundle."""
    if expression.startswith("Bundle.entry["):
        return expression
    body = entry.body
    types = {entry.resource_type, body.get("resourceType") if isinstance(body, dict) else None} - {None, ""}
    for resource_type in types:
        if expression == resource_type or expression.startswith((resource_type + ".", resource_type + "[")):
            return f"{entry.where}.resource{expression[len(resource_type) :]}"
    return f"{entry.where}.resource.{expression}"


@contextmanager
def _blame(entry: _Entry) -> Iterator[None]:
    """Re-raise a FhirError from inside with the entry named in diagnostics and expressions."""
    try:
        yield
    except _EntryError:
        raise
    except FhirError as error:
        issues = [
            Issue(
                code=issue.code,
                severity=issue.severity,
                diagnostics=issue.diagnostics
                if issue.diagnostics.startswith(entry.where)
                else f"{entry.where}: {issue.diagnostics}",
                expression=tuple(_entry_expression(e, entry) for e in issue.expression) or (entry.where,),
            )
            for issue in error.issues
        ]
        raise _EntryError(error.status, issues, dict(error.headers)) from None


def _conflict() -> FhirError:
    return FhirError.single(
        409,
        "conflict",
        "another request wrote one of these resources at the same time; nothing was applied, retry",
    )


def _run_transaction(
    entries: list[_Entry], *, base_url: str, principal: Principal | None, prefer_return: str
) -> list[dict]:
    for entry in entries:
        with _blame(entry):
            if principal is not None:
                interactions.authorize(principal, entry.request.method, entry.segments)
            _check_entry(entry)
    try:
        with transaction.atomic():
            _Transaction(entries, base_url=base_url, principal=principal, prefer_return=prefer_return).run()
    except IntegrityError:
        # Two requests creating the same id at once: the unique constraint decided; say so.
        raise _conflict() from None
    return [entry.answer or {} for entry in entries]


class _Transaction:
    """The steps of one transaction, run inside its `transaction.atomic()` block."""

    def __init__(
        self, entries: list[_Entry], *, base_url: str, principal: Principal | None, prefer_return: str
    ) -> None:
        self.entries = entries
        self.base_url = base_url
        self.principal = principal
        self.prefer_return = prefer_return
        self.by_kind: dict[str, list[_Entry]] = defaultdict(list)
        for entry in entries:
            self.by_kind[entry.kind].append(entry)

    def run(self) -> None:
        # Plain identities are known from the URLs: refuse overlaps before changing anything.
        for entry in self.entries:
            if entry.kind in (_Kind.DELETE, _Kind.UPDATE, _Kind.PATCH) and len(entry.segments) == 2:
                entry.target = (entry.segments[0], entry.segments[1])
        self._check_overlaps()
        for entry in self.by_kind[_Kind.DELETE]:
            with _blame(entry):
                entry.answer = self._dispatch(entry.request)
        self._resolve_creates()
        self._resolve_updates()
        self._check_overlaps()
        self._rewrite_all()
        self._create_bulk()
        # DELETEs and creates are done; the rest in order, skipping entries already answered.
        for kind in _ORDER[2:]:
            for entry in self.by_kind[kind]:
                if entry.answer is None:
                    with _blame(entry):
                        entry.answer = self._dispatch(entry.request)

    def _dispatch(self, request: InteractionRequest) -> dict:
        return _answer(interactions.dispatch(request), base_url=self.base_url, method=request.method)

    def _resolve_creates(self) -> None:
        """Give every create its id: a new one, or the match of its ifNoneExist."""
        for entry in self.by_kind[_Kind.CREATE]:
            resource_type = entry.resource_type or ""
            if entry.request.if_none_exist is not None:
                with _blame(entry):
                    # Validated even when it matches, as `store.create_resource` does.
                    validate_resource(entry.body, expected_type=resource_type)
                    match = store.match_conditional(resource_type, entry.request.if_none_exist, "ifNoneExist")
                if match is not None:
                    entry.matched = store.StoredResource.of(match)
                    entry.target = (resource_type, match.logical_id)
                    entry.answer = _stored_answer(
                        entry.matched,
                        status=200,
                        base_url=self.base_url,
                        prefer_return=self.prefer_return,
                        verb="matched an existing resource",
                    )
                    continue
            entry.target = (resource_type, store.new_logical_id())
            entry.bulk = True

    def _resolve_updates(self) -> None:
        """Find each update's target; updates that create a resource join the bulk insert."""
        unknown: dict[str, list[_Entry]] = defaultdict(list)
        for entry in self.by_kind[_Kind.UPDATE]:
            resource_type = entry.resource_type or ""
            body: dict = entry.body
            with _blame(entry):
                if len(entry.segments) == 2:
                    logical_id = entry.segments[1]
                    store.check_update_id(resource_type, logical_id, body)
                    entry.target = (resource_type, logical_id)
                    if entry.request.if_match is None:
                        unknown[resource_type].append(entry)
                    continue
                criteria = urlencode(entry.request.params)
                match = store.match_conditional(resource_type, criteria, "conditional update")
                if match is not None:
                    if body.get("id") not in (None, match.logical_id):
                        raise FhirError.single(
                            400,
                            "invalid",
                            f"the id in the body ({body['id']}) is not the id of the matching resource "
                            f"({match.logical_id})",
                            expression=(f"{resource_type}.id",),
                        )
                    entry.target = (resource_type, match.logical_id)
                else:
                    entry.target = (resource_type, body.get("id") or store.new_logical_id())
                    unknown[resource_type].append(entry)
                # From here on it is a plain update of the resolved id (what conditional_update does).
                entry.request = replace(
                    entry.request,
                    segments=[resource_type, entry.target[1]],
                    params=[],
                    body={**body, "id": entry.target[1]},
                )
        for resource_type, candidates in unknown.items():
            existing = store.existing_ids(
                resource_type, [entry.target[1] for entry in candidates if entry.target]
            )
            for entry in candidates:
                entry.bulk = entry.target is not None and entry.target[1] not in existing

    def _check_overlaps(self) -> None:
        """A transaction may touch each resource once (R4 http.html#trules)."""
        seen: dict[tuple[str, str], _Entry] = {}
        for entry in self.entries:
            if entry.target is None:
                continue
            if entry.target in seen:
                with _blame(entry):
                    raise _bad(
                        f"{'/'.join(entry.target)} is also the target of {seen[entry.target].where}; "
                        "a transaction may act on each resource only once",
                        f"{entry.where}.request.url",
                    )
            seen[entry.target] = entry

    def _links(self) -> dict[str, str]:
        """fullUrl (and, for creates with a RESTful fullUrl, its `Type/id` tail) -> `Type/id`."""
        links: dict[str, str] = {}
        kept: set[str] = set()
        for entry in self.entries:
            if entry.target is None or entry.full_url is None or entry.kind == _Kind.DELETE:
                continue
            relative = "/".join(entry.target)
            links[entry.full_url] = relative
            if entry.kind != _Kind.CREATE:
                kept.add(relative)
        for entry in self.by_kind[_Kind.CREATE]:
            tail = _restful_tail(entry.full_url)
            if tail is not None and entry.target is not None and tail not in kept and tail not in links:
                # `Patient/1` in a Bundle whose entry has fullUrl http://x/Patient/1 means that entry.
                links[tail] = "/".join(entry.target)
        return links

    def _rewrite_all(self) -> None:
        links = self._links()
        written = [
            (entry.target[0], entry.target[1], entry.body)
            for entry in self.entries
            if entry.kind in (_Kind.CREATE, _Kind.UPDATE)
            and entry.target is not None
            and isinstance(entry.body, dict)
        ]
        conditional = _ConditionalReferences(self.principal, written)

        def resolve(reference: str, element: str) -> str:
            target = links.get(reference)
            if target is not None:
                return target
            if reference.startswith(_PLACEHOLDER_PREFIXES):
                raise _bad(
                    f"{element}: {reference} is not the fullUrl of any entry in this transaction",
                    element,
                    code="not-found",
                )
            return conditional.resolve(reference, element) or reference

        for entry in self.entries:
            if entry.kind not in (_Kind.CREATE, _Kind.UPDATE, _Kind.PATCH) or entry.matched is not None:
                continue
            if entry.body is None:
                continue
            root = entry.body.get("resourceType", "") if isinstance(entry.body, dict) else ""
            with _blame(entry):
                entry.request.body = _rewrite_references(entry.body, [root], resolve, links)

    def _create_bulk(self) -> None:
        """Validate, check references once, and insert every new resource in one go."""
        bulk = [entry for kind in (_Kind.CREATE, _Kind.UPDATE) for entry in self.by_kind[kind] if entry.bulk]
        if not bulk:
            return
        resources = []
        for entry in bulk:
            assert entry.target is not None
            # A create ignores the client's id (R4 http.html#create); an update keeps its own.
            resource = {**entry.body, "id": entry.target[1]}
            with _blame(entry):
                validate_resource(resource, expected_type=entry.target[0])
            resources.append(resource)
        present = {
            entry.target
            for entry in self.entries
            if entry.target is not None and entry.kind in (_Kind.CREATE, _Kind.UPDATE, _Kind.PATCH)
        }
        try:
            store.check_references(resources, also_present=present)
        except FhirError:
            # Find the entry to blame (rare path: one query per resource).
            for entry, resource in zip(bulk, resources, strict=True):
                with _blame(entry):
                    store.check_references([resource], also_present=present)
            raise
        stored_all = store.create_resources_bulk(resources)
        for entry, stored in zip(bulk, stored_all, strict=True):
            entry.answer = _stored_answer(
                stored, status=201, base_url=self.base_url, prefer_return=self.prefer_return, verb="created"
            )


def _restful_tail(full_url: str | None) -> str | None:
    """'Patient/123' for an absolute RESTful fullUrl ('http://x/fhir/Patient/123'), else None."""
    if not full_url or "://" not in full_url:
        return None
    parts = urlsplit(full_url).path.rstrip("/").split("/")
    if len(parts) < 2:
        return None
    tail = f"{parts[-2]}/{parts[-1]}"
    return tail if store.parse_relative_reference(tail) is not None else None
