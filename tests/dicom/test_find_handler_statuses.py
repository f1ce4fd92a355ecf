"""The C-FIND / C-MOVE / C-GET handlers' failure statuses that a peer cannot provoke on purpose
(the index database failing, an unexpected error, an undecodable identifier, a C-CANCEL, more
than 65535 instances to retrieve).

These call the handlers of `scp_query.py` directly with a stand-in for pynetdicom's event (the
calling AE, the request, the identifier); everything behind them is real. The statuses peers do
provoke are tested over the network: test_find_findscu.py, test_move_movescu.py, test_get_getscu.py.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace

import pytest
from django.db import OperationalError
from pydicom.dataset import Dataset

from integrations.dicom import query, scp_query

pytestmark = pytest.mark.django_db

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


def event(
    sop_class: str, identifier: Dataset | Exception, *, cancelled: bool = False, destination: str = ""
) -> SimpleNamespace:
    class Event(SimpleNamespace):
        @property
        def identifier(self) -> Dataset:
            if isinstance(identifier, Exception):
                raise identifier
            return identifier

    return Event(
        assoc=SimpleNamespace(
            requestor=SimpleNamespace(ae_title="UNITTEST"),
            acceptor=SimpleNamespace(sop_class_extended={}),  # no extended negotiation accepted
            accepted_contexts=[],
            dul=SimpleNamespace(to_provider_queue=queue.Queue()),  # nothing waiting to be sent
            is_established=True,
        ),
        request=SimpleNamespace(AffectedSOPClassUID=sop_class),
        is_cancelled=cancelled,
        move_destination=destination,
    )


def study_query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    return ds


def test_database_failure_is_out_of_resources(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(query, "find", broken)
    ((status, identifier),) = list(scp_query.handle_find(event(STUDY_ROOT_FIND, study_query())))
    assert status.Status == 0xA700
    assert status.ErrorComment.startswith("Out of resources: index unavailable")
    assert identifier is None


def test_unexpected_error_is_unable_to_process(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(query, "find", broken)
    ((status, _),) = list(scp_query.handle_find(event(STUDY_ROOT_FIND, study_query())))
    assert status.Status == 0xC000
    assert "KeyError" in status.ErrorComment


def test_undecodable_identifier() -> None:
    ((status, _),) = list(scp_query.handle_find(event(STUDY_ROOT_FIND, ValueError("bad VR"))))
    assert status.Status == 0xC000
    assert status.ErrorComment == "cannot decode the identifier: bad VR"


def test_cancel_before_the_first_match(monkeypatch) -> None:
    monkeypatch.setattr(query, "find", lambda *args, **kwargs: iter([Dataset()]))
    responses = list(scp_query.handle_find(event(STUDY_ROOT_FIND, study_query(), cancelled=True)))
    assert responses == [(0xFE00, None)]


def test_success_after_the_matches(monkeypatch) -> None:
    match = Dataset()
    match.StudyInstanceUID = "1.2.3"
    monkeypatch.setattr(query, "find", lambda *args, **kwargs: iter([match]))
    responses = list(scp_query.handle_find(event(STUDY_ROOT_FIND, study_query())))
    assert responses == [(0xFF00, match), (0x0000, None)]


def test_get_refusal_is_one_sub_operation_then_the_status() -> None:
    bad = Dataset()
    bad.QueryRetrieveLevel = "FRAME"
    responses = list(scp_query.handle_get(event(STUDY_ROOT_GET, bad)))
    assert responses[0] == 1
    status, _ = responses[1]
    assert status.Status == 0xA900


def test_move_to_unknown_destination_yields_no_address() -> None:
    responses = list(scp_query.handle_move(event(STUDY_ROOT_MOVE, study_query(), destination="NOWHERE")))
    assert responses == [(None, None)]  # pynetdicom answers 0xA801 Move destination unknown


def _move_destination() -> None:
    from integrations.dicom.models import RemoteAE

    RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=104, allow_move=True)


def study_retrieve() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1055.7"
    return ds


def test_move_database_failure_is_refused_before_any_address(monkeypatch) -> None:
    _move_destination()

    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(query, "instances_to_retrieve", broken)
    plan = scp_query.plan_move(event(STUDY_ROOT_MOVE, study_retrieve(), destination="DEST"))
    assert plan.refusal is not None
    assert plan.refusal.status == 0xA700  # Out of resources
    assert plan.items == []
    # The handler alone (without NodeQueryRetrieveService) never yields an address for it either.
    (first,) = list(scp_query.handle_move(event(STUDY_ROOT_MOVE, study_retrieve(), destination="DEST")))
    assert first.Status == 0xA700
    assert first.ErrorComment.startswith("Out of resources: index unavailable")


def test_move_of_more_than_65535_instances_is_refused_before_any_address(monkeypatch) -> None:
    from integrations.dicom.retrieve import StoredInstance

    _move_destination()
    too_many = [StoredInstance("1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "k")] * 65536
    monkeypatch.setattr(scp_query.retrieve, "stored_instances", lambda queryset: too_many)
    plan = scp_query.plan_move(event(STUDY_ROOT_MOVE, study_retrieve(), destination="DEST"))
    assert plan.refusal is not None
    assert plan.refusal.status == 0xA701  # Out of resources: unable to calculate number of matches
    assert "65536 instances match" in plan.refusal.comment
