"""Routing of one FHIR RESTful interaction to the store, independent of Django's request object.

The HTTP views and the batch/transaction Bundle processor both build an `InteractionRequest`
and get an `InteractionResponse` back, so an entry inside a Bundle behaves exactly like the same
request sent on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qsl, urlencode, urlsplit

from btt_health.api_auth.services import Principal
from integrations.fhir import capability, history, search, store
from integrations.fhir.outcomes import FhirError, Issue, information, operation_outcome
from integrations.fhir.validation import check_resource_type

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass
class InteractionRequest:
    method: str
    # Path segments below the FHIR base: ["Patient", "123", "_history", "2"].
    segments: list[str]
    params: list[tuple[str, str]]
    base_url: str
    body: object = None
    if_match: str | None = None
    if_none_exist: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    prefer_return: str = "representation"
    prefer_handling: str = "lenient"
    # Used by Bundles: whether the body is a transaction/batch entry (no nested bundles then).
    in_bundle: bool = False
    # Who is calling; None only for /metadata.
    principal: Principal | None = None

    @classmethod
    def from_url(cls, method: str, url: str, *, base_url: str, **kwargs) -> InteractionRequest:
        """Build from a relative URL as found in Bundle.entry.request.url ('Patient?name=x')."""
        parts = urlsplit(url)
        path = parts.path
        if path.startswith(base_url):
            path = path[len(base_url) :]
        segments = [s for s in path.split("/") if s]
        return cls(
            method=method.upper(),
            segments=segments,
            params=parse_qsl(parts.query, keep_blank_values=True),
            base_url=base_url,
            **kwargs,
        )


@dataclass
class InteractionResponse:
    status: int
    # A resource's stored JSON text (sent as is), or a dict to serialise, or None for no body.
    text: str | None = None
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # The version written or read, for Bundle entry.response.
    stored: store.StoredResource | None = None


def http_date(stored: store.StoredResource) -> str:
    return format_datetime(stored.last_updated, usegmt=True)


def _resource_headers(stored: store.StoredResource, base_url: str, *, location: bool) -> dict[str, str]:
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored)}
    if location:
        headers["Location"] = (
            f"{base_url}/{stored.resource_type}/{stored.logical_id}/_history/{stored.version_id}"
        )
    return headers


def parse_etag(value: str | None) -> int | None:
    """The version number in an ETag / If-Match value (`W/"3"` or `"3"`); 400 when malformed."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise FhirError.single(400, "value", f'If-Match value {value!r} is not an ETag like W/"3"')
    return int(text)


def authorize(principal: Principal, method: str, segments: list[str]) -> None:
    """Raise 403 unless the principal's scopes allow this interaction (read or write on the type)."""
    resource_type = segments[0] if segments and not segments[0].startswith(("_", "$")) else "*"
    if resource_type == "metadata":
        return
    is_search_post = method == "POST" and segments[-1:] == ["_search"]
    access = "read" if method in READ_METHODS or is_search_post else "write"
    if not principal.may(resource_type, access):
        raise FhirError.single(
            403, "forbidden", f"API client {principal.name!r} may not {access} {resource_type}"
        )


def _write_response(
    request: InteractionRequest, result: store.WriteResult, *, ok_status: int = 200
) -> InteractionResponse:
    stored = result.stored
    status = 201 if result.created else ok_status
    headers = _resource_headers(stored, request.base_url, location=True)
    response = InteractionResponse(status=status, headers=headers, stored=stored)
    if request.prefer_return == "minimal":
        return response
    if request.prefer_return == "OperationOutcome":
        verb = (
            "created"
            if result.created
            else ("matched an existing resource" if result.existing else "updated")
        )
        response.body = operation_outcome(
            [information(f"{stored.resource_type}/{stored.logical_id} {verb} (version {stored.version_id})")]
        )
        return response
    response.text = stored.text
    return response


def _not_modified(request: InteractionRequest, stored: store.StoredResource) -> bool:
    if request.if_none_match is not None:
        try:
            return parse_etag(request.if_none_match) == stored.version_id
        except FhirError:
            return False
    if request.if_modified_since is not None:
        try:
            since = parsedate_to_datetime(request.if_modified_since)
        except (TypeError, ValueError):
            return False
        return stored.last_updated.replace(microsecond=0) <= since
    return False


def _read_response(request: InteractionRequest, stored: store.StoredResource) -> InteractionResponse:
    headers = _resource_headers(stored, request.base_url, location=False)
    if _not_modified(request, stored):
        return InteractionResponse(status=304, headers=headers, stored=stored)
    return InteractionResponse(status=200, text=stored.text, headers=headers, stored=stored)


def _bundle(bundle: dict) -> InteractionResponse:
    return InteractionResponse(status=200, body=bundle)


def _require_body(request: InteractionRequest) -> dict:
    if not isinstance(request.body, dict):
        raise FhirError.single(400, "structure", "this interaction needs a JSON resource in the body")
    return request.body


