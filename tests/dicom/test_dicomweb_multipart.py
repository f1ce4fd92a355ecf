"""The streaming multipart/related reader and writer behind STOW-RS and WADO-RS: parts split at
the right bytes whatever the read size, bad bodies rejected with a message saying where."""

from __future__ import annotations

import io
import os

import pytest

from integrations.dicom.dicomweb.multipart import MultipartError, MultipartReader, multipart_stream

BOUNDARY = "b0undary"


class Trickle(io.BytesIO):
    """A stream that returns at most `step` bytes per read, as a slow client would."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    def read(self, size: int = -1) -> bytes:
        return super().read(self.step if size < 0 else min(size, self.step))


def parse(body: bytes, tmp_path, step: int = 1 << 20, chunk_size: int = 1 << 20):
    reader = MultipartReader(Trickle(body, step), BOUNDARY, tmp_path, chunk_size=chunk_size)
    parts = []
    for part in reader.parts():
        parts.append((part.headers, part.path.read_bytes(), part.size))
        part.discard()
    assert os.listdir(tmp_path) == []  # every temporary file is gone
    return parts


CONTENTS = [
    b"first part",
    b"",  # empty content
    b"\r\n--b0undar not quite a boundary, nor is x--b0undary without its CRLF\r\n",
    os.urandom(100_000),
]


def body_of(contents, preamble=b"", epilogue=b"", padding=b"") -> bytes:
    out = preamble
    for index, content in enumerate(contents):
        out += (b"\r\n" if index or preamble else b"") + b"--" + BOUNDARY.encode() + padding + b"\r\n"
        out += f"Content-Type: application/dicom\r\nX-Index: {index}\r\n\r\n".encode() + content
    return out + b"\r\n--" + BOUNDARY.encode() + b"--" + epilogue


@pytest.mark.parametrize(("step", "chunk_size"), [(1, 1 << 20), (7, 13), (4096, 1 << 20), (1 << 20, 1 << 20)])
def test_parts_come_out_exact_whatever_the_read_size(tmp_path, step, chunk_size):
    parts = parse(body_of(CONTENTS), tmp_path, step, chunk_size)
    assert [content for _, content, _ in parts] == CONTENTS
    assert [size for _, _, size in parts] == [len(c) for c in CONTENTS]
    assert [headers["x-index"] for headers, _, _ in parts] == ["0", "1", "2", "3"]
    assert parts[0][0]["content-type"] == "application/dicom"


def test_preamble_epilogue_and_transport_padding_are_ignored(tmp_path):
    body = body_of(CONTENTS[:1], preamble=b"This is a preamble.", epilogue=b"\r\nepilogue", padding=b"  \t")
    assert [content for _, content, _ in parse(body, tmp_path)] == CONTENTS[:1]


def test_a_part_without_headers(tmp_path):
    body = b"--b0undary\r\n\r\nno headers\r\n--b0undary--\r\n"
    assert parse(body, tmp_path) == [({}, b"no headers", 10)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no boundary at all", "first boundary"),
        (b"--b0undary\r\nContent-Type: x\r\n\r\ncontent without end", "ended inside a part"),
        (b"--b0undary\r\nContent-Type: x\r\n", "headers"),
        (b"--b0undary\r\nContent-Type: x\r\n\r\nfine\r\n--b0undary", "closing"),
        (b"--b0undary\r\nNoColonHere\r\n\r\nx\r\n--b0undary--", "malformed header"),
        (b"--b0undary\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\nx\r\n--b0undary--", "longer than"),
        (b"--b0undaryjunk\r\n\r\nx\r\n--b0undary--", "after a boundary"),
    ],
)
def test_malformed_bodies_are_rejected(tmp_path, body, message):
    with pytest.raises(MultipartError, match=message):
        parse(body, tmp_path)
    assert os.listdir(tmp_path) == []


def test_the_writer_round_trips_through_the_reader(tmp_path):
    contents = [b"one", b"", os.urandom(5000)]
    parts = [
        ({"Content-Type": "application/octet-stream", "X-N": str(i)}, [c[:10], c[10:]])
        for i, c in enumerate(contents)
    ]
    body = b"".join(multipart_stream(parts, BOUNDARY))
    assert body.endswith(b"\r\n--b0undary--\r\n")
    read = parse(body, tmp_path)
    assert [content for _, content, _ in read] == contents
    assert [headers["x-n"] for headers, _, _ in read] == ["0", "1", "2"]
