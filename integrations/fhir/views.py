"""The FHIR REST endpoint: HTTP in, `interactions.dispatch`, HTTP out.

Only the HTTP concerns live here: authentication and scopes, content negotiation (`Accept`,
`_format`, `Content-Type`), body size and JSON depth limits, and the `Prefer` header.
"""

from __future__ import annotations

import logging

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from btt_health.api_auth.services import AuthenticationFailed, authenticate_bearer
from integrations.fhir.interactions import READ_METHODS, InteractionRequest, authorize, dispatch
from integrations.fhir.outcomes import FhirError, Issue, operation_outcome

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"
_JSON_TYPES = frozenset(
    {FHIR_JSON, "application/json", "json", "application/json+fhir", "*/*", "application/*"}
)
_XML_TYPES = frozenset({"application/fhir+xml", "application/xml", "xml", "text/xml", "application/xml+fhir"})
_PATCH_TYPES = frozenset({"application/json-patch+json"})
# Parameters about the response format, not the interaction.
_FORMAT_PARAMS = frozenset({"_format", "_pretty"})


def _media_types(header: str) -> list[str]:
    return [part.split(";", 1)[0].strip().lower() for part in header.split(",") if part.strip()]


def _negotiate(request: HttpRequest) -> None:
    """Raise 406 unless the client accepts FHIR JSON (the only format this server writes)."""
    requested = request.GET.get("_format")
    if requested:
        if requested.lower() in _JSON_TYPES:
            return
        if requested.lower() in _XML_TYPES:
            raise FhirError.single(
                406, "not-supported", "XML is not supported by this server; ask for _format=json"
            )
        raise FhirError.single(406, "not-supported", f"_format={requested!r} is not supported; use json")
    accept = request.META.get("HTTP_ACCEPT")
    if not accept:
        return
    types = _media_types(accept)
    if any(t in _JSON_TYPES for t in types):
        return
    if any(t in _XML_TYPES for t in types):
        raise FhirError.single(
            406, "not-supported", "XML is not supported by this server; send Accept: application/fhir+json"
        )
    if "text/html" in types or "text/*" in types:
        return  # A browser: it gets JSON.
    raise FhirError.single(
        406, "not-supported", f"cannot answer in {accept!r}; this server answers application/fhir+json"
    )


def _json_depth_ok(value: object, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return True


def _read_body(request: HttpRequest) -> object:
    limit = settings.BTT_FHIR_MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FhirError.single(413, "too-costly", f"the body is {declared} bytes; the limit is {limit} bytes")
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise FhirError.single(413, "too-costly", f"the body is over the limit of {limit} bytes")
    if not raw.strip():
        return None
    content_type = (request.content_type or "").lower()
    if content_type in _XML_TYPES:
        raise FhirError.single(
            415, "not-supported", "XML bodies are not supported; send application/fhir+json"
        )
    if (
        content_type
        and content_type not in _JSON_TYPES
        and content_type not in _PATCH_TYPES
        and content_type != "text/plain"
    ):
        raise FhirError.single(
            415,
            "not-supported",
            f"Content-Type {content_type!r} is not supported; send application/fhir+json",
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirError.single(400, "structure", f"the body is not valid JSON: {exc}") from None
    if not _json_depth_ok(body, settings.BTT_FHIR_MAX_JSON_DEPTH):
        raise FhirError.single(
            400, "structure", f"the JSON is nested deeper than {settings.BTT_FHIR_MAX_JSON_DEPTH} levels"
        )
    return body


def _prefer(request: HttpRequest) -> tuple[str, str]:
    prefer_return, handling = "representation", "lenient"
    for part in request.META.get("HTTP_PREFER", "").split(","):
        key, _, value = part.strip().partition("=")
        value = value.strip().strip('"')
        if key.strip() == "return" and value in ("minimal", "representation", "OperationOutcome"):
            prefer_return = value
        elif key.strip() == "handling" and value in ("strict", "lenient"):
            handling = value
    return prefer_return, handling


_base_urls: dict[tuple[str, str], str] = {}


def base_url(request: HttpRequest) -> str:
    """The FHIR base URL as the client addressed it (or BTT_FHIR_BASE_URL when set)."""
    if settings.BTT_FHIR_BASE_URL:
        return settings.BTT_FHIR_BASE_URL
    # Building it validates the host against ALLOWED_HOSTS each time; a host seen once is valid.
    key = (request.scheme, request.META.get("HTTP_HOST", ""))
    url = _base_urls.get(key)
    if url is None:
        url = request.build_absolute_uri("/fhir")
        if len(_base_urls) < 100:
            _base_urls[key] = url
    return url


def outcome_response(error: FhirError) -> HttpResponse:
    response = HttpResponse(
        orjson.dumps(operation_outcome(error.issues)), status=error.status, content_type=CONTENT_TYPE
    )
    for name, value in error.headers.items():
        response[name] = value
    return response


def _render(body: dict, pretty: bool) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)


@csrf_exempt
def fhir_endpoint(request: HttpRequest, path: str = "") -> HttpResponse:
    """Every FHIR interaction under /fhir."""
    segments = [s for s in (path or "").split("/") if s]
    try:
        _negotiate(request)
        principal = None
        if segments != ["metadata"]:
            try:
                principal = authenticate_bearer(request)
            except AuthenticationFailed as exc:
                raise FhirError(
                    401,
                    [Issue(code="login", diagnostics=str(exc))],
                    headers={"WWW-Authenticate": 'Bearer realm="fhir"'},
                ) from None
            if not (segments == [] and request.method == "POST"):
                # Bundles are authorised entry by entry by the bundle processor.
                authorize(principal, request.method or "GET", segments)
        params = [(k, v) for k, values in request.GET.lists() for v in values]
        body = None
        if request.method == "POST" and segments[-1:] == ["_search"]:
            # POST _search carries its parameters form-encoded in the body.
            params += [(k, v) for k, values in request.POST.lists() for v in values]
        elif request.method not in READ_METHODS and request.method != "DELETE":
            body = _read_body(request)
        params = [(k, v) for k, v in params if k not in _FORMAT_PARAMS]
        prefer_return, handling = _prefer(request)
        interaction = InteractionRequest(
            method=request.method or "GET",
            segments=segments,
            params=params,
            base_url=base_url(request),
            body=body,
            if_match=request.META.get("HTTP_IF_MATCH"),
            if_none_exist=request.META.get("HTTP_IF_NONE_EXIST"),
            if_none_match=request.META.get("HTTP_IF_NONE_MATCH"),
            if_modified_since=request.META.get("HTTP_IF_MODIFIED_SINCE"),
            prefer_return=prefer_return,
            prefer_handling=handling,
            principal=principal,
        )
        result = dispatch(interaction)
    except FhirError as error:
        return outcome_response(error)
    except Exception:
        logger.exception("FHIR request %s %s failed", request.method, request.path)
        return outcome_response(
            FhirError.single(500, "exception", "internal server error; the request was not applied")
        )
    pretty = request.GET.get("_pretty") == "true"
    if result.text is not None:
        content = result.text.encode() if not pretty else _render(orjson.loads(result.text), True)
    elif result.body is not None:
        content = _render(result.body, pretty)
    else:
        content = b""
    response = HttpResponse(content, status=result.status, content_type=CONTENT_TYPE)
    for name, value in result.headers.items():
        response[name] = value
    if request.method == "HEAD":
        response.content = b""
    return response
