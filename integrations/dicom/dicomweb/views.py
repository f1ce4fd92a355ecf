"""DICOMweb HTTP endpoints under /dicomweb: authentication, scopes, parameters, negotiation.

Every request needs `Authorization: Bearer <token>` (401 without). Reading (QIDO-RS, WADO-RS)
needs read access to ImagingStudy, storing (STOW-RS) write access (403 otherwise). The work is
done by the service modules (`qido`, `wado`, `pixels`, `stow`); errors are `DicomWebError`s
answered as JSON with a `Warning` header (see `errors.py`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from btt_health.api_auth.services import AuthenticationFailed, authenticate_bearer
from integrations.dicom.dicomweb import pixels, qido, stow, wado
from integrations.dicom.dicomweb.attributes import INSTANCE, SERIES, STUDY
from integrations.dicom.dicomweb.errors import (
    DicomWebError,
    bad_request,
    error_response,
    not_acceptable,
    warning_header,
)
from integrations.dicom.dicomweb.multipart import multipart_stream, new_boundary
from integrations.dicom.dicomweb.negotiation import MediaRange, parse_accept

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
RESOURCE_TYPE = "ImagingStudy"  # the scope DICOMweb access is granted by
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_JSON_TYPES = frozenset({DICOM_JSON, "application/json", "*/*", "application/*"})
_RETRIEVE_PARAMS = frozenset({"accept", "charset"})
_RENDER_PARAMS = frozenset({"accept", "charset", "window", "viewport", "quality", "annotation", "iccprofile"})


def base_url(request: HttpRequest) -> str:
    """The DICOMweb base URL as the client addressed it (or BTT_DICOMWEB_BASE_URL when set)."""
    configured = settings.BTT_DICOMWEB_BASE_URL
    if configured:
        return configured.rstrip("/")
    return request.build_absolute_uri("/dicomweb")


def _check_uid(kind: str, value: str) -> None:
    if len(value) > 64 or not _UID.match(value):
        raise bad_request(f"{kind} {value!r} is not a DICOM UID (digits and dots, at most 64 characters)")


def endpoint(methods: dict[str, str]) -> Callable:
    """Wrap a view: bearer auth, allowed methods (method -> 'read' / 'write' access), UID checks,
    errors as DICOMweb error responses."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, **kwargs: str) -> HttpResponse:
            try:
                try:
                    principal = authenticate_bearer(request)
                except AuthenticationFailed as exc:
                    raise DicomWebError(
                        401, str(exc), {"WWW-Authenticate": 'Bearer realm="dicomweb"'}
                    ) from None
                access = methods.get(request.method or "")
                if access is None:
                    raise DicomWebError(
                        405,
                        f"{request.method} is not allowed on {request.path}; use {', '.join(methods)}",
                        {"Allow": ", ".join(methods)},
                    )
                if not principal.may(RESOURCE_TYPE, access):
                    raise DicomWebError(
                        403,
                        f"API client {principal.name!r} (role {principal.role}) may not {access} imaging studies",
                    )
                for name, kind in (
                    ("study", "study UID"),
                    ("series", "series UID"),
                    ("instance", "SOP instance UID"),
                ):
                    if name in kwargs:
                        _check_uid(kind, kwargs[name])
                return view(request, **kwargs)
            except DicomWebError as error:
                return error_response(error)
            except Exception:
                logger.exception("DICOMweb request %s %s failed", request.method, request.path)
                return error_response(DicomWebError(500, "internal server error; see the server log"))

        return wrapper

    return decorator


def _params(request: HttpRequest) -> list[tuple[str, str]]:
    return [(key, value) for key, values in request.GET.lists() for value in values]


def _accept(request: HttpRequest) -> list[MediaRange]:
    """The Accept media ranges; the `accept` query parameter (PS3.18 8.3.3.1) wins over the header."""
    values = request.GET.getlist("accept")
    if values:
        return parse_accept(",".join(values))
    return parse_accept(request.META.get("HTTP_ACCEPT"))


def _only_params(request: HttpRequest, allowed: frozenset[str]) -> None:
    for name in request.GET:
        if name.lower() not in allowed:
            raise bad_request(f"unknown query parameter {name!r}; allowed here: {', '.join(sorted(allowed))}")


def _with_warnings(response: HttpResponse, warnings: list[str]) -> HttpResponse:
    if warnings:
        response["Warning"] = ", ".join(warning_header(text) for text in warnings)
    return response


