"""The DUL's path for a C-STORE-RQ (`receive._begin_store`, `receive._complete_store`,
`receive.decode_c_store_rq`) makes of the PDUs pynetdicom encodes exactly what pynetdicom's DIMSE
layer makes of them - the same C-STORE primitive queued for the association thread, the same
staged file - and leaves every command set it does not fully understand to pynetdicom.

Whole instances stored over the network through this path, byte for byte, with real senders:
tests/dicom/test_store_raw.py, test_store_storescu.py (the node runs as its own process there).
Here the PDUs come from pynetdicom's own encoder, and the association's DUL and DIMSE state is a
stand-in (plain objects with the attributes the functions read), as in
test_receive_data_fragments.py: an in-flight message cannot be paused on demand with a real peer."""

from __future__ import annotations

import queue
import struct
import tempfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import _config, dimse_messages, evt
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

from integrations.dicom import receive, scp

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def _request(**overrides) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = overrides.get("message_id", 7)
    primitive.AffectedSOPClassUID = overrides.get("sop_class", CTImageStorage)
    primitive.AffectedSOPInstanceUID = overrides.get("sop_instance", SOP_INSTANCE)
    primitive.Priority = overrides.get("priority", 2)
    if "move_originator" in overrides:
        primitive.MoveOriginatorApplicationEntityTitle = overrides["move_originator"]
        primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = BytesIO(overrides.get("data", b"\x08\x00\x16\x00" + bytes(300)))
    return primitive


def _pdus(primitive, context_id: int = 1, max_pdu: int = 256) -> list[bytearray]:
    """The P-DATA-TF PDUs pynetdicom sends for `primitive` (one PDV each, as DCMTK sends them)."""
    message = (C_STORE_RQ if isinstance(primitive, C_STORE) else C_ECHO_RQ)()
    message.primitive_to_message(primitive)
    pdus = []
    for p_data in message.encode_msg(context_id, max_pdu):
        for pdv_context, data in p_data.presentation_data_value_list:
            item = struct.pack(">LB", len(data) + 1, pdv_context) + data
            pdus.append(bytearray(struct.pack(">BBL", 0x04, 0, len(item)) + item))
    return pdus


class _Assoc(SimpleNamespace):
    def get_handlers(self, event):
        return self.handlers.get(event, [])


def _dul(handlers: dict | None = None):
    return SimpleNamespace(
        assoc=_Assoc(
            dimse=SimpleNamespace(message=None, msg_queue=queue.Queue()),
            _accepted_cx={1: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])},
            handlers=handlers or {},
        ),
        state_machine=SimpleNamespace(current_state="Sta6"),
        event_queue=queue.Queue(),
    )


@pytest.fixture(autouse=True)
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data sets staged as the SCP stages them (`scp.StagedFile`), in a folder of this test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", scp._staging_file)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    return tmp_path


def _through_pynetdicom(pdus: list[bytearray]):
    """What pynetdicom's DIMSE layer makes of the PDUs: (primitive, staged file's bytes)."""
    assoc = _dul().assoc
    message = DIMSEMessage()
    for pdu in pdus:
        data = bytes(pdu[11:])
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[pdu[10], data]]
        if message.decode_msg(primitive, assoc):
            break
    result = message.message_to_primitive()
    result._dataset_file.close()
    return result, Path(result._dataset_file.name).read_bytes()


def _through_the_fast_path(pdus: list[bytearray], dul=None):
    """The PDUs through `read_pdu`'s fast paths, in its order: (primitive queued, staged bytes)."""
    dul = dul or _dul()
    for pdu in pdus:
        assert (
            receive._write_data_fragments(dul, pdu)
            or receive._complete_store(dul, pdu)
            or receive._begin_store(dul, pdu)
        ), "a PDU was left to pynetdicom"
    context_id, result = dul.assoc.dimse.msg_queue.get_nowait()
    assert context_id == 1
    assert dul.assoc.dimse.message is None  # ready for the next message
    result._dataset_file.close()
    return result, Path(result._dataset_file.name).read_bytes()


