"""C-FIND matching as a service (`integrations.dicom.query.find`), without the network.

The catalogue (tests/dicom/qr_support.py) is stored once for the module through the real ingest
service, so the index rows and their DICOM JSON are what the C-STORE SCP writes. Each test sends
an identifier and checks which entities match and what the responses hold: single value,
wildcard, list, range and universal matching at every level, unique-key rules, counts.
The same matching over the network with DCMTK findscu: test_find_findscu.py.
"""

from __future__ import annotations

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from integrations.dicom import query
from integrations.dicom.query import PATIENT_ROOT, STUDY_ROOT, QueryError
from tests.dicom.qr_support import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, uid

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("catalogue"),
    # Query values are not valid attribute values (wildcards in CS, ranges in DA): pydicom warns.
    pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning"),
]


def identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, None if value == "" else value)
    return ds


def run(level: str, model: str = STUDY_ROOT, **keys: object) -> list[Dataset]:
    return list(query.find(identifier(level, **keys), model, retrieve_aet="BTTHEALTH"))


def values(results: list[Dataset], keyword: str) -> list[str]:
    return sorted(str(ds.get(keyword) or "") for ds in results)


# --- PATIENT level (Patient Root) --------------------------------------------------------------------


def test_patient_level_universal_returns_every_patient_with_requested_keys_only() -> None:
    results = run("PATIENT", PATIENT_ROOT, PatientID="", PatientName="")
    assert values(results, "PatientID") == ["PAT001", "PAT002", "PAT003"]
    first = next(ds for ds in results if ds.PatientID == "PAT001")
    assert str(first.PatientName) == "Doe^John"
    assert set(first.dir()) == {
        "PatientID",
        "PatientName",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "SpecificCharacterSet",
    }
    assert first.QueryRetrieveLevel == "PATIENT"
    assert first.RetrieveAETitle == "BTTHEALTH"


def test_patient_name_wildcards_are_case_insensitive() -> None:
    assert values(run("PATIENT", PATIENT_ROOT, PatientID="", PatientName="doe*"), "PatientID") == [
        "PAT001",
        "PAT002",
    ]
    assert values(run("PATIENT", PATIENT_ROOT, PatientID="", PatientName="*^J?NE"), "PatientID") == ["PAT002"]
    assert values(run("PATIENT", PATIENT_ROOT, PatientID="", PatientName="DOE^JOHN"), "PatientID") == [
        "PAT001"
    ]
    # No wildcard: the whole name must match, not a prefix.
    assert run("PATIENT", PATIENT_ROOT, PatientID="", PatientName="Doe") == []


def test_non_ascii_names_match_and_come_back_in_utf8() -> None:
    (result,) = run("PATIENT", PATIENT_ROOT, PatientID="", PatientName="MÜLLER*")
    assert result.PatientID == "PAT003"
    assert str(result.PatientName) == "Müller^Jürgen"
    assert result.SpecificCharacterSet == "ISO_IR 192"


def test_patient_id_list_and_wildcard() -> None:
    assert values(run("PATIENT", PATIENT_ROOT, PatientID=["PAT001", "PAT003"]), "PatientID") == [
        "PAT001",
        "PAT003",
    ]
    assert values(run("PATIENT", PATIENT_ROOT, PatientID="PAT00?"), "PatientID") == [
        "PAT001",
        "PAT002",
        "PAT003",
    ]
    assert run("PATIENT", PATIENT_ROOT, PatientID="pat001") == []  # not a PN: case-sensitive


