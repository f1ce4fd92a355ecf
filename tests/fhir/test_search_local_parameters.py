"""The server's own SearchParameters (integrations/fhir/spec/search-parameters-btt.json) work like
the standard ones: DiagnosticReport?imaging-study=..., which R4 does not define."""

from __future__ import annotations

import pytest

from tests.fhir.test_search_support import create, ids

pytestmark = pytest.mark.django_db


def report(report_id: str, study_id: str) -> dict:
    return {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "preliminary",
        "code": {"text": "AI finding"},
        "subject": {"reference": "Patient/p1"},
        "imagingStudy": [{"reference": f"ImagingStudy/{study_id}"}],
    }


def test_diagnostic_reports_are_found_by_their_imaging_study(db):
    create({"resourceType": "Patient", "id": "p1"})
    for study_id in ("s1", "s2"):
        create(
            {
                "resourceType": "ImagingStudy",
                "id": study_id,
                "status": "available",
                "subject": {"reference": "Patient/p1"},
            }
        )
    create(report("r1", "s1"))
    create(report("r2", "s2"))

    assert ids("DiagnosticReport", "imaging-study=ImagingStudy/s1", strict=True) == {"r1"}
    assert ids("DiagnosticReport", "imaging-study:ImagingStudy=s2", strict=True) == {"r2"}
