"""The inference-job API under /api/ai (JSON, bearer token): list, read, retry.

- `GET /api/ai/jobs?study=&state=&model=&version=&priority=&accession=&outside=&page=&page_size=`:
  the jobs, newest first, paged (`page_size` default 50, at most 500): `{"count", "page",
  "page_size", "pages", "next", "previous", "results"}`. `state` and `priority` take
  comma-separated lists; `model` is a name or `name:version`.
- `GET /api/ai/jobs/<id>`: one job, with its trust factors, findings and image-quality checks.
- `POST /api/ai/jobs/<id>/retry`: a failed job is queued again (202 with the job); 409 when the
  job is not failed or its model version cannot run now.

Access: the jobs are how DiagnosticReports get made, so reading needs read access to
DiagnosticReport (every role has it) and retrying needs write access to it (the `reader` role
gets 403). Errors are `{"error": <status text>, "message": ...}` with the HTTP status. The views
only authenticate, parse and answer; the work is in `ai_pipeline.jobs`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import urlencode

from django.core.paginator import EmptyPage, Paginator
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ai_pipeline import jobs
from btt_health.api_auth.services import AuthenticationFailed, Principal, authenticate_bearer

RESOURCE_TYPE = "DiagnosticReport"  # the scope job access is granted by
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
FILTERS = ("study", "state", "model", "version", "priority", "accession", "outside")
_REASONS = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found", 405: "method not allowed", 409: "conflict"}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _error(exc: ApiError) -> JsonResponse:
    response = JsonResponse(
        {"error": _REASONS.get(exc.status, "error"), "message": exc.message}, status=exc.status
    )
    for name, value in exc.headers.items():
        response[name] = value
    return response


def endpoint(methods: dict[str, str]) -> Callable:
    """Wrap a view: bearer auth, allowed methods (method -> 'read' / 'write'), errors as JSON."""

    def decorator(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, **kwargs) -> JsonResponse:
            try:
                try:
                    principal = authenticate_bearer(request)
                except AuthenticationFailed as exc:
                    raise ApiError(401, str(exc), {"WWW-Authenticate": 'Bearer realm="api"'}) from None
                access = methods.get(request.method or "")
                if access is None:
                    raise ApiError(
                        405,
                        f"{request.method} is not allowed on {request.path}",
                        {"Allow": ", ".join(methods)},
                    )
                if not principal.may(RESOURCE_TYPE, access):
                    raise ApiError(
                        403, f"{access} access to inference jobs needs {access} access to {RESOURCE_TYPE}"
                    )
                return view(request, principal, **kwargs)
            except ApiError as exc:
                return _error(exc)

        return wrapper

    return decorator


def _positive_int(request: HttpRequest, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(400, f"{name} must be a positive integer, got {raw!r}")
    value = int(raw)
    if maximum is not None and value > maximum:
        raise ApiError(400, f"{name} must be at most {maximum}, got {value}")
    return value


def _page_link(request: HttpRequest, page: int, page_size: int) -> str:
    params = [(k, v) for k, v in request.GET.items() if k not in ("page", "page_size")]
    params += [("page", str(page)), ("page_size", str(page_size))]
    return request.build_absolute_uri(f"{request.path}?{urlencode(params)}")


@endpoint({"GET": "read"})
def job_list(request: HttpRequest, principal: Principal) -> JsonResponse:
    unknown = sorted(set(request.GET) - {*FILTERS, "page", "page_size"})
    if unknown:
        raise ApiError(
            400, f"unknown parameter {', '.join(unknown)}; use {', '.join(FILTERS)}, page, page_size"
        )
    page_number = _positive_int(request, "page", 1)
    page_size = _positive_int(request, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    try:
        queryset = jobs.filter_jobs(**{name: request.GET.get(name) for name in FILTERS})
    except jobs.JobQueryError as exc:
        raise ApiError(400, str(exc)) from None
    paginator = Paginator(queryset, page_size)
    try:
        page = paginator.page(page_number)
    except EmptyPage:
        page = None
    results = [jobs.job_as_dict(job) for job in page] if page is not None else []
    return JsonResponse(
        {
            "count": paginator.count,
            "page": page_number,
            "page_size": page_size,
            "pages": paginator.num_pages,
            "next": _page_link(request, page_number + 1, page_size) if page and page.has_next() else None,
            "previous": _page_link(request, page_number - 1, page_size)
            if page and page.has_previous()
            else None,
            "results": results,
        }
    )


@endpoint({"GET": "read"})
def job_detail(request: HttpRequest, principal: Principal, job_id: int) -> JsonResponse:
    try:
        job = jobs.get_job(job_id)
    except jobs.JobNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return JsonResponse(jobs.job_as_dict(job, detail=True))


@endpoint({"POST": "write"})
def job_retry(request: HttpRequest, principal: Principal, job_id: int) -> JsonResponse:
    try:
        job = jobs.retry_job(job_id, requested_by=f"API client {principal.name}")
    except jobs.JobNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except jobs.JobNotRetryable as exc:
        raise ApiError(409, str(exc)) from None
    return JsonResponse(jobs.job_as_dict(job, detail=True), status=202)
