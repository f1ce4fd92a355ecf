"""QIDO-RS instance searches: /dicomweb/studies/{study}/series/{series}/instances,
/dicomweb/studies/{study}/instances and /dicomweb/instances."""

from __future__ import annotations

import pytest

from tests.dicom.test_dicomweb_support import (
    dicomweb_storage,  # noqa: F401  (fixture)
    qido,
    value,
    values,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]

INSTANCE_DEFAULTS = {
    "00080016",
    "00080018",
    "00080056",
    "00081190",
    "00200013",
    "00280010",
    "00280011",
    "00280100",
}


def test_instances_of_a_series_in_instance_number_order(api_client, cat):
    items = qido(api_client, f"/dicomweb/studies/{cat.study_a}/series/{cat.series_a1}/instances")
    assert values(items, "00080018") == cat.sops[cat.series_a1]
    first = items[0]
    assert set(first) >= INSTANCE_DEFAULTS
    assert value(first, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(first, "00200013") == 1
    assert value(first, "00280010") == 4
    assert value(first, "00280011") == 4
    assert value(first, "00280100") == 16
    assert value(first, "0020000E") == cat.series_a1
    assert value(first, "0020000D") == cat.study_a
    assert value(first, "00081190") == (
        f"http://testserver/dicomweb/studies/{cat.study_a}/series/{cat.series_a1}/instances/{cat.sops[cat.series_a1][0]}"
    )
    assert "00080060" not in first  # the series is given: its attributes are not repeated


def test_instances_of_a_study_carry_series_attributes(api_client, cat):
    items = qido(api_client, f"/dicomweb/studies/{cat.study_a}/instances")
    assert len(items) == 3
    assert sorted(values(items, "00080060")) == ["CT", "CT", "MR"]
    assert "00100010" not in items[0]
    items = qido(api_client, f"/dicomweb/studies/{cat.study_a}/instances?Modality=MR")
    assert values(items, "00080018") == cat.sops[cat.series_a2]


def test_all_instances_carry_study_and_series_attributes(api_client, cat):
    sop_b = cat.sops[cat.series_b1][0]
    sop_c = cat.sops[cat.series_c1][0]
    items = qido(api_client, f"/dicomweb/instances?SOPInstanceUID={sop_b},{sop_c}")
    assert sorted(values(items, "00080018")) == sorted([sop_b, sop_c])
    by_sop = {value(item, "00080018"): item for item in items}
    assert value(by_sop[sop_c], "00100020") == "P3"
    assert value(by_sop[sop_c], "00080060") == "US"
    assert value(by_sop[sop_c], "0020000D") == cat.study_c


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("InstanceNumber=2", 1),
        ("InstanceNumber=1", 4),
        ("SOPClassUID=1.2.840.10008.5.1.4.1.1.2", 5),
        ("Rows=4", 5),  # no column: matched in the instance's DICOM JSON
        ("Rows=5", 0),
        ("PatientName=Doe*&Modality=MR", 2),
        ("StudyDate=20200115&InstanceNumber=2", 1),
        ("limit=2", 2),
        ("limit=2&offset=4", 1),
    ],
)
def test_matching_all_instances(api_client, cat, query, count):
    assert len(qido(api_client, f"/dicomweb/instances?{query}")) == count


def test_includefield_on_instances(api_client, cat):
    items = qido(
        api_client,
        f"/dicomweb/studies/{cat.study_b}/series/{cat.series_b1}/instances?includefield=PhotometricInterpretation",
    )
    assert value(items[0], "00280004") == "MONOCHROME2"


def test_unknown_series_is_404(api_client, cat):
    response = api_client.get(f"/dicomweb/studies/{cat.study_a}/series/{cat.series_b1}/instances")
    assert response.status_code == 404
    assert cat.series_b1 in response.json()["message"]


def test_a_malformed_uid_is_400(api_client, cat):
    response = api_client.get("/dicomweb/studies/not-a-uid/instances")
    assert response.status_code == 400
    assert "not-a-uid" in response.json()["message"]
