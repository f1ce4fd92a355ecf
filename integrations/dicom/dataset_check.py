"""A fast structural check of a received DICOM Part 10 file, without decoding its values.

pydicom reads leniently: a file cut short in the middle of an element, or an explicit VR that is
no VR at all, reads "fine" and the damage shows up later (or never). Before the node indexes and
acknowledges an instance, `check_part10_file` walks every element header of the file (nested
sequences and items included) over a memory map, skipping values, and raises `MalformedDataset`
when:

- the File Meta Information is missing or unreadable, or lacks the Transfer Syntax UID;
- an element, item or sequence runs past the end of the file or of its enclosing item (a
  truncated data set), or an undefined-length sequence or item has no delimiter;
- an explicit VR is not one of the VRs of PS3.5 (an invalid VR).

The walk touches only the element headers: the pages of a large Pixel Data value are never read,
so checking a 150 MB instance costs about as much as checking a small one. Deflated data sets
are inflated in memory first (they are rare and small).

Encodings follow PS3.5: implicit VR little endian, explicit VR big endian (retired, still sent),
deflated explicit VR little endian, and explicit VR little endian for every other transfer syntax
(all the compressed ones, and ones this module does not know by name).
"""

from __future__ import annotations

import dataclasses
import mmap
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
_DEFLATED = {DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.4.95"}  # JPIP referenced deflate

# PS3.5 table 6.2-1: every VR, and those with a 4-byte length (and 2 reserved bytes) when explicit.
VALID_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
LONG_LENGTH_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64


class MalformedDataset(Exception):
    """The file is not a well-formed DICOM file. `kind` is 'truncated', 'invalid-vr' or 'malformed'."""

    def __init__(self, kind: str, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.tag = tag


@dataclass(frozen=True)
class FileLayout:
    """What the check learned: where the data set starts and the File Meta Information values,
    and, when asked for (`capture`), the encoded values of those top-level elements: tag -> (VR
    as found, or None when implicit; the value's bytes). `captured` is None when they were not
    asked for, or one of them could not be taken as is (an undefined length, a large value)."""

    dataset_offset: int
    file_size: int
    transfer_syntax_uid: str
    media_storage_sop_class_uid: str
    media_storage_sop_instance_uid: str
    captured: dict[int, tuple[str | None, bytes]] | None = None

    @property
    def is_implicit_vr(self) -> bool:
        return self.transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN

    @property
    def is_little_endian(self) -> bool:
        return self.transfer_syntax_uid != EXPLICIT_VR_BIG_ENDIAN


def tag_str(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def vr_str(vr: bytes) -> str:
    """An explicit VR as found, for messages: 'ZZ', or its bytes in hex when not printable."""
    if all(0x20 < b < 0x7F for b in vr):
        return f"'{vr.decode('ascii')}'"
    return "0x" + vr.hex().upper()


def check_part10_file(path: Path, capture: frozenset[int] | None = None) -> FileLayout:
    """Check the file at `path` (see the module docstring); return its layout or raise
    `MalformedDataset`. With `capture`, the layout also holds the encoded values of those
    top-level elements (`FileLayout.captured`)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size < 132:
            raise MalformedDataset("truncated", f"file is only {size} bytes: no File Meta Information")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            layout = _read_meta(buffer, size)
            if layout.transfer_syntax_uid in _DEFLATED:
                try:
                    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    data = inflater.decompress(buffer[layout.dataset_offset :]) + inflater.flush()
                except zlib.error as exc:
                    raise MalformedDataset(
                        "malformed", f"deflated data set does not inflate: {exc}"
                    ) from None
                if not inflater.eof:
                    raise MalformedDataset("truncated", "deflated data set ends before its end of stream")
                walker = _Walker(memoryview(data), implicit=False, little=True, capture=capture)
                walker.walk_dataset(0, len(data), 0)
            else:
                view = memoryview(buffer)
                walker = _Walker(
                    view, implicit=layout.is_implicit_vr, little=layout.is_little_endian, capture=capture
                )
                try:
                    walker.walk_dataset(layout.dataset_offset, size, 0)
                finally:
                    view.release()
    if capture is not None and walker.captured is not None:
        return dataclasses.replace(layout, captured=walker.captured)
    return layout


def read_file_meta(source: Path | BinaryIO) -> FileLayout:
    """The File Meta Information of a Part 10 file (a path, or a seekable binary handle), without
    walking the data set. Raises `MalformedDataset`."""
    if isinstance(source, str | Path):
        with open(source, "rb") as handle:
            return read_file_meta(handle)
    size = source.seek(0, 2)
    source.seek(0)
    head = source.read(144)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise MalformedDataset("malformed", "no DICM prefix: not a DICOM Part 10 file")
    # The meta group is small: read it whole, sized by File Meta Information Group Length when
    # that comes first (it should), else generously.
    meta_length = 64 * 1024
    if len(head) == 144 and head[132:138] == b"\x02\x00\x00\x00UL":
        meta_length = 12 + struct.unpack_from("<L", head, 140)[0]
    source.seek(0)
    return _read_meta(source.read(132 + meta_length + 8), size)


def _read_meta(buffer: mmap.mmap | bytes, size: int) -> FileLayout:
    """Walk the group 0002 elements at the start of `buffer` (the file, or its first bytes)."""
    if buffer[128:132] != b"DICM":
        raise MalformedDataset("malformed", "no DICM prefix: not a DICOM Part 10 file")
    offset = 132
    values: dict[int, str] = {}
    limit = min(size, len(buffer))
    while offset + 8 <= limit:
        group, element = struct.unpack_from("<HH", buffer, offset)
        if group != 0x0002:
            break
        tag = (group << 16) | element
        vr = bytes(buffer[offset + 4 : offset + 6])
        if vr not in VALID_VRS:
            raise MalformedDataset(
                "invalid-vr", f"invalid VR {vr_str(vr)} in File Meta Information {tag_str(tag)}", tag
            )
        if vr in LONG_LENGTH_VRS:
            if offset + 12 > limit:
                raise MalformedDataset("truncated", "File Meta Information is cut short", tag)
            (length,) = struct.unpack_from("<L", buffer, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", buffer, offset + 6)
            start = offset + 8
        if length == _UNDEFINED or start + length > size:
            raise MalformedDataset(
                "truncated", f"File Meta Information element {tag_str(tag)} is cut short", tag
            )
        if vr == b"UI":
            values[tag] = bytes(buffer[start : start + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        offset = start + length
    transfer_syntax = values.get(0x00020010, "")
    if not transfer_syntax:
        raise MalformedDataset(
            "malformed", "File Meta Information has no Transfer Syntax UID (0002,0010)", 0x00020010
        )
    return FileLayout(
        dataset_offset=offset,
        file_size=size,
        transfer_syntax_uid=transfer_syntax,
        media_storage_sop_class_uid=values.get(0x00020002, ""),
        media_storage_sop_instance_uid=values.get(0x00020003, ""),
    )


# A captured value larger than this makes the caller read the header the slow way instead.
_CAPTURE_MAX = 64 * 1024


class _Walker:
    """Walks element headers of one encoding over a buffer; see `check_part10_file`."""

    def __init__(
        self, buffer: memoryview, *, implicit: bool, little: bool, capture: frozenset[int] | None = None
    ) -> None:
        self.buffer = buffer
        self.capture = capture or frozenset()
        self.captured: dict[int, tuple[str | None, bytes]] | None = {} if capture is not None else None
        self.implicit = implicit
        self.prefix = "<" if little else ">"
        self.tag_format = struct.Struct(self.prefix + "HH")
        self.u32 = struct.Struct(self.prefix + "L")
        # An element header: group, element, then the 32-bit length (implicit VR; `vr` unpacks
        # as an empty byte string) or the VR and the 16-bit length (explicit VR).
        self.implicit_header = struct.Struct(self.prefix + "HH0sL")
        self.explicit_header = struct.Struct(self.prefix + "HH2sH")

    def _tag(self, offset: int) -> int:
        group, element = self.tag_format.unpack_from(self.buffer, offset)
        return (group << 16) | element

    def walk_dataset(self, offset: int, end: int, depth: int) -> int:
        """Walk the elements in [offset, end) and return the offset after the last one.

        Inside an item (depth > 0) it stops early at an Item Delimitation Item and returns the
        delimiter's offset (the end of an undefined-length item).
        """
        if depth > _MAX_DEPTH:
            raise MalformedDataset("malformed", f"sequences nested deeper than {_MAX_DEPTH} levels")
        # One unpack per element header (the tag's two halves, and the VR and short length or
        # the 32-bit length): this loop runs for every element of every instance stored.
        buffer = self.buffer
        implicit = self.implicit
        header = self.implicit_header if implicit else self.explicit_header
        long_length = self.u32.unpack_from
        capture, captured = self.capture, self.captured
        while offset < end:
            if offset + 8 > end:
                raise MalformedDataset(
                    "truncated", f"data set ends inside an element header at byte {offset}"
                )
            group, element, vr, length = header.unpack_from(buffer, offset)
            tag = (group << 16) | element
            if group == 0xFFFE:
                if tag == _ITEM_DELIMITER and depth:
                    return offset
                if tag in (_ITEM, _ITEM_DELIMITER, _SEQUENCE_DELIMITER):
                    raise MalformedDataset(
                        "malformed", f"unexpected {tag_str(tag)} item tag in a data set at byte {offset}"
                    )
            if implicit:
                vr = None
                value = offset + 8
            else:
                if vr not in VALID_VRS:
                    raise MalformedDataset("invalid-vr", f"invalid VR {vr_str(vr)} in {tag_str(tag)}", tag)
                if vr in LONG_LENGTH_VRS:
                    if offset + 12 > end:
                        raise MalformedDataset(
                            "truncated", f"data set ends inside the header of {tag_str(tag)}", tag
                        )
                    (length,) = long_length(buffer, offset + 8)
                    value = offset + 12
                else:
                    value = offset + 8
            if depth == 0 and tag in capture and captured is not None:
                if length == _UNDEFINED or length > _CAPTURE_MAX or value + length > end:
                    self.captured = captured = None  # not taken as is: the caller reads the header itself
                else:
                    captured[tag] = (
                        vr.decode("ascii") if vr is not None else None,
                        bytes(buffer[value : value + length]),
                    )
            if length == _UNDEFINED:
                if vr == b"SQ" or vr == b"UN" or (self.implicit and tag not in _PIXEL_DATA_TAGS):
                    # An undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2).
                    walker = (
                        self
                        if vr != b"UN" or self.implicit
                        else _Walker(self.buffer, implicit=True, little=True)
                    )
                    offset = walker._walk_sequence(value, end, tag, depth + 1, defined=False)
                elif vr in (b"OB", b"OW") or tag in _PIXEL_DATA_TAGS:
                    offset = self._walk_fragments(value, end, tag)
                else:
                    raise MalformedDataset(
                        "malformed", f"undefined length on {tag_str(tag)} with VR {vr_str(vr or b'')}", tag
                    )
                continue
            if value + length > end:
                raise MalformedDataset(
                    "truncated",
                    f"data set truncated: {tag_str(tag)} needs {length} bytes, {max(0, end - value)} remain",
                    tag,
                )
            if vr == b"SQ" and length:
                self._walk_sequence(value, value + length, tag, depth + 1, defined=True)
            offset = value + length
        if offset != end:  # pragma: no cover - the loop only ends at `end`
            raise MalformedDataset("truncated", "data set ends inside an element")
        return offset

    def _item_header(self, offset: int, end: int, owner: int) -> tuple[int, int]:
        if offset + 8 > end:
            raise MalformedDataset(
                "truncated", f"data set truncated inside the sequence {tag_str(owner)}", owner
            )
        tag = self._tag(offset)
        (length,) = self.u32.unpack_from(self.buffer, offset + 4)
        return tag, length

    def _walk_sequence(self, offset: int, end: int, owner: int, depth: int, *, defined: bool) -> int:
        """Walk the items of a sequence; return the offset after it (after its delimiter if undefined)."""
        while True:
            if defined and offset == end:
                return offset
            tag, length = self._item_header(offset, end, owner)
            if tag == _SEQUENCE_DELIMITER and not defined:
                return offset + 8
            if tag != _ITEM:
                raise MalformedDataset(
                    "malformed",
                    f"expected an item in the sequence {tag_str(owner)}, found {tag_str(tag)}",
                    owner,
                )
            start = offset + 8
            if length == _UNDEFINED:
                stop = self.walk_dataset(start, end, depth)
                if stop >= end:
                    raise MalformedDataset(
                        "truncated", f"an item of {tag_str(owner)} has no delimiter", owner
                    )
                offset = stop + 8  # the Item Delimitation Item
            else:
                if start + length > end:
                    raise MalformedDataset(
                        "truncated", f"an item of {tag_str(owner)} runs past the data", owner
                    )
                if self.walk_dataset(start, start + length, depth) != start + length:
                    raise MalformedDataset(
                        "malformed",
                        f"an item delimiter inside a defined-length item of {tag_str(owner)}",
                        owner,
                    )
                offset = start + length

    def _walk_fragments(self, offset: int, end: int, owner: int) -> int:
        """Walk encapsulated fragments (Basic Offset Table first); return the offset after the delimiter."""
        while True:
            tag, length = self._item_header(offset, end, owner)
            if tag == _SEQUENCE_DELIMITER:
                return offset + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise MalformedDataset(
                    "malformed", f"bad fragment {tag_str(tag)} in the encapsulated {tag_str(owner)}", owner
                )
            offset += 8 + length
            if offset > end:
                raise MalformedDataset(
                    "truncated", f"data set truncated inside the encapsulated {tag_str(owner)}", owner
                )
