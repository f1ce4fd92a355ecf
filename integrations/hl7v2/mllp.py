"""MLLP (HL7 v2 Minimal Lower Layer Protocol, release 2) framing: `<VT> message <FS><CR>`.

- `FrameReader`: the listener's side, over a connected socket (blocking, with timeouts; plain
  or TLS): yields each message's bytes,
  skipping CR/LF/blanks between frames; enforces the size limit (an oversized message is read
  to its end block and discarded, so the connection can go on after an AR), the stall timeout
  inside a message and the idle timeout between messages. Anything else before a start block,
  a start block inside a message, or an end block not followed by CR is a framing error: the
  connection is closed, since where the next message starts cannot be known.
- `send(host, port, payload, timeout=..., ssl_context=None) -> bytes`: the sender's side (blocking
  socket): one message out, its acknowledgement back.
"""

from __future__ import annotations

import socket
import ssl
import struct

START = 0x0B
END = 0x1C
CR = 0x0D
_BETWEEN_FRAMES = b"\r\n \t"
_READ_SIZE = 65536
# Bytes of an oversized message kept to answer it (its MSH).
_KEEP_PREFIX = 8192


class MllpError(Exception):
    """The MLLP framing was broken, or the peer went away mid-message."""


class FramingError(MllpError):
    pass


class StalledError(MllpError):
    pass


class TooLargeError(MllpError):
    """A message over the size limit; it was read to its end and discarded."""

    def __init__(self, prefix: bytes, size: int) -> None:
        super().__init__(f"message of {size} bytes or more is over the limit")
        self.prefix = prefix
        self.size = size


class FrameReader:
    """Reads MLLP frames from a connected socket (see the module docstring).

    The socket is put in blocking mode with the kernel's receive timeout (`SO_RCVTIMEO`) instead
    of Python's socket timeout, which polls before every read: one system call per read instead
    of two."""

    def __init__(self, sock: socket.socket, *, max_bytes: int, timeout: float, idle_timeout: float) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.buffer = bytearray()
        self._receive_timeout: float | None = None
        sock.settimeout(None)

    def _fill(self, timeout: float) -> bool:
        """Read more into the buffer; False at end of stream. TimeoutError when nothing came."""
        if timeout != self._receive_timeout:
            set_kernel_timeout(self.sock, socket.SO_RCVTIMEO, timeout)
            self._receive_timeout = timeout
        try:
            chunk = self.sock.recv(_READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError):  # what a receive timeout gives
            raise TimeoutError(f"nothing received for {timeout:g} s") from None
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def next_frame(self) -> bytes | None:
        """The next message (without framing); None when the peer closed or stayed idle between
        messages. Raises FramingError, StalledError or TooLargeError."""
        buf = self.buffer
        while True:
            skip = 0
            while skip < len(buf) and buf[skip] in _BETWEEN_FRAMES:
                skip += 1
            del buf[:skip]
            if buf:
                break
            try:
                if not self._fill(self.idle_timeout):
                    return None
            except TimeoutError:
                return None
        if buf[0] != START:
            raise FramingError(f"expected the MLLP start block 0x0B, got {bytes(buf[:16])!r}")
        searched = 1
        while True:
            end = buf.find(END, searched)
            start = buf.find(START, 1, end if end >= 0 else len(buf))
            if start >= 0:
                raise FramingError("a start block 0x0B inside a message (the previous frame was never ended)")
            if end >= 0:
                break
            if len(buf) - 1 > self.max_bytes:
                self._discard_oversized()
            searched = len(buf)
            self._more("inside a message")
        while len(buf) <= end + 1:
            try:
                if not self._fill(self.timeout):
                    break  # the peer closed right after FS: take the message
            except TimeoutError:
                raise StalledError("no CR after the end block 0x1C") from None
        if len(buf) > end + 1 and buf[end + 1] != CR:
            raise FramingError(
                f"the end block 0x1C must be followed by 0x0D, got {bytes(buf[end + 1 : end + 2])!r}"
            )
        message = bytes(buf[1:end])
        del buf[: end + 2]
        if len(message) > self.max_bytes:
            raise TooLargeError(message[:_KEEP_PREFIX], len(message))
        return message

    def _more(self, where: str) -> None:
        try:
            if not self._fill(self.timeout):
                raise FramingError(f"the connection closed {where}")
        except TimeoutError:
            raise StalledError(f"nothing received for {self.timeout:g} s {where}") from None

    def _discard_oversized(self) -> None:
        """Read the rest of an oversized message to its end block, keeping only its beginning."""
        buf = self.buffer
        prefix = bytes(buf[1 : 1 + _KEEP_PREFIX])
        size = len(buf) - 1
        buf.clear()
        while True:
            self._more("inside an oversized message")
            end = buf.find(END)
            if end >= 0:
                size += end
                del buf[: end + 1]  # a CR after it is skipped as the gap between frames
                raise TooLargeError(prefix, size)
            size += len(buf)
            buf.clear()


def set_kernel_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """`SO_RCVTIMEO` or `SO_SNDTIMEO` of a blocking socket: a read or write that waits longer
    fails with EAGAIN (BlockingIOError; over TLS, SSLWantReadError or SSLWantWriteError)."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def frame(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\r"


def send(
    host: str,
    port: int,
    payload: bytes,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    max_answer_bytes: int = 1024 * 1024,
) -> bytes:
    """Send one framed message and return the answer (without framing). Raises OSError for
    connection failures and timeouts, MllpError for a broken or missing answer."""
    with socket.create_connection((host, port), timeout=timeout) as raw_sock:
        raw_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ssl_context.wrap_socket(raw_sock, server_hostname=host) if ssl_context else raw_sock
        try:
            sock.sendall(frame(payload))
            answer = bytearray()
            while True:
                chunk = sock.recv(_READ_SIZE)
                if not chunk:
                    raise MllpError("the destination closed the connection without an acknowledgement")
                answer += chunk
                end = answer.find(END)
                if end >= 0:
                    start = answer.find(START)
                    if start < 0 or start > end:
                        raise MllpError(f"the answer is not MLLP framed: {bytes(answer[:32])!r}")
                    return bytes(answer[start + 1 : end])
                if len(answer) > max_answer_bytes:
                    raise MllpError(
                        f"the answer is longer than {max_answer_bytes} bytes without an end block"
                    )
        finally:
            if sock is not raw_sock:
                sock.close()
