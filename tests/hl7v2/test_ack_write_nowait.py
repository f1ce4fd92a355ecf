"""`mllp.write_nowait`: how a worker writes an ACK to a plain connection's non-blocking socket.
What the socket does not take at once is left to the event loop's transport, which writes it
after these bytes, so the peer reads the ACK whole and in order."""

from __future__ import annotations

import contextlib
import socket

from integrations.hl7v2 import mllp


def test_a_short_ack_is_written_whole():
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        framed = mllp.frame(b"MSH|^~\\&|BTT|RAD|EHR|GEN|20240311||ACK^A01|1|P|2.5.1\rMSA|AA|42")
        assert mllp.write_nowait(ours.fileno(), framed) == len(framed)
        assert peer.recv(65536) == framed


def test_a_full_socket_takes_part_and_the_rest_follows_in_order():
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        payload = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
        written = mllp.write_nowait(ours.fileno(), payload)
        assert 0 < written < len(payload)
        assert mllp.write_nowait(ours.fileno(), payload[written:]) == 0  # still full: nothing taken
        received = bytearray()
        rest = payload[written:]
        peer.setblocking(False)
        while len(received) < len(payload):
            with contextlib.suppress(BlockingIOError):  # the peer read faster than we wrote
                received += peer.recv(1 << 20)
            if rest:
                rest = rest[mllp.write_nowait(ours.fileno(), rest) :]
        assert bytes(received) == payload


def test_a_closed_peer_takes_nothing_and_raises_nothing():
    ours, peer = socket.socketpair()
    with ours:
        ours.setblocking(False)
        peer.close()
        assert mllp.write_nowait(ours.fileno(), mllp.frame(b"MSA|AA|1")) == 0