def dispatch(request: InteractionRequest) -> InteractionResponse:
    """Carry out one interaction and describe the HTTP answer; raises FhirError on client errors."""
    from integrations.fhir import bundles  # bundles dispatches its entries through this module

    segs = request.segments
    method = request.method
    n = len(segs)
    strict = request.prefer_handling == "strict"

    if n == 0:
        if method == "POST":
            if request.in_bundle:
                raise FhirError.single(
                    400, "not-supported", "a Bundle entry cannot hold a nested batch or transaction"
                )
            return _bundle(
                bundles.process_bundle(
                    _require_body(request),
                    base_url=request.base_url,
                    principal=request.principal,
                    prefer_return=request.prefer_return,
                )
            )
        if method in READ_METHODS:
            if any(k == "_getpages" for k, _ in request.params):
                return _bundle(search.page_bundle(request.params, base_url=request.base_url))
            return _bundle(
                search.search_bundle(None, request.params, base_url=request.base_url, strict=strict)
            )
        raise _method_not_allowed(method, "the server base")

    head = segs[0]
    if head == "metadata" and n == 1 and method in READ_METHODS:
        return _bundle(capability.capability_statement(request.base_url))
    if head == "_history" and n == 1 and method in READ_METHODS:
        return _bundle(history.history_bundle(None, None, request.params, base_url=request.base_url))
    if head == "_search" and n == 1 and method == "POST":
        return _bundle(search.search_bundle(None, request.params, base_url=request.base_url, strict=strict))

    resource_type = head
    check_resource_type(resource_type)

    if n == 1:
        if method in READ_METHODS:
            return _bundle(
                search.search_bundle(resource_type, request.params, base_url=request.base_url, strict=strict)
            )
        if method == "POST":
            body = _require_body(request)
            result = store.create_resource(
                body, if_none_exist=request.if_none_exist, expected_type=resource_type
            )
            # A conditional create that matched answers 200 with the existing resource.
            return _write_response(request, result)
        if method == "PUT":
            criteria = _criteria(request, "conditional update")
            result = store.conditional_update(
                resource_type, criteria, _require_body(request), if_match=parse_etag(request.if_match)
            )
            return _write_response(request, result)
        if method == "DELETE":
            deleted = store.conditional_delete(resource_type, _criteria(request, "conditional delete"))
            return _deleted_response(f"{deleted} {resource_type} deleted")
        raise _method_not_allowed(method, f"/{resource_type}")

    if n == 2 and segs[1] == "_search" and method == "POST":
        return _bundle(
            search.search_bundle(resource_type, request.params, base_url=request.base_url, strict=strict)
        )
    if n == 2 and segs[1] == "_history" and method in READ_METHODS:
        return _bundle(history.history_bundle(resource_type, None, request.params, base_url=request.base_url))

    logical_id = segs[1]
    if n == 2:
        if method in READ_METHODS:
            return _read_response(request, store.read_resource(resource_type, logical_id))
        if method == "PUT":
            result = store.update_resource(
                resource_type, logical_id, _require_body(request), if_match=parse_etag(request.if_match)
            )
            return _write_response(request, result)
        if method == "PATCH":
            result = store.patch_resource(
                resource_type, logical_id, request.body, if_match=parse_etag(request.if_match)
            )
            return _write_response(request, result)
        if method == "DELETE":
            deleted = store.delete_resource(resource_type, logical_id)
            response = _deleted_response(
                f"{resource_type}/{logical_id} deleted"
                if deleted
                else f"{resource_type}/{logical_id} was already deleted"
            )
            if deleted is not None:
                response.headers["ETag"] = deleted.etag
            return response
        raise _method_not_allowed(method, f"/{resource_type}/{logical_id}")

    if n == 3 and segs[2] == "_history" and method in READ_METHODS:
        return _bundle(
            history.history_bundle(resource_type, logical_id, request.params, base_url=request.base_url)
        )
    if n == 4 and segs[2] == "_history" and method in READ_METHODS:
        return _read_response(request, store.vread_resource(resource_type, logical_id, segs[3]))
    if n == 3 and segs[2] == "$everything" and resource_type == "Patient" and method in READ_METHODS:
        store.read_resource("Patient", logical_id)
        return _bundle(search.everything_bundle(logical_id, request.params, base_url=request.base_url))
    raise FhirError.single(404, "not-supported", f"no FHIR interaction at /{'/'.join(segs)} for {method}")


def _criteria(request: InteractionRequest, what: str) -> str:
    if not request.params:
        raise FhirError.single(400, "invalid", f"a {what} needs search parameters in the URL")
    return urlencode(request.params)


def _deleted_response(message: str) -> InteractionResponse:
    return InteractionResponse(status=200, body=operation_outcome([information(message)]))


def _method_not_allowed(method: str, where: str) -> FhirError:
    return FhirError(405, [Issue(code="not-supported", diagnostics=f"{method} is not supported on {where}")])
