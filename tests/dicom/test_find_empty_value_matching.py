"""C-FIND Empty Value Matching (PS3.4 C.2.2.2.1): a key whose value is two QUOTATION MARK
characters (`""`) matches the entities that have no value for the attribute (zero length or
absent), as a service (`integrations.dicom.query.find`) over the Query/Retrieve catalogue
(tests/dicom/qr_support.py). In a value list it is one alternative among the others.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from integrations.dicom import query
from integrations.dicom.query import STUDY_ROOT
from tests.dicom.qr_support import uid

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("catalogue"),
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
]


def find(level: str, **keys: object) -> list[Dataset]:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, None if value == "" else value)
    return list(query.find(ds, STUDY_ROOT, retrieve_aet="BTTHEALTH"))


def uids(results: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(ds[keyword].value) for ds in results)


def test_empty_value_matches_entities_without_a_value() -> None:
    # Only study A has a referring physician (Who^Doctor).
    results = find("STUDY", StudyInstanceUID="", ReferringPhysicianName='""')
    assert uids(results, "StudyInstanceUID") == sorted(uid(s) for s in ("study-b", "study-c", "study-d"))
    assert all(not ds.ReferringPhysicianName for ds in results)  # returned zero length


def test_empty_value_on_a_series_attribute() -> None:
    # Series a-sr of study A has no Body Part Examined; a-ct has CHEST.
    results = find("SERIES", StudyInstanceUID=uid("study-a"), SeriesInstanceUID="", BodyPartExamined='""')
    assert uids(results, "SeriesInstanceUID") == [uid("study-a/a-sr")]


def test_empty_value_in_a_value_list() -> None:
    results = find(
        "SERIES", StudyInstanceUID=uid("study-a"), SeriesInstanceUID="", BodyPartExamined=['""', "CHEST"]
    )
    assert uids(results, "SeriesInstanceUID") == sorted([uid("study-a/a-ct"), uid("study-a/a-sr")])


def test_empty_value_on_an_attribute_kept_in_the_dicom_json() -> None:
    # No catalogue image carries Patient's Age: every study matches "", none matches a value.
    assert len(find("STUDY", StudyInstanceUID="", PatientAge='""')) == 4
    assert find("STUDY", StudyInstanceUID="", PatientAge="050Y") == []
    # Every image carries Image Type: none matches "".
    series = {"StudyInstanceUID": uid("study-b"), "SeriesInstanceUID": uid("study-b/b-mr")}
    assert find("IMAGE", SOPInstanceUID="", ImageType='""', **series) == []