def test_patient_counts() -> None:
    results = run(
        "PATIENT",
        PATIENT_ROOT,
        PatientID="PAT001",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    (result,) = results
    assert (
        int(result.NumberOfPatientRelatedStudies),
        int(result.NumberOfPatientRelatedSeries),
        int(result.NumberOfPatientRelatedInstances),
    ) == (2, 3, 6)


def test_birth_date_range_from_the_json_free_column() -> None:
    assert values(
        run("PATIENT", PATIENT_ROOT, PatientID="", PatientBirthDate="19600101-19751231"), "PatientID"
    ) == ["PAT001"]
    assert values(run("PATIENT", PATIENT_ROOT, PatientID="", PatientBirthDate="-19600101"), "PatientID") == [
        "PAT003"
    ]


# --- STUDY level ---------------------------------------------------------------------------------------


def test_study_date_ranges() -> None:
    def studies(date: str) -> list[str]:
        return values(run("STUDY", StudyInstanceUID="", StudyDate=date), "StudyInstanceUID")

    a, b, c, d = uid("study-a"), uid("study-b"), uid("study-c"), uid("study-d")
    assert studies("20200101-20201231") == sorted([a, c])
    assert studies("-20200115") == sorted([a, d])
    assert studies("20201231-") == sorted([b, c])
    assert studies("20200115") == [a]
    assert studies("") == sorted([a, b, c, d])
    # Partial dates in a range cover the whole year.
    assert studies("2020-2020") == sorted([a, c])


def test_study_time_range_and_combined_keys() -> None:
    results = run("STUDY", StudyInstanceUID="", StudyTime="1000-1500", ModalitiesInStudy="")
    assert values(results, "StudyInstanceUID") == sorted([uid("study-a"), uid("study-b")])
    by_uid = {ds.StudyInstanceUID: ds for ds in results}
    assert list(by_uid[uid("study-a")].ModalitiesInStudy) == ["CT", "SR"]
    assert by_uid[uid("study-b")].ModalitiesInStudy == "MR"


def test_modalities_in_study_matches_any_series() -> None:
    assert values(run("STUDY", StudyInstanceUID="", ModalitiesInStudy="SR"), "StudyInstanceUID") == [
        uid("study-a")
    ]
    assert values(
        run("STUDY", StudyInstanceUID="", ModalitiesInStudy=["MR", "US"]), "StudyInstanceUID"
    ) == sorted([uid("study-b"), uid("study-d")])


def test_study_uid_list_matching() -> None:
    results = run("STUDY", StudyInstanceUID=[uid("study-a"), uid("study-d"), "1.2.3.4"])
    assert values(results, "StudyInstanceUID") == sorted([uid("study-a"), uid("study-d")])


def test_study_level_counts_and_patient_keys_in_study_root() -> None:
    (result,) = run(
        "STUDY",
        StudyInstanceUID=uid("study-a"),
        PatientName="",
        PatientID="",
        AccessionNumber="",
        StudyDescription="",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        SOPClassesInStudy="",
        InstanceAvailability="",
    )
    assert str(result.PatientName) == "Doe^John"
    assert result.PatientID == "PAT001"
    assert result.AccessionNumber == "ACC-100"
    assert result.StudyDescription == "CT CHEST"
    assert int(result.NumberOfStudyRelatedSeries) == 2
    assert int(result.NumberOfStudyRelatedInstances) == 4
    assert result.SOPClassesInStudy == CT_IMAGE_STORAGE
    assert result.InstanceAvailability == "ONLINE"


def test_accession_wildcard_and_description_wildcard() -> None:
    assert values(run("STUDY", StudyInstanceUID="", AccessionNumber="ACC-?00"), "AccessionNumber") == [
        "ACC-100",
        "ACC-200",
        "ACC-300",
        "ACC-400",
    ]
    assert values(
        run("STUDY", StudyInstanceUID="", StudyDescription="*ABDOMEN"), "StudyInstanceUID"
    ) == sorted([uid("study-c"), uid("study-d")])


def test_referring_physician_from_the_column_and_patient_age_from_json_is_universal() -> None:
    (result,) = run("STUDY", StudyInstanceUID="", ReferringPhysicianName="WHO*", PatientAge="")
    assert result.StudyInstanceUID == uid("study-a")
    assert "PatientAge" in result
    assert not result.PatientAge


def test_patient_root_study_level_needs_the_patient_id() -> None:
    with pytest.raises(QueryError) as caught:
        run("STUDY", PATIENT_ROOT, StudyInstanceUID="")
    assert caught.value.status == 0xA900
    assert "PatientID" in caught.value.comment
    results = run("STUDY", PATIENT_ROOT, PatientID="PAT002", StudyInstanceUID="")
    assert values(results, "StudyInstanceUID") == [uid("study-c")]


def test_value_lists_of_names_dates_and_times() -> None:
    """A backslash list: any value may match, each by its own kind of matching."""
    assert values(
        run("PATIENT", PATIENT_ROOT, PatientID="", PatientName=["doe^john", "MÜLLER*"]), "PatientID"
    ) == ["PAT001", "PAT003"]
    a, b, c, d = uid("study-a"), uid("study-b"), uid("study-c"), uid("study-d")

    def studies(**keys: object) -> list[str]:
        return values(run("STUDY", StudyInstanceUID="", **keys), "StudyInstanceUID")

    assert studies(StudyDate=["20190301", "20201231"]) == sorted([c, d])
    assert studies(StudyDate=["20190301", "2021-"]) == sorted([b, d])  # a single date next to a range
    # A single time is the period it names: 1015 is 10:15:00 to 10:15:59.999999.
    assert studies(StudyTime=["1015", "0800"]) == sorted([a, d])


def test_a_multi_valued_attribute_matches_on_any_of_its_values() -> None:
    series = {"StudyInstanceUID": uid("study-a"), "SeriesInstanceUID": uid("study-a/a-ct")}
    # Image Type is ORIGINAL\PRIMARY\AXIAL: its third value matches.
    assert len(run("IMAGE", SOPInstanceUID="", ImageType="AXIAL", **series)) == 3
    assert run("IMAGE", SOPInstanceUID="", ImageType="LOCALIZER", **series) == []


# --- SERIES and IMAGE levels ------------------------------------------------------------------------


def test_series_level_needs_study_uid_and_matches_modality() -> None:
    with pytest.raises(QueryError) as caught:
        run("SERIES", SeriesInstanceUID="", Modality="CT")
    assert caught.value.status == 0xA900
    assert caught.value.offending == 0x0020000D
    results = run(
        "SERIES",
        StudyInstanceUID=uid("study-a"),
        SeriesInstanceUID="",
        Modality="",
        SeriesNumber="",
        NumberOfSeriesRelatedInstances="",
        BodyPartExamined="",
    )
    by_modality = {ds.Modality: ds for ds in results}
    assert set(by_modality) == {"CT", "SR"}
    assert int(by_modality["CT"].NumberOfSeriesRelatedInstances) == 3
    assert by_modality["CT"].BodyPartExamined == "CHEST"
    assert int(by_modality["SR"].SeriesNumber) == 2
    only_ct = run("SERIES", StudyInstanceUID=uid("study-a"), SeriesInstanceUID="", Modality="C?")
    assert values(only_ct, "SeriesInstanceUID") == [uid("study-a/a-ct")]


def test_series_number_single_value_and_invalid_number() -> None:
    results = run("SERIES", StudyInstanceUID=uid("study-c"), SeriesInstanceUID="", SeriesNumber="2")
    assert values(results, "SeriesInstanceUID") == [uid("study-c/c-ct2")]
    bad = identifier("SERIES", StudyInstanceUID=uid("study-c"), SeriesInstanceUID="")
    # As a peer would send it: pydicom refuses to set an IS of "two", so put the raw bytes.
    bad[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 4, b"two ", 0, False, True)
    with pytest.raises(QueryError) as caught:
        list(query.find(bad, STUDY_ROOT))
    assert caught.value.status == 0xA900
    assert caught.value.offending == 0x00200011


def test_image_level_keys_from_columns_and_json() -> None:
    results = run(
        "IMAGE",
        StudyInstanceUID=uid("study-b"),
        SeriesInstanceUID=uid("study-b/b-mr"),
        SOPInstanceUID="",
        SOPClassUID="",
        InstanceNumber="",
        Rows="",
        ImageType="",
        AvailableTransferSyntaxUID="",
    )
    assert [int(ds.InstanceNumber) for ds in sorted(results, key=lambda d: int(d.InstanceNumber))] == [1, 2]
    first = results[0]
    assert first.SOPClassUID == MR_IMAGE_STORAGE
    assert first.Rows == 8
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.AvailableTransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_image_level_json_matching_and_uid_list() -> None:
    series = {"StudyInstanceUID": uid("study-a"), "SeriesInstanceUID": uid("study-a/a-ct")}
    assert len(run("IMAGE", SOPInstanceUID="", Rows=8, **series)) == 3
    assert run("IMAGE", SOPInstanceUID="", Rows=16, **series) == []
    assert len(run("IMAGE", SOPInstanceUID="", ImageType="ORIG*", **series)) == 3
    wanted = [uid("study-a/a-ct/1"), uid("study-a/a-ct/3")]
    assert values(run("IMAGE", SOPInstanceUID=wanted, **series), "SOPInstanceUID") == sorted(wanted)


def test_image_level_results_paged_in_chunks() -> None:
    identifier_ds = identifier(
        "IMAGE", StudyInstanceUID=uid("study-a"), SeriesInstanceUID=uid("study-a/a-ct"), SOPInstanceUID=""
    )
    results = list(query.find(identifier_ds, STUDY_ROOT, retrieve_aet="X", chunk_size=1))
    assert len(results) == 3


# --- Bad identifiers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "model", "fragment"),
    [("", STUDY_ROOT, "(empty)"), ("FRAME", STUDY_ROOT, "FRAME"), ("PATIENT", STUDY_ROOT, "Study Root")],
)
def test_invalid_level(level: str, model: str, fragment: str) -> None:
    with pytest.raises(QueryError) as caught:
        run(level, model)
    assert caught.value.status == 0xA900
    assert fragment in caught.value.comment


