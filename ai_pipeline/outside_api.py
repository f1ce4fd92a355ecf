"""The API of workers outside the hospital, under /api/ai/outside (ai_pipeline/outside.py does the work).

- `GET /api/ai/outside/jobs/<ref>/study`: the de-identified study of the job as a zip of Part 10
  files (`<stand-in SOP Instance UID>.dcm`); the header `X-BTT-Worker` names the worker.
- `POST /api/ai/outside/jobs/<ref>/result`: `{"worker", "analysis"}` or `{"worker", "error"}` (JSON);
  200 with `{"job", "state", "reason"}`; 503 with Retry-After when the result cannot be written now.

Both take the job's own token (`Authorization: Bearer <token>`, from the task payload), not an API
client's. Errors are `{"error": <status text>, "message": ...}`: 401 without a token, 403 for a
wrong, expired or superseded token, 404 for an unknown job, 409 when the job is not running.
"""

from __future__ import annotations

import json
import tempfile
import zipfile

from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from ai_pipeline import outside

MAX_RESULT_BYTES = 5 * 1024 * 1024
_REASONS = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found", 409: "conflict", 410: "gone", 413: "payload too large", 503: "service unavailable"}  # fmt: skip


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse({"error": _REASONS.get(status, "error"), "message": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="outside"'
    return response


def _token(request: HttpRequest) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@csrf_exempt
@require_http_methods(["GET"])
def study(request: HttpRequest, ref: str) -> HttpResponse:
    try:
        files = outside.open_study(ref, _token(request), worker=request.headers.get("X-BTT-Worker", "")[:100])
    except outside.OutsideDenied as exc:
        return _error(exc.status, exc.message)
    archive = tempfile.TemporaryFile()  # noqa: SIM115 - FileResponse closes it
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
        for path in files:
            bundle.write(path, path.name)
    archive.seek(0)
    return FileResponse(archive, content_type="application/zip", as_attachment=True, filename=f"{ref}.zip")


@csrf_exempt
@require_http_methods(["POST"])
def result(request: HttpRequest, ref: str) -> HttpResponse:
    token = _token(request)
    try:
        outside.authorise(ref, token)  # a caller without the job's token learns nothing more
        if len(request.body) > MAX_RESULT_BYTES:
            raise outside.OutsideDenied(413, f"a result is at most {MAX_RESULT_BYTES} bytes")
        try:
            body = json.loads(request.body or b"null")
        except ValueError as exc:
            raise outside.OutsideDenied(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise outside.OutsideDenied(400, "the body must be a JSON object")
        job = outside.receive_result(ref, token, body)
    except outside.OutsideDenied as exc:
        return _error(exc.status, exc.message)
    except outside.OutsideRetryLater:
        return _error(503, "the result cannot be written now; post it again", {"Retry-After": "10"})
    return JsonResponse(outside.outcome_as_dict(ref, job))
