"""C-FIND combined date-time range matching (PS3.4 C.2.2.2.5), offered through C-FIND SOP Class
Extended Negotiation (byte 2).

Without it, Study Date and Study Time ranges are matched each on its own: 20200101-20201231 with
1200-2300 is "in 2020, and between noon and 23:00 on whatever day". With it, the pair is one
range: from 2020-01-01 12:00 to 2020-12-31 23:00:59. The catalogue (tests/dicom/qr_support.py)
has study A on 2020-01-15 at 10:15 and study C on 2020-12-31 at 23:59:59, so the first reading
finds neither and the second finds A. Checked as a service and over the network against the node
process, with a pynetdicom requestor that asks for the option (and one that does not).
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from integrations.dicom import query
from integrations.dicom.query import STUDY_ROOT
from tests.dicom.conftest import DicomNode
from tests.dicom.qr_support import uid

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")


def identifier(date: str, time: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = None
    ds.StudyDate = date
    ds.StudyTime = time
    return ds


def studies(date: str, time: str, *, combined: bool) -> list[str]:
    results = query.find(
        identifier(date, time), STUDY_ROOT, retrieve_aet="BTTHEALTH", combined_datetime=combined
    )
    return sorted(str(ds.StudyInstanceUID) for ds in results)


A, B, C, D = (uid(f"study-{name}") for name in "abcd")


@pytest.mark.django_db
@pytest.mark.usefixtures("catalogue")
@pytest.mark.parametrize(
    ("date", "time", "separate", "combined"),
    [
        ("20200101-20201231", "1200-2300", [], [A]),
        ("20200101-20201231", "1200-", [C], sorted([A, C])),
        ("20200115-20210610", "-1100", [A], sorted([A, C])),
        ("2020-2021", "1500-1430", [], sorted([A, B, C])),  # partial dates: the whole years
    ],
)
def test_date_and_time_ranges_as_one_range_when_combined(
    date: str, time: str, separate: list[str], combined: list[str]
) -> None:
    assert studies(date, time, combined=False) == sorted(separate)
    assert studies(date, time, combined=True) == combined


@pytest.mark.django_db
@pytest.mark.usefixtures("catalogue")
def test_a_single_date_or_time_is_matched_on_its_own_even_when_combined() -> None:
    # Combined matching applies to a pair of ranges; a single value keeps its own meaning.
    assert studies("20200115", "1000-1100", combined=True) == [A]
    assert studies("20200101-20201231", "101500", combined=True) == [A]


def find_over_the_network(node: DicomNode, *, ask_for_combined: bool) -> tuple[bytes, list[str]]:
    """A C-FIND of 20200101-20201231 / 1200-2300; the node's extended negotiation reply (b'' for
    none) and the matched studies."""
    ae = AE(ae_title="DTFINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    negotiation = []
    if ask_for_combined:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = StudyRootQueryRetrieveInformationModelFind
        # Byte 1 relational queries, byte 2 combined date-time matching, byte 3 fuzzy person
        # names, byte 4 timezone query adjustment: all asked for, only byte 2 is offered.
        item.service_class_application_information = b"\x01\x01\x01\x01"
        negotiation.append(item)
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, ext_neg=negotiation)
    assert assoc.is_established
    try:
        reply = assoc.acceptor.sop_class_extended.get(StudyRootQueryRetrieveInformationModelFind, b"")
        responses = list(
            assoc.send_c_find(
                identifier("20200101-20201231", "1200-2300"), StudyRootQueryRetrieveInformationModelFind
            )
        )
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0000
    return reply, sorted(str(ds.StudyInstanceUID) for status, ds in responses if status.Status == 0xFF00)


@pytest.mark.django_db(transaction=True)
def test_the_node_offers_combined_matching_in_extended_negotiation(
    catalogue: None, dicom_node: DicomNode
) -> None:
    reply, matched = find_over_the_network(dicom_node, ask_for_combined=True)
    assert reply == b"\x00\x01\x00\x00"
    assert matched == [A]
    reply, matched = find_over_the_network(dicom_node, ask_for_combined=False)
    assert reply == b""
    assert matched == []
