"""Views used only by `benchmarks/fhir_benchmark.py`, mounted when `BTT_BENCH_VIEWS` is on.

`fixed_json` is the ceiling the FHIR endpoints are measured against: a Django view behind the same
middleware, served by the same gunicorn configuration, that returns a fixed JSON body of about the
size of a small FHIR resource, with no authentication, no database and no serialisation work.
"""

from __future__ import annotations

import orjson
from django.http import HttpRequest, HttpResponse

# About 1 KB, shaped like a small resource so the transfer is comparable with a FHIR read.
FIXED_BODY: bytes = orjson.dumps(
    {
        "resourceType": "Basic",
        "id": "bench-fixed",
        "meta": {"versionId": "1", "lastUpdated": "2025-01-01T00:00:00.000Z"},
        "code": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/basic-resource-type",
                    "code": "adminact",
                    "display": "Administrative Activity",
                }
            ],
            "text": "A fixed body for measuring the HTTP stack without the FHIR store",
        },
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 560 + "</div>",
        },
    }
)


def fixed_json(request: HttpRequest) -> HttpResponse:
    """Answer every request with `FIXED_BODY` (200, application/json)."""
    return HttpResponse(FIXED_BODY, content_type="application/json")
