"""HL7 v2 ER7 ("pipe and hat") encoding: the message header, character sets, segments, escapes.

A small, tolerant tokenizer for what real feeds send, kept separate from the mapping so that it is
fast (a message is split once, fields only when read) and so that every value read knows where it
came from (segment, occurrence, field, repetition, component) for the ERR segment of an ACK.
hl7apy provides the HL7 reference (versions, field names and data types, date parsing:
`reference.py`); splitting with hl7apy's element tree cost 8 ms per ADT message here, more than
the whole budget of a message at 300 messages/s.

Tolerated: `\r`, `\n` or `\r\n` segment ends, blank lines, a byte-order mark, trailing field or
component separators, Z-segments and other unknown segments (kept, not interpreted), repetitions
of any field, escape sequences (`\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\`, highlighting dropped), the
encoding characters the message declares in MSH-1/MSH-2, and a character set named in MSH-18.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from functools import cached_property

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# HL7 table 0211 (and the spellings feeds use besides) -> Python codec.
CHARACTER_SETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "ISO-8859-1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "ISO IR192": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
    "ISO IR87": "iso2022_jp",
}


class Er7Error(ValueError):
    """The message cannot be read at all (no MSH, a bad header, an unknown character set).

    `field` is the MSH field at fault (0 when the MSH itself is missing or unreadable).
    """

    def __init__(self, message: str, *, field: int = 0, code: str = "100") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


@dataclass(frozen=True)
class Encoding:
    """The separators and escape character a message declares (MSH-1, MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"

    @cached_property
    def _escape_pattern(self) -> re.Pattern:
        esc = re.escape(self.escape)
        return re.compile(f"{esc}([^{esc}]*){esc}")

    def unescape(self, text: str, charset: str = "ascii") -> str:
        """`text` with its escape sequences replaced by what they stand for."""
        if not self.escape or self.escape not in text:
            return text
        return self._escape_pattern.sub(lambda m: self._unescape_one(m.group(1), m.group(0), charset), text)

    def _unescape_one(self, code: str, whole: str, charset: str) -> str:
        simple = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            "H": "",
            "N": "",
            ".br": "\n",
        }
        if code in simple:
            return simple[code]
        if code.startswith("X") and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", code):
            try:
                return bytes.fromhex(code[1:]).decode(charset)
            except (UnicodeDecodeError, LookupError):
                return whole
        if code.startswith(("C", "M", "Z", ".")):  # charset switches, locally defined, formatting
            return ""
        return whole

    def escape_text(self, text: str) -> str:
        """`text` with the separators and the escape character escaped, line breaks as `\\.br\\`."""
        esc = self.escape
        out = text.replace(esc, f"{esc}E{esc}")
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            out = out.replace(char, f"{esc}{code}{esc}")
        line_break = f"{esc}.br{esc}"
        return _LINE_BREAK.sub(lambda _: line_break, out)


DEFAULT_ENCODING = Encoding()


@dataclass(frozen=True)
class Header:
    """What is read from the raw bytes before the message is decoded: enough to decode it, to
    answer it, and to tell who sent it, even when the rest of the message is unusable."""

    encoding: Encoding
    fields: tuple[str, ...]  # MSH-0 ("MSH") .. MSH-n as raw text (MSH-1 the field separator)
    charset_name: str  # MSH-18, first repetition, as sent ("" when absent)
    codec: str

    def raw(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""


def read_header(raw: bytes, default_codec: str) -> Header:
    """The MSH of `raw` (bytes as received, without MLLP framing), decoded as ASCII.

    Raises Er7Error when the message does not start with a readable MSH segment or names a
    character set this server does not know (MSH-18).
    """
    text = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"MSH"):
        first = text[:3].decode("ascii", "replace")
        raise Er7Error(f"the message must start with an MSH segment, found {first!r}")
    if len(text) < 8:
        raise Er7Error("the MSH segment is too short to hold its field separator and encoding characters")
    line = _LINE_BREAK.split(text.decode("latin-1"), maxsplit=1)[0]
    separator = line[3]
    if separator.isalnum() or separator in " \r\n":
        raise Er7Error(f"MSH-1 (field separator) {separator!r} is not a separator character", field=1)
    parts = line.split(separator)
    msh2 = parts[1] if len(parts) > 1 else ""
    if len(msh2) < 4 or len(set(msh2[:4] + separator)) != 5 or any(c.isalnum() for c in msh2[:4]):
        raise Er7Error(
            f"MSH-2 (encoding characters) must be 4 distinct separator characters, got {msh2!r}", field=2
        )
    encoding = Encoding(separator, msh2[0], msh2[1], msh2[2], msh2[3])
    fields = ("MSH", separator, *parts[1:])
    charset_field = fields[18] if len(fields) > 18 else ""
    charset_name = charset_field.split(encoding.repetition)[0].strip()
    if not charset_name:
        codec = default_codec
    else:
        codec = CHARACTER_SETS.get(charset_name.upper().replace("_", " "), "")
        if not codec:
            raise Er7Error(
                f"MSH-18 character set {charset_name!r} is not supported "
                f"(supported: {', '.join(sorted(CHARACTER_SETS))})",
                field=18,
                code="103",
            )
    return Header(encoding, fields, charset_name, codecs.lookup(codec).name)


