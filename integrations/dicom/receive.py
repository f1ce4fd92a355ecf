"""How the node's DUL threads read PDUs: a size guard, and a fast path for data set fragments.

`scp.on_conn_open` makes `read_pdu` each association's `DULServiceProvider._read_pdu_data`.

The fast path: a C-STORE data set arrives as a run of P-DATA-TF PDUs whose PDVs are fragments of
that data set, which pynetdicom decodes into PDU objects, passes through its state machine and
DIMSE layer, and appends to the staged file one fragment at a time. For a PDU that holds only
data set fragments of the C-STORE being received, none of them the last, `read_pdu` appends them
to that file itself, straight from its receive buffer: the same bytes, in the same order, without
the copies and the Python layers (about a third of the node's CPU per instance went there). Every
other PDU - command fragments, a last fragment, anything unusual - takes pynetdicom's path, so
the message completes, and errors are found, exactly as before.

The C-STORE-RQ itself: pynetdicom decodes each command set into a pydicom data set, validates
its UIDs, converts it into a DIMSE primitive with a Python loop over the elements, and runs the
PDUs carrying it and the data set's last fragment through its PDU objects and state machine: a
sixth of the node's CPU per instance. `read_pdu` takes the usual request - the command set in
one PDV of its own, exactly the seven elements a C-STORE-RQ without Move Originator has (group
length, SOP class, command field, message ID, priority, data set type, SOP instance), conformant
UIDs - itself (`decode_c_store_rq`): it stages the data set file with the File Meta Information
as pynetdicom would, and puts a `ReceivedStore` message in place of the one pynetdicom would
build; the PDU with the data set's last fragment then completes it (`_complete_store`), queueing
the same C-STORE primitive for the association thread as pynetdicom's DIMSE layer does. Only
while nothing is bound to the DIMSE/PDU notification events (`_config.LOG_HANDLER_LEVEL` "none",
see `scp.configure_pynetdicom`), which such a path would not trigger. Everything else, and
every PDU that does not fit, goes through pynetdicom as before.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.uid import UID
from pynetdicom import dimse_messages, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

logger = logging.getLogger("integrations.dicom.scp")

# Non-P-DATA PDUs (association request/accept/reject, release, abort) larger than this are
# not DICOM: an A-ASSOCIATE-RQ with 128 contexts and user identity is well below it.
MAX_CONTROL_PDU = 1024 * 1024
_P_DATA_TF = 0x04
_PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_LAST_OR_COMMAND = 0x03  # message control header bits: 0x01 command, 0x02 last fragment


def read_pdu(self: Any) -> None:
    """pynetdicom 3.0's `DULServiceProvider._read_pdu_data`, refusing oversized PDUs.

    pynetdicom reads whatever length a PDU header announces, so one forged header could make it
    buffer gigabytes. This reads the 6-byte header first and aborts the association (Evt19:
    invalid PDU, A-ABORT to the peer) when a P-DATA-TF PDU exceeds the maximum length this node
    offered (`BTT_DICOM_MAX_PDU`, PS3.8 D.1) or another PDU exceeds `MAX_CONTROL_PDU`.
    """
    dul = self
    if getattr(dul, "btt_refused", False):
        # A PDU was refused and A-ABORT sent: discard what else the peer sends and end the
        # connection now, instead of answering every further byte until the ARTIM timer fires.
        with contextlib.suppress(OSError):
            dul.socket.socket.recv(65536)
        dul.event_queue.put("Evt17")
        return
    bytestream = bytearray()
    try:
        bytestream.extend(dul.socket.recv(6))
    except (OSError, TimeoutError):
        dul.event_queue.put("Evt17")  # transport connection closed
        return
    try:
        pdu_type, _, pdu_length = struct.unpack(">BBL", bytestream)
    except struct.error:
        dul.event_queue.put("Evt17")
        return
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        logger.warning(
            "unknown PDU type 0x%02X from %s: aborting the association", pdu_type, dul.assoc.requestor.address
        )
        dul.btt_refused = True
        dul.event_queue.put("Evt19")
        return
    limit = (dul.assoc.acceptor.maximum_length or 0) if pdu_type == _P_DATA_TF else MAX_CONTROL_PDU
    if limit and pdu_length > limit:
        logger.warning(
            "PDU of %d bytes (type 0x%02X) from %s exceeds the %d this node accepts: aborting the association",
            pdu_length,
            pdu_type,
            dul.assoc.requestor.address,
            limit,
        )
        dul.btt_refused = True
        dul.event_queue.put("Evt19")
        return
    # Read the rest straight into one buffer (pynetdicom reads in 4 KiB pieces, a Python loop
    # iteration each: 32 per 128 KiB PDU).
    total = 6 + pdu_length
    header, bytestream = bytestream, bytearray(total)  # zeroed once, never copied again
    bytestream[:6] = header
    view = memoryview(bytestream)
    received = 6
    try:
        raw = dul.socket.socket
        while received < total:
            count = raw.recv_into(view[received:], min(total - received, 1 << 20))
            if not count:
                break
            received += count
    except (OSError, TimeoutError, AttributeError):
        pass
    finally:
        view.release()
    if received != total:
        logger.warning("connection closed in the middle of a PDU (%d of %d bytes)", received, total)
        dul.event_queue.put("Evt17")
        return
    if pdu_type == _P_DATA_TF and (
        _write_data_fragments(dul, bytestream)
        or _complete_store(dul, bytestream)
        or _begin_store(dul, bytestream)
    ):
        return
    try:
        pdu, event = dul._decode_pdu(bytestream)
        dul.event_queue.put(event)
    except Exception as exc:
        logger.warning("undecodable PDU from the peer (%s): aborting the association", exc)
        dul.event_queue.put("Evt19")
        return
    dul._recv_pdu.put(pdu)


def _write_data_fragments(dul: Any, pdu: bytearray) -> bool:
    """Append the PDVs of the P-DATA-TF `pdu` to the data set file of the C-STORE in progress if
    they are all its data set fragments and none is the last; False (nothing written) otherwise."""
    message = dul.assoc.dimse.message
    staged = getattr(message, "_data_set_file", None)
    if staged is None or dul.state_machine.current_state != "Sta6" or dul.event_queue.qsize():
        return False  # (an event still queued may be an earlier fragment: keep the order)
    context_id = message.context_id
    fragments = []
    offset, end = 6, len(pdu)
    while offset < end:
        if offset + 6 > end:
            return False
        length, pdv_context, control = _PDV_HEADER.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > end or pdv_context != context_id or control & _LAST_OR_COMMAND:
            return False
        fragments.append((offset + 6, offset + 4 + length))
        offset += 4 + length
    if not fragments:
        return False
    view = memoryview(pdu)
    try:
        for start, stop in fragments:
            staged.write(view[start:stop])
    finally:
        view.release()
    staged.file.flush()
    return True


# --- The C-STORE-RQ command set and the data set's last fragment -------------------------------

_COMMAND_LAST = 0x03  # message control header: command information, the last fragment
_DATA_LAST = 0x02  # data set information, the last fragment
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
# The elements of a C-STORE-RQ command set (group 0000) without Move Originator, in order.
_STORE_ELEMENTS = (0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000)
_ELEMENT_HEADER = struct.Struct("<HHL")  # implicit VR little endian: group, element, length
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
# PS3.5 9.1: numeric components without leading zeros, separated by dots.
_CONFORMANT_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
# Events whose handlers the fast path would not run (pynetdicom triggers them per PDU/message).
_SKIPPED_EVENTS = (evt.EVT_DIMSE_RECV, evt.EVT_PDU_RECV, evt.EVT_DATA_RECV)


def decode_c_store_rq(command: bytes) -> tuple[int, str, str, int] | None:
    """(Message ID, Affected SOP Class UID, Affected SOP Instance UID, Priority) of the encoded
    command set `command` (implicit VR little endian) when it is a C-STORE-RQ with a data set made
    of exactly `_STORE_ELEMENTS`, with a true group length, conformant UIDs of at most 64
    characters and a priority pynetdicom knows (0, 1, 2); None for any other command set (which
    pynetdicom then decodes itself)."""
    values = []
    offset, end = 0, len(command)
    for element in _STORE_ELEMENTS:
        if offset + 8 > end:
            return None
        group, found, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += 8
        if group != 0x0000 or found != element or offset + length > end:
            return None
        values.append(command[offset : offset + length])
        offset += length
    if offset != end:
        return None
    group_length, sop_class, command_field, message_id, priority, data_set_type, sop_instance = values
    if (
        len(group_length) != 4
        or _U32.unpack(group_length)[0] != end - 12
        or any(len(value) != 2 for value in (command_field, message_id, priority, data_set_type))
        or _U16.unpack(command_field)[0] != _C_STORE_RQ
        or _U16.unpack(data_set_type)[0] == _NO_DATA_SET
        or _U16.unpack(priority)[0] > 2
    ):
        return None
    uids = []
    for value in (sop_class, sop_instance):
        value = value.rstrip(b"\x00 ")  # pynetdicom's UI decoding drops the padding
        if len(value) > 64 or _CONFORMANT_UID.fullmatch(value) is None:
            return None
        uids.append(value.decode("ascii"))
    return _U16.unpack(message_id)[0], uids[0], uids[1], _U16.unpack(priority)[0]


class ReceivedStore(C_STORE_RQ):
    """A C-STORE-RQ message whose command set `read_pdu` decoded (`decode_c_store_rq`), its data
    set being staged: what pynetdicom's `DIMSEMessage` would be at that point, with the command
    set kept encoded (decoded by pydicom only if something asks for `command_set`), so that
    pynetdicom's own path can still complete it (`decode_msg`, `message_to_primitive`)."""

    def __init__(
        self, context_id: int, command: bytes, fields: tuple[int, str, str, int], staged: Any
    ) -> None:
        # DIMSEMessage.__init__ would build an empty pydicom command set: not needed here.
        self.context_id = context_id
        self.encoded_command_set = BytesIO(command)
        self.encoded_command_set.seek(0, 2)
        self.data_set = BytesIO()
        self._data_set_file = staged
        self._data_set_path = Path(staged.name)
        self._fields = fields
        self._command_set = None

    @property
    def command_set(self) -> Any:
        if self._command_set is None:
            self._command_set = decode(BytesIO(self.encoded_command_set.getvalue()), True, True)
        return self._command_set

    @command_set.setter
    def command_set(self, value: Any) -> None:
        self._command_set = value

    def message_to_primitive(self) -> C_STORE:
        """The C-STORE primitive pynetdicom's `message_to_primitive` makes of this message."""
        message_id, sop_class, sop_instance, priority = self._fields
        primitive = C_STORE()
        primitive.MessageID = message_id
        # Conformant UIDs (checked in `decode_c_store_rq`) pass pynetdicom's `set_uid` unchanged
        # and silently: set without running its validators again.
        primitive._affected_sop_class_uid = UID(sop_class, validation_mode=pydicom_config.IGNORE)
        primitive._affected_sop_instance_uid = UID(sop_instance, validation_mode=pydicom_config.IGNORE)
        primitive.Priority = priority
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