def _fields(primitive: C_STORE) -> dict:
    return {
        name: getattr(primitive, name)
        for name in (
            "MessageID",
            "AffectedSOPClassUID",
            "AffectedSOPInstanceUID",
            "Priority",
            "MoveOriginatorApplicationEntityTitle",
            "MoveOriginatorMessageID",
            "_context_id",
            "is_valid_request",
        )
    }


@pytest.mark.parametrize(
    "request_",
    [
        _request(),
        _request(message_id=65535, priority=0, sop_instance="1.2.3"),
        _request(priority=1, sop_instance="2.25." + "9" * 59),  # 64 characters
        _request(data=b"\x08\x00\x16\x00" + bytes(5)),  # the data set in one PDU
    ],
)
def test_the_fast_path_queues_what_pynetdicom_queues(request_: C_STORE) -> None:
    pdus = _pdus(request_)
    expected, expected_file = _through_pynetdicom(pdus)
    found, found_file = _through_the_fast_path(pdus)
    assert type(found) is C_STORE
    assert _fields(found) == _fields(expected)
    assert type(found.AffectedSOPInstanceUID) is type(expected.AffectedSOPInstanceUID)
    assert found.DataSet.getvalue() == expected.DataSet.getvalue() == b""
    assert found._dataset_path == Path(found._dataset_file.name)
    assert found_file == expected_file
    assert found_file.startswith(b"\x00" * 128 + b"DICM")
    assert found_file.endswith(request_.DataSet.getvalue())


def test_decode_gives_the_request_values() -> None:
    command = bytes(_pdus(_request(message_id=300, priority=1))[0][12:])
    assert receive.decode_c_store_rq(command) == (300, CTImageStorage, SOP_INSTANCE, 1)


def _command(pdu: bytearray) -> bytes:
    return bytes(pdu[12:])


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, element, len(value)) + value


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("move originator", _command(_pdus(_request(move_originator="MOVER"))[0])),
        ("leading zero in a UID", _command(_pdus(_request(sop_instance="1.02.3"))[0])),
        ("letters in a UID", _command(_pdus(_request(sop_instance="1.2.abc"))[0])),
        ("empty", b""),
        ("truncated", _command(_pdus(_request())[0])[:-3]),
        ("an element more", _command(_pdus(_request())[0]) + _element(0x1031, b"\x01\x00")),
    ],
)
def test_other_command_sets_are_left_to_pynetdicom(name: str, command: bytes) -> None:
    assert receive.decode_c_store_rq(command) is None


def test_wrong_group_length_priority_or_no_data_set_are_left_to_pynetdicom() -> None:
    good = _command(_pdus(_request())[0])
    assert receive.decode_c_store_rq(good) is not None
    wrong_length = bytearray(good)
    struct.pack_into("<L", wrong_length, 8, len(good))
    assert receive.decode_c_store_rq(bytes(wrong_length)) is None
    offset = good.index(struct.pack("<HHL", 0, 0x0700, 2)) + 8
    priority = bytearray(good)
    struct.pack_into("<H", priority, offset, 3)
    assert receive.decode_c_store_rq(bytes(priority)) is None
    offset = good.index(struct.pack("<HHL", 0, 0x0800, 2)) + 8
    no_data_set = bytearray(good)
    struct.pack_into("<H", no_data_set, offset, 0x0101)
    assert receive.decode_c_store_rq(bytes(no_data_set)) is None


def test_a_command_set_in_several_fragments_is_left_to_pynetdicom(staging: Path) -> None:
    pdus = _pdus(_request(), max_pdu=64)
    assert pdus[0][11] == 0x01  # command, not the last fragment
    dul = _dul()
    assert not receive._begin_store(dul, pdus[0])
    assert dul.assoc.dimse.message is None
    assert list(staging.iterdir()) == []


