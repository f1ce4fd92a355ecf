"""multipart/related (RFC 2387) in and out, streaming.

`MultipartReader` reads a request body part by part and writes each part's content to a temporary
file, so a STOW-RS body of any size needs memory for one read chunk only. `multipart_stream`
writes a response body from parts whose content is itself an iterator of chunks (the stored
files, read lazily), for a `StreamingHttpResponse`.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_SIZE = 1 << 20
MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart body; the message says where it breaks."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class Part:
    """One received part: its headers (names lower-cased) and the temporary file holding its content."""

    index: int
    headers: dict[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def new_boundary() -> str:
    return f"btt-{uuid.uuid4().hex}"


class MultipartReader:
    """Parses a multipart body from `stream`, one part at a time (see `parts`)."""

    def __init__(self, stream: Readable, boundary: str, temp_dir: Path, chunk_size: int = CHUNK_SIZE) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("the multipart boundary must be 1 to 70 characters long")
        self.stream = stream
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.temp_dir = temp_dir
        self.chunk_size = chunk_size
        # A leading CRLF lets the first boundary (which needs none) match the same delimiter.
        self.buffer = bytearray(b"\r\n")
        self.eof = False

    def _fill(self) -> bool:
        """Read one more chunk into the buffer; False at the end of the stream."""
        if self.eof:
            return False
        chunk = self.stream.read(self.chunk_size)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _find(self, needle: bytes, what: str, limit: int | None = None) -> int:
        """Index of `needle` in the buffer, reading more as needed."""
        start = 0
        while True:
            index = self.buffer.find(needle, start)
            if index >= 0:
                return index
            if limit is not None and len(self.buffer) > limit:
                raise MultipartError(f"{what} is longer than {limit} bytes")
            start = max(0, len(self.buffer) - len(needle) + 1)
            if not self._fill():
                raise MultipartError(f"the body ended before {what}")

    def _need(self, count: int) -> bool:
        while len(self.buffer) < count:
            if not self._fill():
                return False
        return True

    def _read_headers(self, index: int) -> dict[str, str]:
        if not self._need(2):
            raise MultipartError(f"the body ended in the headers of part {index}")
        if self.buffer[:2] == b"\r\n":  # no headers at all
            del self.buffer[:2]
            return {}
        what = f"the end of the headers of part {index}"
        end = self._find(b"\r\n\r\n", what, MAX_HEADER_BYTES)
        if end > MAX_HEADER_BYTES:
            raise MultipartError(f"{what} is longer than {MAX_HEADER_BYTES} bytes")
        raw = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        headers: dict[str, str] = {}
        for line in raw.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                raise MultipartError(f"part {index} has a malformed header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        return headers

    def _read_content(self, out: BinaryIO) -> int:
        """Copy the content up to the next delimiter into `out`; return its size."""
        size = 0
        keep = len(self.delimiter) - 1
        while True:
            index = self.buffer.find(self.delimiter)
            if index >= 0:
                out.write(self.buffer[:index])
                size += index
                del self.buffer[: index + len(self.delimiter)]
                return size
            if len(self.buffer) > keep:
                flush = len(self.buffer) - keep
                out.write(self.buffer[:flush])
                size += flush
                del self.buffer[:flush]
            if not self._fill():
                raise MultipartError("the body ended inside a part (no closing boundary)")

    def parts(self) -> Iterator[Part]:
        """Yield each part once its content is on disk. The caller discards each part's file."""
        # Skip the preamble up to the first delimiter.
        index = self._find(self.delimiter, "the first boundary")
        del self.buffer[: index + len(self.delimiter)]
        number = 0
        while True:
            if not self._need(2):
                raise MultipartError("the body ended after a boundary (no closing '--')")
            if self.buffer[:2] == b"--":
                return  # the close delimiter; the epilogue is ignored
            line_end = self._find(b"\r\n", "the end of a boundary line", 1024)
            if bytes(self.buffer[:line_end]).strip(b" \t"):
                raise MultipartError("unexpected characters after a boundary")
            del self.buffer[: line_end + 2]
            number += 1
            headers = self._read_headers(number)
            fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=self.temp_dir)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    size = self._read_content(out)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            yield Part(number, headers, path, size)


def multipart_stream(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """The chunks of a multipart body made of `parts` (headers, content chunks), lazily."""
    dash_boundary = b"--" + boundary.encode("latin-1")
    first = True
    for headers, content in parts:
        head = b"" if first else b"\r\n"
        head += dash_boundary + b"\r\n"
        head += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
        yield head + b"\r\n"
        first = False
        yield from content
    yield (b"" if first else b"\r\n") + dash_boundary + b"--\r\n"


def file_chunks(opener, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
    """Read a file opened (lazily, when iteration starts) by `opener()` in chunks, closing it after."""
    with opener() as handle:
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                return
            yield chunk