def _fast_path_open(dul: Any) -> bool:
    """Whether a PDU may bypass pynetdicom's state machine and DIMSE layer now: the association
    established (Sta6; P-DATA there changes nothing but hands the data to DIMSE), no earlier
    event waiting (order), nothing bound that the bypass would not trigger."""
    if dul.state_machine.current_state != "Sta6" or dul.event_queue.qsize():
        return False
    assoc = dul.assoc
    return not any(assoc.get_handlers(event) for event in _SKIPPED_EVENTS)


def _single_pdv(pdu: bytearray) -> tuple[int, int, int, int] | None:
    """(context ID, control header, start, end of the fragment) of a P-DATA-TF PDU that holds
    exactly one PDV; None otherwise."""
    if len(pdu) < 12:
        return None
    length, context_id, control = _PDV_HEADER.unpack_from(pdu, 6)
    if length < 2 or 10 + length != len(pdu):
        return None
    return context_id, control, 12, 10 + length


def _begin_store(dul: Any, pdu: bytearray) -> bool:
    """Take a PDU holding a whole C-STORE-RQ command set (see the module docstring): stage its
    data set file and put a `ReceivedStore` in place; False (nothing done) for any other PDU."""
    dimse = dul.assoc.dimse
    if dimse.message is not None or not _fast_path_open(dul):
        return False
    pdv = _single_pdv(pdu)
    if pdv is None or pdv[1] & _LAST_OR_COMMAND != _COMMAND_LAST:
        return False
    context_id, _, start, end = pdv
    command = bytes(pdu[start:end])
    fields = decode_c_store_rq(command)
    context = dul.assoc._accepted_cx.get(context_id)
    if fields is None or context is None:
        return False
    _, sop_class, sop_instance, _ = fields
    # As pynetdicom's DIMSEMessage.decode_msg stages it (its factories, which scp.py replaces).
    staged = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    try:
        staged.write(b"\x00" * 128 + b"DICM")
        dimse_messages.write_file_meta_info(
            staged,
            dimse_messages.create_file_meta(
                sop_class_uid=UID(sop_class, validation_mode=pydicom_config.IGNORE),
                sop_instance_uid=UID(sop_instance, validation_mode=pydicom_config.IGNORE),
                transfer_syntax=context.transfer_syntax[0],
            ),
        )
    except BaseException:
        _drop(staged)
        raise
    dimse.message = ReceivedStore(context_id, command, fields, staged)
    return True


def _complete_store(dul: Any, pdu: bytearray) -> bool:
    """Take the PDU holding the last fragment of a `ReceivedStore`'s data set - one PDV, data,
    last, of its context - as pynetdicom's DIMSE layer would: append it, queue the C-STORE
    primitive for the association thread, and make room for the next message; False (nothing
    done) for any other PDU."""
    dimse = dul.assoc.dimse
    message = dimse.message
    if message.__class__ is not ReceivedStore or not _fast_path_open(dul):
        return False
    pdv = _single_pdv(pdu)
    if pdv is None or pdv[0] != message.context_id or pdv[1] & _LAST_OR_COMMAND != _DATA_LAST:
        return False
    _, _, start, end = pdv
    staged = message._data_set_file
    view = memoryview(pdu)
    try:
        staged.write(view[start:end])
    finally:
        view.release()
    staged.file.flush()
    primitive = message.message_to_primitive()
    dimse.msg_queue.put((message.context_id, primitive))
    dimse.message = None
    return True


def _drop(staged: Any) -> None:
    with contextlib.suppress(OSError):
        staged.close()
    with contextlib.suppress(OSError):
        Path(staged.name).unlink()
