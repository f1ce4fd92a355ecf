"""QIDO-RS series searches: /dicomweb/studies/{study}/series and /dicomweb/series."""

from __future__ import annotations

import pytest

from tests.dicom.test_dicomweb_support import (
    dicomweb_storage,  # noqa: F401  (fixture)
    qido,
    value,
    values,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]

SERIES_DEFAULTS = {
    "00080060",
    "0008103E",
    "00081190",
    "0020000E",
    "00200011",
    "00201209",
    "00400244",
    "00400245",
    "00400275",
}


def test_series_of_a_study_in_series_number_order(api_client, cat):
    items = qido(api_client, f"/dicomweb/studies/{cat.study_a}/series")
    assert values(items, "0020000E") == [cat.series_a1, cat.series_a2]
    first = items[0]
    assert set(first) >= SERIES_DEFAULTS
    assert value(first, "00080060") == "CT"
    assert value(first, "00200011") == 1
    assert value(first, "00201209") == 2
    assert value(first, "0020000D") == cat.study_a
    assert (
        value(first, "00081190") == f"http://testserver/dicomweb/studies/{cat.study_a}/series/{cat.series_a1}"
    )
    assert "00100010" not in first  # the study is given: its attributes are not repeated
    (request,) = first["00400275"]["Value"]
    assert value(request, "00400009") == "SPS1"
    assert value(request, "00401001") == "RP1"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Modality=MR", ["a2"]),
        ("00080060=CT", ["a1"]),
        ("SeriesNumber=2", ["a2"]),
        ("InstitutionName=General*", ["a1"]),  # no column: matched in the series' DICOM JSON
        ("PatientName=doe^john", ["a1", "a2"]),  # a study-level key in a series search
    ],
)
def test_matching_within_a_study(api_client, cat, query, expected):
    by_name = {"a1": cat.series_a1, "a2": cat.series_a2}
    items = qido(api_client, f"/dicomweb/studies/{cat.study_a}/series?{query}")
    assert values(items, "0020000E") == [by_name[name] for name in expected]


def test_all_series_carry_their_study_attributes(api_client, cat):
    items = qido(api_client, "/dicomweb/series?Modality=MR")
    assert sorted(values(items, "0020000E")) == sorted([cat.series_a2, cat.series_b1])
    by_series = {value(item, "0020000E"): item for item in items}
    assert value(by_series[cat.series_b1], "00100010") == {"Alphabetic": "Doe^Jane"}
    assert value(by_series[cat.series_b1], "00080050") == "ACC2"
    assert value(by_series[cat.series_b1], "0020000D") == cat.study_b
    assert value(by_series[cat.series_b1], "00081190").endswith(
        f"/studies/{cat.study_b}/series/{cat.series_b1}"
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=Smith*", ["c1"]),
        ("StudyDate=20201201-", ["b1", "c1"]),
        ("Modality=CT\\US", ["a1", "c1"]),
        ("ModalitiesInStudy=CT", ["a1", "a2"]),
        ("AccessionNumber=ACC1&Modality=MR", ["a2"]),
        # A sequence attribute, by keyword path or tag path (matched in the first item)
        ("RequestAttributesSequence.ScheduledProcedureStepID=SPS1", ["a1"]),
        ("00400275.00401001=RP*", ["a1"]),
        ('InstitutionName=""', ["a2", "b1", "c1"]),  # empty value matching: series without one
    ],
)
def test_matching_across_studies(api_client, cat, query, expected):
    by_name = {"a1": cat.series_a1, "a2": cat.series_a2, "b1": cat.series_b1, "c1": cat.series_c1}
    items = qido(api_client, f"/dicomweb/series?{query}")
    assert sorted(values(items, "0020000E")) == sorted(by_name[name] for name in expected)


def test_series_uid_list_and_limit(api_client, cat):
    items = qido(api_client, f"/dicomweb/series?SeriesInstanceUID={cat.series_a1},{cat.series_c1}")
    assert sorted(values(items, "0020000E")) == sorted([cat.series_a1, cat.series_c1])
    assert len(qido(api_client, "/dicomweb/series?limit=3")) == 3
    assert len(qido(api_client, "/dicomweb/series?limit=3&offset=3")) == 1


def test_unknown_study_is_404(api_client, cat):
    response = api_client.get("/dicomweb/studies/1.2.3.999/series")
    assert response.status_code == 404
    assert "1.2.3.999" in response.json()["message"]


def test_instance_level_key_in_a_series_search_is_400(api_client, cat):
    response = api_client.get("/dicomweb/series?SOPInstanceUID=1.2.3")
    assert response.status_code == 400
    assert "SOPInstanceUID" in response.json()["message"]
