"""C-FIND sequence matching (PS3.4 C.2.2.2.6), as a service (`integrations.dicom.query.find`).

A sequence key is a sequence with one item of item keys: an entity matches when one item of its
sequence matches every item key (single values, wildcards, lists); the response holds the
matching items, each with only the requested item attributes. A sequence key without item keys
(no item, or an empty item) is universal: every entity matches and the whole sequence comes back.

Two studies are stored through the real ingest service: study A with the Procedure Code
Sequence (study level) CTCHEST and a series whose Request Attributes Sequence (series level) has
two items (SPS-A1 / RP-A1 and SPS-A2 / RP-A2); study B with MRHEAD and one item (SPS-B1 / RP-B1).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from integrations.dicom import query
from integrations.dicom.query import STUDY_ROOT
from tests.dicom.qr_support import make_image, store, uid

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")]

REQUESTS = {"seq-a": [("SPS-A1", "RP-A1"), ("SPS-A2", "RP-A2")], "seq-b": [("SPS-B1", "RP-B1")]}
PROCEDURES = {"seq-a": ("CTCHEST", "CT Chest"), "seq-b": ("MRHEAD", "MR Head")}


def item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, None if value == "" else value)
    return ds


@pytest.fixture(scope="module", autouse=True)
def studies(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[None]:
    from tests.dicom.qr_support_db import clear_index, quiet_study_tasks

    folder = tmp_path_factory.mktemp("sequence-studies")
    with django_db_blocker.unblock():
        with quiet_study_tasks():
            clear_index()
            for study in ("seq-a", "seq-b"):
                image = make_image(
                    patient_id="SEQ", patient_name="Seq^Test", study=study, series="s1", instance=1
                )
                code, meaning = PROCEDURES[study]
                image.ProcedureCodeSequence = Sequence(
                    [item(CodeValue=code, CodingSchemeDesignator="LOCAL", CodeMeaning=meaning)]
                )
                image.RequestAttributesSequence = Sequence(
                    [item(ScheduledProcedureStepID=s, RequestedProcedureID=r) for s, r in REQUESTS[study]]
                )
                store(image, folder)
        yield
        clear_index()


def find(level: str, **keys: object) -> list[Dataset]:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, None if value == "" else value)
    return list(query.find(ds, STUDY_ROOT, retrieve_aet="BTTHEALTH"))


def series_of_study_a(**keys: object) -> list[Dataset]:
    return find("SERIES", StudyInstanceUID=uid("seq-a"), SeriesInstanceUID="", **keys)


def test_an_item_key_selects_the_entities_with_a_matching_item() -> None:
    (study,) = find(
        "STUDY", StudyInstanceUID="", ProcedureCodeSequence=[item(CodeValue="CT*", CodeMeaning="")]
    )
    assert study.StudyInstanceUID == uid("seq-a")
    (returned,) = study.ProcedureCodeSequence
    # Only the requested item attributes: CodingSchemeDesignator was not asked for.
    assert set(returned.dir()) == {"CodeValue", "CodeMeaning"}
    assert (returned.CodeValue, returned.CodeMeaning) == ("CTCHEST", "CT Chest")


def test_only_the_matching_items_come_back() -> None:
    (series,) = series_of_study_a(
        RequestAttributesSequence=[item(ScheduledProcedureStepID="SPS-A2", RequestedProcedureID="")]
    )
    (returned,) = series.RequestAttributesSequence
    assert (returned.ScheduledProcedureStepID, returned.RequestedProcedureID) == ("SPS-A2", "RP-A2")


def test_every_item_key_must_match_in_the_same_item() -> None:
    # SPS-A1 and RP-A2 exist in study A, but in different items.
    assert (
        series_of_study_a(
            RequestAttributesSequence=[item(ScheduledProcedureStepID="SPS-A1", RequestedProcedureID="RP-A2")]
        )
        == []
    )
    (series,) = series_of_study_a(
        RequestAttributesSequence=[item(ScheduledProcedureStepID="SPS-A1", RequestedProcedureID="RP-A1")]
    )
    assert len(series.RequestAttributesSequence) == 1


def test_item_keys_take_wildcards_and_value_lists() -> None:
    results = find("STUDY", StudyInstanceUID="", ProcedureCodeSequence=[item(CodeValue=["MRHEAD", "XRAY"])])
    assert [ds.StudyInstanceUID for ds in results] == [uid("seq-b")]
    (series,) = series_of_study_a(RequestAttributesSequence=[item(ScheduledProcedureStepID="SPS-A?")])
    assert [i.ScheduledProcedureStepID for i in series.RequestAttributesSequence] == ["SPS-A1", "SPS-A2"]


def test_universal_item_keys_return_those_attributes_of_every_item() -> None:
    (series,) = series_of_study_a(RequestAttributesSequence=[item(RequestedProcedureID="")])
    assert [i.RequestedProcedureID for i in series.RequestAttributesSequence] == ["RP-A1", "RP-A2"]
    assert all(set(i.dir()) == {"RequestedProcedureID"} for i in series.RequestAttributesSequence)


@pytest.mark.parametrize("key", [[], [Dataset()]], ids=["no item", "an empty item"])
def test_a_sequence_key_without_item_keys_is_universal_and_returns_the_whole_sequence(key: list) -> None:
    results = find("STUDY", StudyInstanceUID="", ProcedureCodeSequence=key)
    by_study = {ds.StudyInstanceUID: ds for ds in results}
    assert set(by_study) == {uid("seq-a"), uid("seq-b")}
    (procedure,) = by_study[uid("seq-b")].ProcedureCodeSequence
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator, procedure.CodeMeaning) == (
        "MRHEAD",
        "LOCAL",
        "MR Head",
    )


def test_no_matching_item_no_match() -> None:
    assert find("STUDY", StudyInstanceUID="", ProcedureCodeSequence=[item(CodeValue="NONE")]) == []
