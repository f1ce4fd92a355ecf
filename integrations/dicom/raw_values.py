"""DICOM JSON and text of encoded element values, for the common simple VRs, without pydicom.

The ingest path keeps the DICOM JSON (PS3.18 F.2) of an instance's indexed attributes. pydicom gets
there through a data set of raw elements, their conversion to Python values (`UID`, `DSfloat`,
`IS`, `MultiValue`...) and `DataElement.to_json_dict`: about a fifth of the node's CPU per stored
instance. For the VRs an instance's indexed attributes mostly have (UI, CS, DA, TM, DT, AS, IS,
DS, LO, SH, PN, US, SS, UL, SL), the JSON follows from the value's bytes by a few string
operations. This module does exactly those, and gives up (returns None) wherever the value is
anything but plain, so that the caller lets pydicom convert it:

- numbers that are not plain decimal numbers, empty items of a number, IS values that are not
  integers;
- text of LO, SH, PN outside printable ASCII, or under a Specific Character Set whose ASCII is
  not ASCII (ISO 2022 code extensions, the Japanese sets); PN with component groups (`=`) or
  padding inside;
- implicit VR elements whose VR the data dictionary does not give unambiguously, explicit UN,
  every other VR (sequences, binary VRs, AT, floats, long texts);
- pydicom configured to convert differently (`datetime_conversion`, `use_DS_decimal`...).

Contract: `element_json` and `uid_text` return exactly what pydicom would (`to_json_dict`, the text
`services._text` makes of the converted value), or None. tests/dicom/test_raw_values.py compares
them with pydicom element by element over pydicom's own test files.
"""

from __future__ import annotations

import re
import struct

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR

# Decoded as ISO 8859-1 whatever the character set (pydicom's `default_encoding`), split at
# backslashes after trailing spaces and NULs are removed: `values.convert_string`.
_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})
_TEXT_VRS = frozenset({"LO", "SH"})
_BINARY_INTEGERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
# Specific Character Set values under which printable ASCII bytes decode as ASCII, as pydicom
# decodes them (the default repertoire, Latin-1, UTF-8).
_ASCII_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_PRINTABLE_ASCII = re.compile(rb"[\x20-\x7e]*")
_UID_TEXT = re.compile(r"[\x21-\x5b\x5d-\x7e]*")  # printable, no space, no backslash
_DECIMAL = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
_INTEGER = re.compile(r" *[+-]?[0-9]+ *")

_dictionary_vrs: dict[int, str | None] = {}


def _pydicom_converts_plainly() -> bool:
    """Whether pydicom's configuration is the one this module reproduces."""
    return not (
        pydicom_config.datetime_conversion
        or pydicom_config.use_DS_decimal
        or pydicom_config.use_DS_numpy
        or pydicom_config.use_IS_numpy
    )


def element_vr(tag: int, found: str | None) -> str | None:
    """The VR pydicom gives the element: `found` (explicit VR), or the data dictionary's for an
    implicit VR element (`found` None); None where that is not one plain VR (unknown or private
    tags, 'US or SS'...) or is UN."""
    if found is None:
        if tag not in _dictionary_vrs:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = None
            _dictionary_vrs[tag] = vr if vr is not None and len(vr) == 2 else None
        found = _dictionary_vrs[tag]
    if found is None or found == "UN":
        return None
    return found


def ascii_charset(specific_character_set: bytes | None) -> bool:
    """Whether text under this Specific Character Set value (its encoded bytes; None when the
    data set has none) decodes printable ASCII bytes as ASCII."""
    if specific_character_set is None:
        return True
    return specific_character_set.decode("latin-1").strip(" \x00") in _ASCII_CHARSETS


def element_json(vr: str, value: bytes, little_endian: bool, ascii_text: bool) -> dict | None:
    """The DICOM JSON of one element as pydicom's `DataElement.to_json_dict` makes it (no bulk
    data handler), from its VR (`element_vr`) and encoded value; None when this module does not
    reproduce it (see the module docstring). `ascii_text`: `ascii_charset` of the data set."""
    if not _pydicom_converts_plainly():
        return None
    if vr in _STRING_VRS:
        items = value.decode("latin-1").rstrip(" \x00").split("\\")
        return _strings(vr, items)
    if vr == "UI":
        items = value.decode("latin-1").rstrip(" \x00").split("\\")
        return _strings(vr, [item.strip() for item in items])
    if vr == "DS":
        items = value.decode("latin-1").strip().rstrip(" \x00").split("\\")
        return _numbers(vr, items, _DECIMAL, float)
    if vr == "IS":
        items = value.decode("latin-1").strip().rstrip(" \x00").split("\\")
        return _numbers(vr, items, _INTEGER, int)
    if vr in _TEXT_VRS:
        if not ascii_text or _PRINTABLE_ASCII.fullmatch(value) is None:
            return None
        items = [item.rstrip("\x00 ") for item in value.decode("ascii").split("\\")]
        return _strings(vr, items)
    if vr == "PN":
        if not ascii_text:
            return None
        stripped = value.rstrip(b"\x00 ")
        if _PRINTABLE_ASCII.fullmatch(stripped) is None or b"=" in stripped:
            return None
        items = stripped.decode("ascii").split("\\")
        if any(item != item.strip() for item in items):
            return None
        if items == [""]:
            return {"vr": vr}
        return {"vr": vr, "Value": [{"Alphabetic": item} for item in items]}
    code = _BINARY_INTEGERS.get(vr)
    if code is not None:
        size = struct.calcsize("<" + code)
        if len(value) % size:
            return None
        if not value:
            return {"vr": vr}
        count = len(value) // size
        numbers = struct.unpack(("<" if little_endian else ">") + code * count, value)
        return {"vr": vr, "Value": list(numbers)}
    return None


def _strings(vr: str, items: list[str]) -> dict:
    if items == [""]:
        return {"vr": vr}  # empty: no Value
    return {"vr": vr, "Value": items}


def _numbers(vr: str, items: list[str], pattern: re.Pattern, number: type) -> dict | None:
    if items == [""]:
        return {"vr": vr}
    if not all(pattern.fullmatch(item) for item in items):
        return None  # empty items, other spellings: pydicom's own rules
    return {"vr": vr, "Value": [number(item) for item in items]}


def uid_text(value: bytes) -> str | None:
    """The text `services._text` makes of a UI element's value, for a single UID of printable
    characters without spaces (the only UIDs the index takes); None for anything else."""
    text = value.decode("latin-1").rstrip("\x00 ")
    if _UID_TEXT.fullmatch(text) is None:
        return None
    return text


def plain_integer(value: bytes) -> int | None:
    """The number of an IS element's value holding one plain integer (`services._int` before
    its range check); None for anything else."""
    text = value.decode("latin-1").strip().rstrip(" \x00")
    if _INTEGER.fullmatch(text) is None:
        return None
    return int(text)