def test_a_c_echo_is_left_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    dul = _dul()
    assert not receive._begin_store(dul, _pdus(echo)[0])
    assert dul.assoc.dimse.message is None


def test_nothing_is_taken_while_a_notification_handler_is_bound_or_an_event_waits(staging: Path) -> None:
    pdus = _pdus(_request())
    for event in (evt.EVT_DIMSE_RECV, evt.EVT_PDU_RECV, evt.EVT_DATA_RECV):
        dul = _dul({event: [(print, None)]})
        assert not receive._begin_store(dul, pdus[0])
        assert dul.assoc.dimse.message is None
    dul = _dul()
    dul.event_queue.put("Evt10")
    assert not receive._begin_store(dul, pdus[0])
    dul = _dul()
    dul.state_machine.current_state = "Sta7"
    assert not receive._begin_store(dul, pdus[0])
    assert list(staging.iterdir()) == []  # nothing staged either


def test_a_context_that_was_not_accepted_is_left_to_pynetdicom(staging: Path) -> None:
    dul = _dul()
    assert not receive._begin_store(dul, _pdus(_request(), context_id=3)[0])
    assert dul.assoc.dimse.message is None
    assert list(staging.iterdir()) == []


def test_a_message_begun_on_the_fast_path_completes_through_pynetdicom() -> None:
    """A last fragment that does not fit the fast path (here: in a PDU with another PDV) goes
    through pynetdicom's DIMSE code with the `ReceivedStore` message: the same primitive."""
    pdus = _pdus(_request())
    expected, expected_file = _through_pynetdicom(pdus)
    dul = _dul()
    assert receive._begin_store(dul, pdus[0])
    for pdu in pdus[1:-1]:
        assert receive._write_data_fragments(dul, pdu)
    message = dul.assoc.dimse.message
    assert isinstance(message, receive.ReceivedStore)
    assert not receive._complete_store(dul, pdus[-1] + pdus[-1][6:])  # two PDVs: not taken
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[1, bytes(pdus[-1][11:])]]
    assert message.decode_msg(primitive, dul.assoc)
    found = message.message_to_primitive()
    found._dataset_file.close()
    assert _fields(found) == _fields(expected)
    assert Path(found._dataset_file.name).read_bytes() == expected_file
    # And its command set, decoded by pydicom on demand, is the request's.
    assert message.command_set.AffectedSOPInstanceUID == SOP_INSTANCE
    assert message.command_set.MessageID == 7


def test_a_last_fragment_of_another_context_is_left_to_pynetdicom() -> None:
    pdus = _pdus(_request())
    dul = _dul()
    assert receive._begin_store(dul, pdus[0])
    last = bytearray(pdus[-1])
    last[10] = 5  # another presentation context
    assert not receive._complete_store(dul, last)
    assert dul.assoc.dimse.msg_queue.empty()


def test_a_staged_file_is_a_new_private_file_written_as_given(staging: Path) -> None:
    """`scp.StagedFile` (in place of tempfile.NamedTemporaryFile): a new file in the staging
    folder each time, only its owner may read it, every byte written as given."""
    first = scp._staging_file(delete=False, mode="wb", suffix=".dcm")
    second = scp._staging_file(delete=False, mode="wb", suffix=".dcm")
    assert first.name != second.name
    assert Path(first.name).parent == staging
    assert first.name.endswith(".dcm")
    assert Path(first.name).stat().st_mode & 0o777 == 0o600
    assert first.write(b"\x00" * 128 + b"DICM") == 132
    assert first.write(memoryview(bytearray(b"abcdef"))[2:5]) == 3
    first.file.flush()  # what pynetdicom calls after each fragment; nothing is buffered
    assert Path(first.name).read_bytes() == b"\x00" * 128 + b"DICMcde"
    first.close()
    first.close()  # as pynetdicom may close it after the handler did
    assert first.closed
    second.close()
