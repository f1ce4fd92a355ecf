"""A fast path for the C-STORE success response: one PDU written straight to the socket.

pynetdicom turns a response primitive into a DIMSE message (a pydicom data set for the command
set), encodes it, fragments it into P-DATA primitives, queues them for the DUL thread, which
wakes, runs its state machine, builds a P-DATA-TF PDU object and encodes it again: about 0.8 ms
per C-STORE on this path, in two threads, while the sender waits for the answer. A success
response is always the same nine elements, so `attach(assoc)` lets the association thread encode
its PDU with `struct` (`c_store_success_pdu`: the bytes pynetdicom sends) and send it itself.

Only when that is safe: a plain TCP socket (an SSL socket must not be written from a second
thread while the DUL thread reads it), nothing queued for the DUL thread to send before it (order
is kept), the association established, and a response small enough for the peer's maximum PDU.
Every other response - failures with their Error Comment, C-FIND/C-MOVE/C-GET, TLS - takes
pynetdicom's path.
"""

from __future__ import annotations

import ssl
import struct
from typing import Any

from pynetdicom.dimse_primitives import C_STORE

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_P_DATA_TF = 0x04
_COMMAND_LAST_FRAGMENT = 0x03


def _element(element: int, value: bytes) -> bytes:
    """One command set element (group 0000, implicit VR little endian)."""
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _uid(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def c_store_success_pdu(context_id: int, message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The P-DATA-TF PDU of a C-STORE-RSP with status Success (0x0000), as pynetdicom encodes it."""
    body = b"".join(
        (
            _element(0x0002, _uid(sop_class_uid)),  # Affected SOP Class UID
            _element(0x0100, struct.pack("<H", _C_STORE_RSP)),  # Command Field
            _element(0x0120, struct.pack("<H", message_id)),  # Message ID Being Responded To
            _element(0x0800, struct.pack("<H", _NO_DATA_SET)),  # Command Data Set Type
            _element(0x0900, struct.pack("<H", 0x0000)),  # Status: Success
            _element(0x1000, _uid(sop_instance_uid)),  # Affected SOP Instance UID
        )
    )
    command = _element(0x0000, struct.pack("<L", len(body))) + body  # Command Group Length
    pdv = struct.pack(">LBB", len(command) + 2, context_id, _COMMAND_LAST_FRAGMENT) + command
    return struct.pack(">BBL", _P_DATA_TF, 0x00, len(pdv)) + pdv


def attach(assoc: Any) -> None:
    """Send this association's C-STORE success responses on the fast path where it is safe."""
    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def send_msg_fast(primitive: Any, context_id: int) -> None:
        if not _send_success_directly(assoc, primitive, context_id):
            send_msg(primitive, context_id)

    dimse.send_msg = send_msg_fast


def _send_success_directly(assoc: Any, primitive: Any, context_id: int) -> bool:
    if (
        not isinstance(primitive, C_STORE)
        or primitive.MessageIDBeingRespondedTo is None
        or primitive.Status != 0x0000
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
        or primitive.AffectedSOPClassUID is None
        or primitive.AffectedSOPInstanceUID is None
        or not assoc.is_established
    ):
        return False
    dul = assoc.dul
    transport = dul.socket
    sock = getattr(transport, "socket", None) if transport is not None else None
    if sock is None or isinstance(sock, ssl.SSLSocket) or dul.to_provider_queue.qsize():
        return False
    pdu = c_store_success_pdu(
        context_id,
        primitive.MessageIDBeingRespondedTo,
        str(primitive.AffectedSOPClassUID),
        str(primitive.AffectedSOPInstanceUID),
    )
    peer_maximum = assoc.requestor.maximum_length
    if peer_maximum and len(pdu) - 6 > peer_maximum:
        return False
    try:
        sock.sendall(pdu)
    except OSError:
        dul.event_queue.put("Evt17")  # transport connection closed, as pynetdicom's send does
    return True