@dataclass
class Segment:
    """One segment: its raw fields (field 0 is the segment ID), and where it stood."""

    fields: list[str]
    encoding: Encoding
    charset: str
    occurrence: int = 1  # 1 for the first segment of its ID in the message, 2 for the next ...
    _split_cache: dict[int, list[list[list[str]]]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.fields[0]

    def raw(self, number: int) -> str:
        """Field `number` as sent (escapes not resolved, repetitions not split)."""
        return self.fields[number] if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[list[list[str]]]:
        """Field `number` split into repetitions -> components -> subcomponents, unescaped.

        An empty field gives []. Trailing empty components are kept as sent.
        """
        cached = self._split_cache.get(number)
        if cached is not None:
            return cached
        raw = self.raw(number)
        enc = self.encoding
        if not raw:
            result: list[list[list[str]]] = []
        elif self.name == "MSH" and number in (1, 2):
            result = [[[raw]]]
        else:
            result = [
                [
                    [enc.unescape(sub, self.charset) for sub in component.split(enc.subcomponent)]
                    for component in repetition.split(enc.component)
                ]
                for repetition in raw.split(enc.repetition)
            ]
        self._split_cache[number] = result
        return result

    def value(self, number: int, component: int = 1, subcomponent: int = 1, repetition: int = 1) -> str:
        """One value (1-based positions), unescaped and stripped; "" when absent."""
        reps = self.repetitions(number)
        if len(reps) < repetition:
            return ""
        comps = reps[repetition - 1]
        if len(comps) < component:
            return ""
        subs = comps[component - 1]
        if len(subs) < subcomponent:
            return ""
        return subs[subcomponent - 1].strip()

    def components(self, number: int, repetition: int = 1) -> list[str]:
        """The components of one repetition, each its first subcomponent, stripped."""
        reps = self.repetitions(number)
        if len(reps) < repetition:
            return []
        return [subs[0].strip() for subs in reps[repetition - 1]]


@dataclass
class Message:
    """A decoded message: its header, encoding and segments in order."""

    header: Header
    segments: list[Segment]
    text: str

    @property
    def encoding(self) -> Encoding:
        return self.header.encoding

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        for segment in self.segments:
            if segment.name == name:
                return segment
        return None

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.segments if segment.name == name]


def parse(raw: bytes, header: Header) -> Message:
    """Decode `raw` with the header's character set and split it into segments.

    Raises UnicodeDecodeError when the bytes are not in that character set, Er7Error when a line
    is no segment at all (no 3-character segment ID).
    """
    text = raw.decode(header.codec).lstrip("\ufeff \t\r\n")
    enc = header.encoding
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_ID.match(name) or (len(line) > 3 and line[3] != enc.field):
            if segments:
                raise Er7Error(
                    f"line {number} is not a segment (it must start with a 3-character segment ID "
                    f"and a field separator): {line[:20]!r}",
                    code="100",
                )
            raise Er7Error("the message must start with an MSH segment")
        if name == "MSH":
            if segments:
                raise Er7Error(f"line {number}: a second MSH segment (one message per MLLP frame)")
            fields = ["MSH", enc.field, *line[4:].split(enc.field)]
        else:
            fields = line.split(enc.field)
        seen[name] = seen.get(name, 0) + 1
        segments.append(Segment(fields, enc, header.codec, seen[name]))
    if not segments:
        raise Er7Error("the message is empty")
    return Message(header, segments, text)


def join_components(encoding: Encoding, *values: str) -> str:
    """Escaped `values` joined as components of one field, trailing empty ones dropped."""
    parts = [encoding.escape_text(v) if v else "" for v in values]
    while parts and not parts[-1]:
        parts.pop()
    return encoding.component.join(parts)


def build_segment(encoding: Encoding, name: str, fields: list[str]) -> str:
    """A segment from already-encoded field values, trailing empty fields dropped."""
    fields = list(fields)
    while fields and not fields[-1]:
        fields.pop()
    return encoding.field.join([name, *fields])
