"""Acknowledgements (ACK) and the errors they report.

Original acknowledgement mode: every message gets one ACK on the same connection, MSA-1

- `AA` once the message is stored and its result committed;
- `AE` (application error) when it was stored but could not be applied (bad field values, a
  database failure): it stays in the error queue for the admin to reprocess;
- `AR` (application reject) when the message itself is refused (no usable MSH, an unsupported
  version, message type or trigger event, a size over the limit).

An error names what was wrong in MSA-3 (text, at most 80 characters as older versions allow) and
in an ERR segment (where: segment, occurrence, field, repetition, component; the HL7 error code of
table 0357; the full text), in the form of the message's version: ERR-1 (ELD) before 2.5, ERR-2
(ERL), ERR-3, ERR-4 and ERR-8 from 2.5 on.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from django.conf import settings

from integrations.hl7v2.er7 import DEFAULT_ENCODING, Encoding, Header, build_segment, join_components

# HL7 table 0357, message error condition codes.
ERROR_CODES = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


class Hl7Error(Exception):
    """What was wrong with a message, where, and how to answer it (AE or AR)."""

    def __init__(
        self,
        text: str,
        *,
        code: str = "207",
        ack_code: str = "AE",
        segment: str = "",
        occurrence: int = 1,
        field: int = 0,
        repetition: int = 0,
        component: int = 0,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.ack_code = ack_code
        self.segment = segment
        self.occurrence = occurrence
        self.field = field
        self.repetition = repetition
        self.component = component

    @property
    def location(self) -> str:
        """ "PID[1]-7.1" style location for logs and the admin ("" when there is none)."""
        if not self.segment:
            return ""
        where = f"{self.segment}[{self.occurrence}]"
        if self.field:
            where += f"-{self.field}"
            if self.repetition > 1:
                where += f"({self.repetition})"
            if self.component:
                where += f".{self.component}"
        return where

    def describe(self) -> str:
        """The error as one line: code, name, location and text."""
        where = f" at {self.location}" if self.location else ""
        return f"{self.ack_code} {self.code} {ERROR_CODES.get(self.code, '')}{where}: {self.text}"


@dataclass(frozen=True)
class Ack:
    """An ACK as text (segments joined by CR) and its MSA-1 code."""

    code: str
    text: str

    def encode(self, codec: str) -> bytes:
        return self.text.encode(codec, errors="replace")


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def new_control_id() -> str:
    """A fresh MSH-10 (20 characters, the limit of ST in 2.5)."""
    return uuid.uuid4().hex[:20].upper()


def build_ack(header: Header | None, code: str, *, error: Hl7Error | None = None, text: str = "") -> Ack:
    """The ACK answering a message with `header` (None when no MSH could be read at all)."""
    enc: Encoding = header.encoding if header else DEFAULT_ENCODING

    def field(number: int) -> str:
        return header.raw(number) if header else ""

    version = field(12).split(enc.component)[0].strip() or "2.5.1"
    trigger = field(9).split(enc.component)[1] if enc.component in field(9) else ""
    message_type = f"ACK{enc.component}{trigger}" if trigger else "ACK"
    if trigger and version not in ("2.1", "2.2", "2.3"):
        message_type += f"{enc.component}ACK"
    msh = build_segment(
        enc,
        "MSH",
        [
            enc.msh2,
            enc.escape_text(settings.BTT_HL7_APPLICATION),
            enc.escape_text(settings.BTT_HL7_FACILITY),
            field(3),
            field(4),
            _timestamp(),
            "",
            message_type,
            new_control_id(),
            field(11) or "P",
            field(12) or version,
            "",
            "",
            "",
            "",
            "",
            field(18),
        ],
    )
    message_text = (error.text if error else text)[:80]
    segments = [msh, build_segment(enc, "MSA", [code, field(10), enc.escape_text(message_text)])]
    if error is not None:
        segments.append(_err_segment(enc, version, error))
    return Ack(code, "\r".join(segments) + "\r")


def _err_segment(enc: Encoding, version: str, error: Hl7Error) -> str:
    name = ERROR_CODES.get(error.code, "")
    if version in ("2.3", "2.3.1", "2.4"):
        # ERR-1 ELD: segment ID ^ sequence ^ field position ^ code identifying error (CE).
        code = enc.subcomponent.join([error.code, enc.escape_text(f"{name}: {error.text}"), "HL70357"])
        location = [error.segment, str(error.occurrence) if error.segment else "", str(error.field or "")]
        eld = enc.component.join([enc.escape_text(v) for v in location] + [code])
        return build_segment(enc, "ERR", [eld])
    erl = join_components(
        enc,
        error.segment,
        str(error.occurrence) if error.segment else "",
        str(error.field) if error.field else "",
        str(error.repetition) if error.field and error.repetition else ("1" if error.field else ""),
        str(error.component) if error.component else "",
    )
    severity = "E"
    return build_segment(
        enc,
        "ERR",
        [
            "",
            erl,
            join_components(enc, error.code, name, "HL70357"),
            severity,
            "",
            "",
            "",
            enc.escape_text(error.text),
        ],
    )
