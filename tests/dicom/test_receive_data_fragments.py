"""The DUL's fast path for data set fragments (`receive._write_data_fragments`) appends exactly the
fragments of a P-DATA-TF PDU, in order, and leaves every other PDU to pynetdicom.

The byte-exact storing of whole instances over the network (tests/dicom/test_store_raw.py,
test_store_storescu.py) runs through this path for every PDU but the first and last of each data
set. PDUs with several PDVs, a context of another message or a pending earlier event cannot be
produced on demand with a real sender, so these cases use a stand-in for the association's DUL
and DIMSE state (plain objects with the attributes the function reads)."""

from __future__ import annotations

import io
import queue
import struct
from types import SimpleNamespace

from integrations.dicom import receive


class _StagedFile:
    """What pynetdicom's staged data set file offers: write, and `.file.flush()`."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.flushes = 0
        self.file = self

    def write(self, data) -> int:
        return self.buffer.write(bytes(data))

    def flush(self) -> None:
        self.flushes += 1


def _dul(staged: _StagedFile | None, *, context_id: int = 1, state: str = "Sta6", pending: int = 0):
    events: queue.Queue = queue.Queue()
    for _ in range(pending):
        events.put("Evt10")
    message = SimpleNamespace(_data_set_file=staged, context_id=context_id)
    return SimpleNamespace(
        assoc=SimpleNamespace(dimse=SimpleNamespace(message=message)),
        state_machine=SimpleNamespace(current_state=state),
        event_queue=events,
    )


def _pdu(*pdvs: tuple[int, int, bytes]) -> bytearray:
    items = b"".join(
        struct.pack(">LBB", len(data) + 2, context, control) + data for context, control, data in pdvs
    )
    return bytearray(struct.pack(">BBL", 0x04, 0, len(items)) + items)


def test_several_data_fragments_of_one_pdu_are_appended_in_order() -> None:
    staged = _StagedFile()
    assert receive._write_data_fragments(_dul(staged), _pdu((1, 0x00, b"abc"), (1, 0x00, b"defg")))
    assert staged.buffer.getvalue() == b"abcdefg"
    assert staged.flushes == 1


def test_a_last_fragment_or_a_command_goes_to_pynetdicom() -> None:
    for control in (0x02, 0x01, 0x03):
        staged = _StagedFile()
        assert not receive._write_data_fragments(_dul(staged), _pdu((1, 0x00, b"abc"), (1, control, b"x")))
        assert staged.buffer.getvalue() == b""


def test_a_fragment_of_another_context_goes_to_pynetdicom() -> None:
    staged = _StagedFile()
    assert not receive._write_data_fragments(_dul(staged, context_id=3), _pdu((1, 0x00, b"abc")))
    assert staged.buffer.getvalue() == b""


def test_nothing_is_written_while_an_earlier_event_waits() -> None:
    staged = _StagedFile()
    assert not receive._write_data_fragments(_dul(staged, pending=1), _pdu((1, 0x00, b"abc")))
    assert staged.buffer.getvalue() == b""


def test_no_c_store_in_progress_or_not_established_goes_to_pynetdicom() -> None:
    assert not receive._write_data_fragments(_dul(None), _pdu((1, 0x00, b"abc")))
    staged = _StagedFile()
    assert not receive._write_data_fragments(_dul(staged, state="Sta7"), _pdu((1, 0x00, b"abc")))
    assert staged.buffer.getvalue() == b""


def test_a_malformed_item_length_goes_to_pynetdicom() -> None:
    staged = _StagedFile()
    pdu = _pdu((1, 0x00, b"abc"))
    struct.pack_into(">L", pdu, 6, 1000)  # the item claims more than the PDU holds
    assert not receive._write_data_fragments(_dul(staged), pdu)
    assert staged.buffer.getvalue() == b""