def _json_response(body, status: int = 200, warnings: list[str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), status=status, content_type=DICOM_JSON)
    return _with_warnings(response, warnings or [])


def _negotiate_json(request: HttpRequest) -> None:
    accept = _accept(request)
    if any(media.media_type in _JSON_TYPES for media in accept):
        return
    if any("xml" in media.media_type or "xml" in (media.param("type") or "") for media in accept):
        raise not_acceptable("DICOM XML is not supported here; ask for application/dicom+json")
    raise not_acceptable(f"this resource is available as {DICOM_JSON} only")


# --- STOW-RS and QIDO-RS ------------------------------------------------------------------------


def _search(
    request: HttpRequest, level: str, study: str | None = None, series: str | None = None
) -> HttpResponse:
    _negotiate_json(request)
    result = qido.search(
        qido.SearchRequest(
            level=level,
            params=_params(request),
            base_url=base_url(request),
            study_uid=study,
            series_uid=series,
        )
    )
    # No match: 200 with an empty array (DICOM CP-2473; a 204 may not carry a body).
    return _json_response(result.items, warnings=result.warnings)


def _body_stream(request: HttpRequest):
    """The request body as a stream. Django reads Content-Length bytes only; a chunked body
    (no Content-Length) is read from the server's input when the server marks it terminated
    (gunicorn does), as PEP 3333 servers that de-chunk announce with `wsgi.input_terminated`."""
    if not request.META.get("CONTENT_LENGTH") and request.META.get("wsgi.input_terminated"):
        return request.META["wsgi.input"]
    return request


def _store(request: HttpRequest, study: str | None = None) -> HttpResponse:
    _negotiate_json(request)
    result = stow.store(_body_stream(request), request.META.get("CONTENT_TYPE", ""), base_url(request), study)
    return _json_response(result.body, status=result.status, warnings=result.warnings)