def test_missing_level_and_bad_range() -> None:
    with pytest.raises(QueryError):
        list(query.find(Dataset(), STUDY_ROOT))
    with pytest.raises(QueryError) as caught:
        run("STUDY", StudyInstanceUID="", StudyDate="2020x-")
    assert caught.value.status == 0xA900


# --- Retrieve selection -----------------------------------------------------------------------------


def test_instances_to_retrieve_by_level() -> None:
    def uids(level: str, model: str = STUDY_ROOT, **keys: object) -> list[str]:
        qs = query.instances_to_retrieve(identifier(level, **keys), model)
        return list(qs.values_list("sop_instance_uid", flat=True))

    assert len(uids("STUDY", StudyInstanceUID=uid("study-a"))) == 4
    assert len(uids("STUDY", StudyInstanceUID=[uid("study-a"), uid("study-b")])) == 6
    assert len(uids("PATIENT", PATIENT_ROOT, PatientID="PAT002")) == 3
    assert uids("SERIES", SeriesInstanceUID=uid("study-c/c-ct2")) == [uid("study-c/c-ct2/1")]
    # An upper-level key that does not match selects nothing.
    assert uids("SERIES", StudyInstanceUID=uid("study-a"), SeriesInstanceUID=uid("study-c/c-ct2")) == []
    assert uids("IMAGE", SOPInstanceUID=uid("study-b/b-mr/2")) == [uid("study-b/b-mr/2")]
    with pytest.raises(QueryError) as caught:
        uids("STUDY", StudyInstanceUID="")
    assert caught.value.status == 0xA900
    with pytest.raises(QueryError):
        uids("STUDY", StudyInstanceUID="1.2.*")
