"""The clinician viewer's HTTP layer: login-protected pages and session-authenticated JSON/image
endpoints. Thin: every decision (who sees what, how a report is signed) is in the service modules
(`access`, `worklist`, `studies`, `services`).

Pages: `/` worklist, `/studies/<uid>` study, `/reports/<id>/sign` and `/amend` (POST, CSRF).
JSON (session auth, 401 without a login, 404 for a study of another organization):
`/viewer/api/worklist`, `/viewer/api/studies/<uid>`. Images: `/viewer/images/<study>/<series>/
<instance>/frames/<n>/rendered` renders through the DICOMweb rendering service
(`integrations.dicom.dicomweb.pixels`), for logged-in users who may see the study; API clients
keep using `/dicomweb` with their bearer token.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from btt_health.console import access, accounts, services, studies, worklist
from btt_health.console.models import Role
from integrations.dicom.dicomweb import pixels
from integrations.dicom.dicomweb.errors import DicomWebError

logger = logging.getLogger(__name__)


def _context(request: HttpRequest, **extra) -> dict:
    role = accounts.role_of(request.user)
    return {
        "role": role,
        "role_label": Role(role).label.split(" (")[0] if role else "no role",
        "organizations": access.organizations_of(request.user),
        "poll_seconds": settings.BTT_CONSOLE_POLL_SECONDS,
        **extra,
    }


def login_required_json(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Like login_required, but answers 401 JSON instead of redirecting to the login page."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse({"error": "login required", "login": settings.LOGIN_URL}, status=401)
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@login_required
def worklist_page(request: HttpRequest) -> HttpResponse:
    try:
        query = worklist.WorklistQuery.from_params(request.GET)
    except worklist.QueryError as exc:
        messages.error(request, str(exc))
        query = worklist.WorklistQuery()
    page = worklist.worklist(request.user, query)
    return render(
        request,
        "console/worklist.html",
        _context(
            request,
            page=page,
            query=query,
            statuses=worklist.AI_STATUSES,
            sort_links=_sort_links(query),
            prev_href=_href(query, page=page.page - 1) if page.page > 1 else "",
            next_href=_href(query, page=page.page + 1) if page.page < page.pages else "",
            api_url=reverse("console:worklist-api"),
        ),
    )


def _href(query: worklist.WorklistQuery, **changes) -> str:
    return "?" + urlencode(query.as_params(**changes))


def _sort_links(query: worklist.WorklistQuery) -> dict[str, dict]:
    links = {}
    for key in worklist.SORTS:
        current = query.sort.lstrip("-") == key
        descending = query.sort.startswith("-")
        target = f"-{key}" if current and not descending else key
        if not current and key in ("received", "date", "trust"):
            target = f"-{key}"  # newest / highest first on the first click
        links[key] = {
            "href": _href(query, sort=target, page=1),
            "aria": ("descending" if descending else "ascending") if current else "none",
        }
    return links


@require_GET
@login_required_json
def worklist_api(request: HttpRequest) -> HttpResponse:
    try:
        query = worklist.WorklistQuery.from_params(request.GET)
    except worklist.QueryError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    page = worklist.worklist(request.user, query)
    body = page.as_dict()
    body["rows_html"] = render_to_string("console/_worklist_rows.html", {"page": page}, request=request)
    return JsonResponse(body)


@require_GET
@login_required
def study_page(request: HttpRequest, study_uid: str) -> HttpResponse:
    try:
        view = studies.study_view(request.user, study_uid)
    except access.NotVisible as exc:
        raise Http404(str(exc)) from None
    viewer = {
        "study": view.study_instance_uid,
        # The image URL with placeholders the viewer's script fills in.
        "imageUrl": reverse("console:rendered-frame", args=["_STUDY_", "_SERIES_", "_SOP_", 999999]),
        "series": [dataclasses.asdict(s) for s in view.series],
        "findings": [
            {**dataclasses.asdict(f), "report": r.id}
            for r in view.reports
            for f in r.findings
            if f.best_image
        ],
    }
    return render(
        request,
        "console/study.html",
        _context(
            request, study=view, viewer=viewer, may_sign=accounts.role_of(request.user) == Role.CLINICIAN
        ),
    )


@require_GET
@login_required_json
def study_api(request: HttpRequest, study_uid: str) -> HttpResponse:
    try:
        view = studies.study_view(request.user, study_uid)
    except access.NotVisible as exc:
        return JsonResponse({"error": str(exc)}, status=404)
    return JsonResponse(dataclasses.asdict(view))


@require_GET
@login_required_json
def rendered_frame(
    request: HttpRequest, study_uid: str, series_uid: str, sop_uid: str, frame: int
) -> HttpResponse:
    try:
        instance = studies.visible_instance(request.user, study_uid, series_uid, sop_uid)
        window = pixels.parse_window(request.GET["window"]) if request.GET.get("window") else None
        viewport = pixels.parse_viewport(request.GET["viewport"]) if request.GET.get("viewport") else None
        media_type = "image/png" if request.GET.get("format") == "png" else "image/jpeg"
        content = pixels.render(instance, frame, media_type, window=window, viewport=viewport, quality=92)
    except access.NotVisible as exc:
        return JsonResponse({"error": str(exc)}, status=404)
    except DicomWebError as exc:
        return JsonResponse({"error": exc.message}, status=exc.status)
    response = HttpResponse(content, content_type=media_type)
    # Images of a study do not change; private: only this user's browser keeps them.
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _sign_redirect(request: HttpRequest) -> HttpResponse:
    study_uid = request.POST.get("study", "")
    if study_uid:
        return redirect(reverse("console:study", args=[study_uid]) + "#report")
    return redirect("console:worklist")


@require_POST
@login_required
def sign(request: HttpRequest, report_id: str) -> HttpResponse:
    try:
        result = services.sign_report(
            report_id,
            request.user,
            request.POST.get("conclusion", ""),
            expected_version=request.POST.get("version") or None,
        )
    except access.NotVisible as exc:
        raise Http404(str(exc)) from None
    except services.SignOffError as exc:
        messages.error(request, f"Not signed: {exc}")
    else:
        messages.success(request, f"Report signed: final, version {result.version_id}.")
    return _sign_redirect(request)


@require_POST
@login_required
def amend(request: HttpRequest, report_id: str) -> HttpResponse:
    try:
        result = services.amend_report(
            report_id,
            request.user,
            request.POST.get("conclusion", ""),
            request.POST.get("reason", ""),
            expected_version=request.POST.get("version") or None,
        )
    except access.NotVisible as exc:
        raise Http404(str(exc)) from None
    except services.SignOffError as exc:
        messages.error(request, f"Not amended: {exc}")
    else:
        messages.success(request, f"Report amended: version {result.version_id}.")
    return _sign_redirect(request)
