"""QIDO-RS study searches: GET /dicomweb/studies with attribute matching (keyword or tag),
wildcards, ranges, lists, ModalitiesInStudy, limit/offset, includefield, default attributes."""

from __future__ import annotations

import pytest

from tests.dicom.test_dicomweb_support import (
    DICOM_JSON,
    dicomweb_storage,  # noqa: F401  (fixture)
    value,
    values,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]

STUDY_DEFAULTS = {
    "00080005",
    "00080020",
    "00080030",
    "00080050",
    "00080056",
    "00080061",
    "00080090",
    "00081190",
    "00100010",
    "00100020",
    "00100030",
    "00100040",
    "0020000D",
    "00200010",
    "00201206",
    "00201208",
}


def search(client, query: str = "", **headers):
    response = client.get(
        f"/dicomweb/studies{'?' + query if query else ''}", headers={"Accept": DICOM_JSON, **headers}
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == DICOM_JSON
    return response


def uids(client, query: str = "") -> list[str]:
    return values(search(client, query).json(), "0020000D")


def test_all_studies_newest_first_with_the_default_attributes(api_client, cat):
    items = search(api_client).json()
    assert values(items, "0020000D") == [cat.study_c, cat.study_b, cat.study_a]
    study_a = items[2]
    assert set(study_a) >= STUDY_DEFAULTS
    assert study_a["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert value(study_a, "00100020") == "P1"
    assert value(study_a, "00080020") == "20200115"
    assert value(study_a, "00080050") == "ACC1"
    assert value(study_a, "00081030") == "Chest CT"
    assert study_a["00080061"]["Value"] == ["CT", "MR"]
    assert value(study_a, "00201206") == 2
    assert value(study_a, "00201208") == 3
    assert value(study_a, "00080056") == "ONLINE"
    assert value(study_a, "00081190") == f"http://testserver/dicomweb/studies/{cat.study_a}"
    assert study_a["00081190"]["vr"] == "UR"
    assert "00101010" not in study_a  # PatientAge: not a default attribute


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=Doe*", ["b", "a"]),
        ("PatientName=doe*", ["b", "a"]),  # person names match case-insensitively
        ("00100010=Smith^Anna", ["c"]),
        ("PatientName=*ane", ["b"]),
        ("PatientName=Doe^Ja?e", ["b"]),
        ("PatientID=P3", ["c"]),
        ("00100020=P*", ["c", "b", "a"]),
        ("AccessionNumber=ACC2", ["b"]),
        ("StudyDescription=*MR", ["b"]),
        ("StudyID=S-A", ["a"]),
        ("ReferringPhysicianName=house^gregory", ["a"]),
        ("StudyDate=20200101-20201231", ["b", "a"]),
        ("StudyDate=20201231", ["b"]),
        ("StudyDate=-20200201", ["a"]),
        ("StudyDate=20201201-", ["c", "b"]),
        ("00080020=20210301-20210301", ["c"]),
        ("StudyTime=0700-1100", ["c", "a"]),
        ("StudyTime=235900", ["b"]),
        ("ModalitiesInStudy=MR", ["b", "a"]),
        ("ModalitiesInStudy=CT,US", ["c", "a"]),
        ("00080061=US\\CT", ["c", "a"]),
        ("PatientAge=050Y", ["a"]),  # no column: matched in the study's DICOM JSON
        ("PatientName=Doe*&StudyDate=20201201-", ["b"]),
        ("PatientName=&AccessionNumber=ACC3", ["c"]),  # universal matching
        ('ReferringPhysicianName=""', ["c", "b"]),  # empty value matching: studies without one
        ('PatientAge=""', ["c", "b"]),  # the same in the study's DICOM JSON
        ('ReferringPhysicianName=""\\house*', ["c", "b", "a"]),  # in a list: one alternative of two
        ("PatientName=Nobody", []),
    ],
)
def test_attribute_matching(api_client, cat, query, expected):
    by_name = {"a": cat.study_a, "b": cat.study_b, "c": cat.study_c}
    assert uids(api_client, query) == [by_name[name] for name in expected]


def test_study_instance_uid_lists(api_client, cat):
    assert uids(api_client, f"StudyInstanceUID={cat.study_a},{cat.study_c}") == [cat.study_c, cat.study_a]
    assert uids(api_client, f"0020000D={cat.study_b}\\{cat.study_a}") == [cat.study_b, cat.study_a]
    assert uids(api_client, f"StudyInstanceUID={cat.study_a}&StudyInstanceUID={cat.study_b}") == [
        cat.study_b,
        cat.study_a,
    ]


def test_limit_and_offset_page_through_the_results(api_client, cat):
    assert uids(api_client, "limit=2") == [cat.study_c, cat.study_b]
    assert uids(api_client, "limit=2&offset=2") == [cat.study_a]
    assert uids(api_client, "offset=3") == []


def test_includefield_adds_attributes_and_all_returns_everything(api_client, cat):
    (item,) = search(api_client, f"StudyInstanceUID={cat.study_a}&includefield=PatientAge").json()
    assert value(item, "00101010") == "050Y"
    (item,) = search(api_client, f"StudyInstanceUID={cat.study_a}&includefield=00101010,00080201").json()
    assert value(item, "00101010") == "050Y"
    assert item["00080201"] == {"vr": "SH"}  # asked for, absent: returned empty
    (item,) = search(api_client, f"StudyInstanceUID={cat.study_a}&includefield=all").json()
    assert value(item, "00101010") == "050Y"
    assert set(item) >= STUDY_DEFAULTS


def test_matching_keys_are_returned(api_client, cat):
    (item,) = search(api_client, "PatientAge=050Y").json()
    assert value(item, "00101010") == "050Y"


def test_no_match_is_200_with_an_empty_array(api_client, cat):
    response = search(api_client, "AccessionNumber=NONE")
    assert response.json() == []


def test_fuzzymatching_is_answered_with_a_warning(api_client, cat):
    response = search(api_client, "PatientName=doe*&fuzzymatching=true")
    assert len(response.json()) == 2
    assert "fuzzymatching" in response["Warning"]
    assert response["Warning"].startswith("299 ")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
        ("StudyDate=2020", "StudyDate"),
        ("StudyDate=20200101-20xx", "StudyDate"),
        ("StudyTime=25:00", "StudyTime"),
        ("NotAnAttribute=1", "NotAnAttribute"),
        ("includefield=NotAKeyword", "includefield=NotAKeyword"),
        ("Modality=CT", "Modality"),
        ("SOPInstanceUID=1.2.3", "SOPInstanceUID"),
        ("NumberOfStudyRelatedSeries=two", "NumberOfStudyRelatedSeries"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("PatientName=a&PatientName=b", "PatientName"),
    ],
)
def test_bad_parameters_are_400_naming_them(api_client, cat, query, named):
    response = api_client.get(f"/dicomweb/studies?{query}")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert named in response.json()["message"]


def test_only_dicom_json_is_offered(api_client, cat):
    response = api_client.get(
        "/dicomweb/studies", headers={"Accept": "multipart/related; type=application/dicom+xml"}
    )
    assert response.status_code == 406
    assert "application/dicom+json" in response.json()["message"]
    assert search(api_client, "", HTTP_ACCEPT="application/json").status_code == 200
    assert api_client.get("/dicomweb/studies?accept=application/dicom%2Bjson").status_code == 200
