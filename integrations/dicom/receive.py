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
"""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import Any

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
    bytestream.extend(bytes(pdu_length))
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
    if pdu_type == _P_DATA_TF and _write_data_fragments(dul, bytestream):
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
