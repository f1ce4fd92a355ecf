"""DICOMweb errors: a status code and a message naming the problem, answered as JSON.

DICOMweb has no OperationOutcome: an error is `{"status": 404, "error": "Not Found",
"message": "..."}` as `application/json`, and the message is repeated in a `Warning: 299` header
(PS3.18 8.1.5), which is where DICOMweb clients look for it.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
from django.http import HttpResponse

SERVICE = "BTTHEALTH"


def warning_header(text: str) -> str:
    """A `Warning` header value (RFC 7234 style, as PS3.18 uses it) carrying `text`."""
    clean = " ".join(text.replace('"', "'").split())
    return f'299 {SERVICE} "{clean}"'


class DicomWebError(Exception):
    """An error a DICOMweb client sees: HTTP `status` and a `message` saying what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> DicomWebError:
    return DicomWebError(400, message)


def not_found(message: str) -> DicomWebError:
    return DicomWebError(404, message)


def not_acceptable(message: str) -> DicomWebError:
    return DicomWebError(406, message)


def error_response(error: DicomWebError) -> HttpResponse:
    body = {"status": error.status, "error": HTTPStatus(error.status).phrase, "message": error.message}
    response = HttpResponse(orjson.dumps(body), status=error.status, content_type="application/json")
    response["Warning"] = warning_header(error.message)
    for name, value in error.headers.items():
        response[name] = value
    return response