@endpoint({"GET": "read", "POST": "write"})
def studies(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _store(request)
    return _search(request, STUDY)


@endpoint({"GET": "read"})
def all_series(request: HttpRequest) -> HttpResponse:
    return _search(request, SERIES)


@endpoint({"GET": "read"})
def all_instances(request: HttpRequest) -> HttpResponse:
    return _search(request, INSTANCE)


@endpoint({"GET": "read"})
def study_series(request: HttpRequest, study: str) -> HttpResponse:
    return _search(request, SERIES, study)


@endpoint({"GET": "read"})
def study_instances(request: HttpRequest, study: str) -> HttpResponse:
    return _search(request, INSTANCE, study)


@endpoint({"GET": "read"})
def series_instances(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _search(request, INSTANCE, study, series)


# --- WADO-RS ------------------------------------------------------------------------------------


def _retrieve(request: HttpRequest, study: str, series: str | None = None, instance: str | None = None):
    _only_params(request, _RETRIEVE_PARAMS)
    allowed = wado.acceptable_transfer_syntaxes(_accept(request))
    instances = wado.instances_of(study, series, instance)
    wado.check_transfer_syntaxes(instances, allowed)
    wado.check_files(instances)
    boundary = new_boundary()
    response = StreamingHttpResponse(
        multipart_stream(wado.instance_parts(instances, base_url(request)), boundary),
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    return response


@endpoint({"GET": "read", "POST": "write"})
def study_resource(request: HttpRequest, study: str) -> HttpResponse:
    if request.method == "POST":
        return _store(request, study)
    return _retrieve(request, study)


@endpoint({"GET": "read"})
def series_resource(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _retrieve(request, study, series)


@endpoint({"GET": "read"})
def instance_resource(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    return _retrieve(request, study, series, instance)


def _metadata(request: HttpRequest, study: str, series: str | None = None, instance: str | None = None):
    _only_params(request, _RETRIEVE_PARAMS)
    _negotiate_json(request)
    instances = wado.instances_of(study, series, instance)
    base = base_url(request)
    if len(instances) == 1:  # one file: errors can still become a status
        return _json_response([wado.instance_metadata(instances[0], base)])
    return StreamingHttpResponse(wado.metadata_chunks(instances, base), content_type=DICOM_JSON)


@endpoint({"GET": "read"})
def study_metadata(request: HttpRequest, study: str) -> HttpResponse:
    return _metadata(request, study)


@endpoint({"GET": "read"})
def series_metadata(request: HttpRequest, study: str, series: str) -> HttpResponse:
    return _metadata(request, study, series)


@endpoint({"GET": "read"})
def instance_metadata(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    return _metadata(request, study, series, instance)


def _negotiate_octet_stream(request: HttpRequest) -> None:
    """Frames and bulk data go out uncompressed: multipart/related; type=application/octet-stream."""
    for media in _accept(request):
        if media.media_type in ("*/*", "multipart/*"):
            return
        if media.media_type == "multipart/related":
            part_type = (media.param("type") or OCTET_STREAM).lower()
            if part_type not in (OCTET_STREAM, "application/*", "*/*"):
                continue
        elif media.media_type != OCTET_STREAM:
            continue
        syntax = (media.param("transfer-syntax") or "*").strip()
        if syntax in ("*", pixels.EXPLICIT_VR_LITTLE_ENDIAN):
            return
    raise not_acceptable(
        'frames and bulk data are available uncompressed only: multipart/related; type="application/octet-stream" '
        f"(transfer-syntax {pixels.EXPLICIT_VR_LITTLE_ENDIAN} or *)"
    )


def _octet_parts(chunks, location: str):
    headers = {
        "Content-Type": f"{OCTET_STREAM}; transfer-syntax={pixels.EXPLICIT_VR_LITTLE_ENDIAN}",
        "Content-Location": location,
    }
    for data in chunks:
        yield {**headers, "Content-Length": str(len(data))}, [data]


def _octet_response(parts) -> StreamingHttpResponse:
    boundary = new_boundary()
    return StreamingHttpResponse(
        multipart_stream(parts, boundary),
        content_type=f'multipart/related; type="{OCTET_STREAM}"; boundary={boundary}',
    )


@endpoint({"GET": "read"})
def frames_resource(
    request: HttpRequest, study: str, series: str, instance: str, frames: str
) -> HttpResponse:
    _only_params(request, _RETRIEVE_PARAMS)
    numbers = pixels.parse_frame_list(frames)
    _negotiate_octet_stream(request)
    target = wado.instances_of(study, series, instance)[0]
    data = pixels.frame_stream(target, numbers)
    location = request.build_absolute_uri(request.path)
    return _octet_response(_octet_parts(data, location))


@endpoint({"GET": "read"})
def bulkdata_resource(request: HttpRequest, study: str, series: str, instance: str, tag: str) -> HttpResponse:
    _only_params(request, _RETRIEVE_PARAMS)
    _negotiate_octet_stream(request)
    target = wado.instances_of(study, series, instance)[0]
    value = wado.bulk_data(target, tag)
    return _octet_response(_octet_parts([value.data], request.build_absolute_uri(request.path)))


def _rendered_type(request: HttpRequest) -> str:
    for media in _accept(request):
        if media.media_type in ("image/jpeg", "image/png"):
            return media.media_type
        if media.media_type in ("*/*", "image/*"):
            return "image/jpeg"
    raise not_acceptable("rendered images are available as image/jpeg or image/png")


def _render(request: HttpRequest, study: str, series: str, instance: str, frame: int) -> HttpResponse:
    _only_params(request, _RENDER_PARAMS)
    warnings = []
    window = pixels.parse_window(request.GET["window"]) if "window" in request.GET else None
    viewport = pixels.parse_viewport(request.GET["viewport"]) if "viewport" in request.GET else None
    quality = None
    if "quality" in request.GET:
        text = request.GET["quality"]
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise bad_request(f"quality must be an integer from 1 to 100, got {text!r}")
        quality = int(text)
    for ignored in ("annotation", "iccprofile"):
        if request.GET.get(ignored) not in (None, "", "no"):
            warnings.append(f"the {ignored} parameter is not supported and was ignored")
    media_type = _rendered_type(request)
    target = wado.instances_of(study, series, instance)[0]
    content = pixels.render(target, frame, media_type, window=window, viewport=viewport, quality=quality)
    return _with_warnings(HttpResponse(content, content_type=media_type), warnings)


@endpoint({"GET": "read"})
def instance_rendered(request: HttpRequest, study: str, series: str, instance: str) -> HttpResponse:
    # A multi-frame instance renders its first frame (JPEG and PNG hold one image).
    return _render(request, study, series, instance, 1)


@endpoint({"GET": "read"})
def frame_rendered(request: HttpRequest, study: str, series: str, instance: str, frames: str) -> HttpResponse:
    numbers = pixels.parse_frame_list(frames)
    if len(numbers) != 1:
        raise bad_request(
            f"frames {frames!r}: a rendered image is made of one frame; ask for one frame number"
        )
    return _render(request, study, series, instance, numbers[0])
