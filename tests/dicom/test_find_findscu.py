"""C-FIND against the running node with DCMTK findscu: a real modality-side client over the network.

The node is its own process (`manage.py dicom_scp`: the session's `dicom_node`, tests/dicom/conftest.py)
on the test database; the catalogue is stored (committed) through the ingest service first.
Each test runs findscu with `-X` (responses extracted to files) and checks the matches: wildcard,
list, range and universal matching at the PATIENT, STUDY, SERIES and IMAGE levels in the Patient
Root and Study Root models, counts, C-CANCEL, and the failures a client sees (an invalid level,
a missing unique key, a calling AE without allow_find) with their error comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.dicom.conftest import DicomNode, run_dcmtk
from tests.dicom.qr_support import read_responses, uid


@pytest.fixture(scope="module")
def nofind_peer(catalogue: None, django_db_blocker) -> None:
    """NOFIND: a configured peer that may store but not query (committed with the catalogue,
    which clears it again with the index)."""
    from integrations.dicom.models import RemoteAE

    with django_db_blocker.unblock():
        RemoteAE.objects.create(
            ae_title="NOFIND", host="127.0.0.1", port=104, allow_find=False, allow_store=True
        )


@pytest.fixture(scope="module")
def node(catalogue: None, nofind_peer: None, dicom_node: DicomNode) -> DicomNode:
    """The node process (`dicom_node`, tests/dicom/conftest.py), once the data is committed."""
    return dicom_node


@dataclass
class Find:
    output: str
    responses: list[Dataset]

    @property
    def final_status(self) -> str:
        """The status of the last C-FIND response, as findscu -d prints it ("0x0000: Success")."""
        statuses = re.findall(r"DIMSE Status\s*:\s*(0x[0-9a-f]{4}[^\n]*)", self.output)
        return statuses[-1].strip() if statuses else ""

    def values(self, keyword: str) -> list[str]:
        return sorted(str(ds.get(keyword) or "") for ds in self.responses)


def findscu(
    node: DicomNode, folder: Path, *keys: str, model: str = "-S", aet: str = "FINDSCU", extra: tuple = ()
) -> Find:
    folder.mkdir(parents=True, exist_ok=True)
    args = [
        "-d",
        model,
        "-aet",
        aet,
        "-aec",
        node.aet,
        "-X",
        "-od",
        str(folder),
        *extra,
        node.host,
        str(node.port),
    ]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk("findscu", *args)
    return Find(result.stdout + result.stderr, read_responses(folder))


@pytest.fixture
def find(node: DicomNode, tmp_path: Path):
    counter = iter(range(1000))

    def run(*keys: str, **kwargs) -> Find:
        return findscu(node, tmp_path / f"q{next(counter)}", *keys, **kwargs)

    return run


# --- Matching at each level -------------------------------------------------------------------------


def test_patient_root_patient_level_name_wildcard(find) -> None:
    result = find(
        "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=doe*", "PatientBirthDate", model="-P"
    )
    assert result.final_status.startswith("0x0000"), result.output
    assert result.values("PatientID") == ["PAT001", "PAT002"]
    john = next(ds for ds in result.responses if ds.PatientID == "PAT001")
    assert john.PatientBirthDate == "19700101"
    assert john.QueryRetrieveLevel == "PATIENT"
    assert john.RetrieveAETitle == "BTTHEALTH"
    # Only what was asked (and the three keys every response carries).
    assert set(john.dir()) == {
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
        "SpecificCharacterSet",
    }


def test_patient_root_study_level_with_patient_id(find) -> None:
    result = find("QueryRetrieveLevel=STUDY", "PatientID=PAT001", "StudyInstanceUID", "StudyDate", model="-P")
    assert result.final_status.startswith("0x0000"), result.output
    assert result.values("StudyInstanceUID") == sorted([uid("study-a"), uid("study-b")])


def test_study_root_date_range_and_counts(find) -> None:
    result = find(
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "StudyDate=20200101-20201231",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "AccessionNumber",
    )
    assert result.final_status.startswith("0x0000"), result.output
    by_accession = {ds.AccessionNumber: ds for ds in result.responses}
    assert set(by_accession) == {"ACC-100", "ACC-300"}
    assert list(by_accession["ACC-100"].ModalitiesInStudy) == ["CT", "SR"]
    assert int(by_accession["ACC-100"].NumberOfStudyRelatedSeries) == 2
    assert int(by_accession["ACC-100"].NumberOfStudyRelatedInstances) == 4
    assert int(by_accession["ACC-300"].NumberOfStudyRelatedInstances) == 3


@pytest.mark.parametrize(
    ("date", "accessions"),
    [
        ("-20200115", ["ACC-100", "ACC-400"]),
        ("20201231-", ["ACC-200", "ACC-300"]),
        ("20190301", ["ACC-400"]),
    ],
)
def test_study_date_open_ranges_and_single_date(find, date: str, accessions: list[str]) -> None:
    result = find("QueryRetrieveLevel=STUDY", "StudyInstanceUID", f"StudyDate={date}", "AccessionNumber")
    assert result.values("AccessionNumber") == accessions


def test_study_uid_list_and_question_mark_wildcard(find) -> None:
    uids = f"{uid('study-b')}\\{uid('study-d')}"
    result = find("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids}", "PatientName")
    assert result.values("StudyInstanceUID") == sorted([uid("study-b"), uid("study-d")])
    result = find(
        "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "AccessionNumber=ACC-?00", "PatientName=*JANE"
    )
    assert result.values("AccessionNumber") == ["ACC-300"]


def test_utf8_names_over_the_wire(find) -> None:
    result = find("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName=M*")
    (response,) = result.responses
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert str(response.PatientName) == "Müller^Jürgen"


def test_series_level_modality_and_counts(find) -> None:
    result = find(
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={uid('study-c')}",
        "SeriesInstanceUID",
        "Modality=CT",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    )
    assert result.final_status.startswith("0x0000"), result.output
    counts = {int(ds.SeriesNumber): int(ds.NumberOfSeriesRelatedInstances) for ds in result.responses}
    assert counts == {1: 2, 2: 1}


def test_image_level_instance_list(find) -> None:
    wanted = f"{uid('study-a/a-ct/2')}\\{uid('study-a/a-ct/3')}"
    result = find(
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={uid('study-a')}",
        f"SeriesInstanceUID={uid('study-a/a-ct')}",
        f"SOPInstanceUID={wanted}",
        "InstanceNumber",
        "SOPClassUID",
        "Rows",
    )
    assert result.final_status.startswith("0x0000"), result.output
    assert result.values("InstanceNumber") == ["2", "3"]
    assert all(ds.Rows == 8 for ds in result.responses)


@pytest.fixture(scope="module")
def many_patients(catalogue: None, django_db_blocker) -> Iterator[int]:
    """3000 more patients (index rows only, committed: module scope keeps them out of the tests'
    own transactions), removed after the module."""
    from integrations.dicom.models import DicomPatient

    count = 3000
    with django_db_blocker.unblock():
        DicomPatient.objects.bulk_create(
            DicomPatient(patient_id=f"BULK{n:05d}", patient_name=f"Bulk^{n}") for n in range(count)
        )
        yield count
        DicomPatient.objects.filter(patient_id__startswith="BULK").delete()


def test_cancel_stops_the_matches(find, many_patients: int) -> None:
    result = find(
        "QueryRetrieveLevel=PATIENT", "PatientID=BULK*", "PatientName", model="-P", extra=("--cancel", "1")
    )
    assert result.final_status.startswith("0xfe00"), result.output  # Cancel
    assert 1 <= len(result.responses) < many_patients


def test_thousands_of_matches_stream(find, many_patients: int) -> None:
    result = find(
        "QueryRetrieveLevel=PATIENT", "PatientID=BULK*", "NumberOfPatientRelatedStudies", model="-P"
    )
    assert result.final_status.startswith("0x0000"), result.output[-2000:]
    assert len(result.responses) == many_patients
    assert {str(ds.NumberOfPatientRelatedStudies) for ds in result.responses} == {"0"}


# --- What a client sees when the node refuses --------------------------------------------------------


def test_invalid_level_is_refused_with_a_comment(find) -> None:
    result = find("QueryRetrieveLevel=FRAME", "StudyInstanceUID")
    assert result.responses == []
    assert "0xa900" in result.output.lower()
    assert "QueryRetrieveLevel 'FRAME' is invalid for Study Root" in result.output


def test_patient_level_in_study_root_is_refused(find) -> None:
    result = find("QueryRetrieveLevel=PATIENT", "PatientID")
    assert "0xa900" in result.output.lower()
    assert "invalid for Study Root" in result.output


def test_missing_unique_key_of_an_upper_level(find) -> None:
    result = find("QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={uid('study-a')}", "SOPInstanceUID")
    assert "0xa900" in result.output.lower()
    assert "IMAGE level query needs a single SeriesInstanceUID" in result.output


def test_calling_ae_without_allow_find_is_refused_at_association(find, node: DicomNode) -> None:
    # NOFIND is a configured peer with allow_store only: an association that proposes nothing
    # but Query/Retrieve is refused before any C-FIND (scp.py's association policy).
    refused = find("QueryRetrieveLevel=STUDY", "StudyInstanceUID", aet="NOFIND")
    assert refused.responses == []
    assert "Association Request Failed" in refused.output or "Association Rejected" in refused.output
    assert "association from NOFIND" in node.log()


def test_calling_ae_without_allow_find_gets_a_refusal_status(node: DicomNode) -> None:
    """An association NOFIND may make (it proposes Verification too): the C-FIND itself is refused
    with 0xC001 and a comment. The client here is pynetdicom."""
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

    ae = AE(ae_title="NOFIND")
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(node.host, node.port, ae_title=node.aet)
    assert assoc.is_established
    try:
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.StudyInstanceUID = ""
        responses = list(assoc.send_c_find(request, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    ((status, identifier),) = responses
    assert status.Status == 0xC001
    assert status.ErrorComment == "AE NOFIND is not permitted to C-FIND"
    assert identifier is None
