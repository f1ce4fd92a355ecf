"""`raw_values` (the ingest path's DICOM JSON and text of encoded values, without pydicom) answers
exactly what pydicom does wherever it answers at all: element by element, over every element of
every DICOM file that comes with pydicom (its test files and character set files: all transfer
syntaxes and encodings, odd values included), plus values made to be awkward."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson
import pydicom.data
import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from integrations.dicom import raw_values, services


def _dicom_files() -> list[Path]:
    """The files that come with pydicom (its test and character set files; none downloaded)."""
    root = Path(pydicom.data.__file__).parent
    files = []
    for path in sorted([*(root / "test_files").rglob("*"), *(root / "charset_files").rglob("*")]):
        if not path.is_file():
            continue
        try:
            dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM, or deliberately unreadable: nothing to compare
            continue
        files.append(path)
    return files


FILES = _dicom_files()


def _pydicom_json(dataset: Dataset, tag: int) -> bytes | None:
    """orjson of pydicom's DICOM JSON of the element (None when pydicom cannot convert it): bytes,
    so that an int where pydicom has a float (or the other way) counts as a difference."""
    try:
        return orjson.dumps(
            dataset[tag].to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 20)
        )
    except Exception:
        return None


def _compare(dataset: Dataset, counts: dict[str, int]) -> list[str]:
    """Every top-level element of `dataset` still in its raw form: raw_values against pydicom."""
    charset = dataset.get_item(0x00080005)
    if charset is not None and not isinstance(charset.value, bytes):  # dcmread decoded it already
        value = charset.value
        charset = "\\".join(
            value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        )
        ascii_text = raw_values.ascii_charset(charset.encode("latin-1"))
    else:
        ascii_text = raw_values.ascii_charset(charset.value if charset is not None else None)
    differences = []
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.tag.group in (0x0002, 0x7FE0):
            continue
        vr = raw_values.element_vr(tag, raw.VR)
        if vr is None:
            continue
        ours = raw_values.element_json(vr, raw.value, raw.is_little_endian, ascii_text)
        if ours is not None:
            theirs = _pydicom_json(dataset, tag)
            counts[vr] = counts.get(vr, 0) + 1
            if orjson.dumps(ours) != theirs:
                differences.append(f"{Tag(tag)} {vr} {raw.value[:60]!r}: ours {ours} pydicom {theirs}")
        if vr == "UI":
            text = raw_values.uid_text(raw.value)
            if text is not None and text != services._text(dataset, tag):
                differences.append(f"{Tag(tag)} UI text {text!r} != {services._text(dataset, tag)!r}")
        if vr == "IS":
            number = raw_values.plain_integer(raw.value)
            if number is not None and not -(2**31) <= number < 2**31:
                number = None  # `services._int`'s range check, which callers apply
            if raw_values.plain_integer(raw.value) is not None and number != services._int(dataset, tag):
                differences.append(f"{Tag(tag)} IS {number!r} != {services._int(dataset, tag)!r}")
    return differences


def test_pydicoms_files_give_the_same_json_and_text() -> None:
    assert len(FILES) > 100, "pydicom's test files are missing"
    counts: dict[str, int] = {}
    differences = []
    for path in FILES:
        dataset = dcmread(path, stop_before_pixels=True)
        differences += [f"{path.name} {line}" for line in _compare(dataset, counts)]
    assert differences == []
    # Every VR the module decodes was compared, and often.
    assert set(counts) == {
        "AS",
        "CS",
        "DA",
        "DT",
        "TM",
        "UI",
        "DS",
        "IS",
        "LO",
        "SH",
        "PN",
        "US",
        "SS",
        "UL",
        "SL",
    }
    assert sum(counts.values()) > 5000


def _element(
    tag: int, vr: str | None, value: bytes, *, implicit: bool = False, little: bool = True
) -> Dataset:
    dataset = Dataset()
    dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, little)
    dataset.set_original_encoding(implicit, little)
    return dataset


AWKWARD = [
    (0x00280030, "DS", b"0.5\\0.5 "),
    (0x00280030, "DS", b" 1e3\\-.5"),
    (0x00280030, "DS", b"1\\\\2 "),  # an empty item
    (0x00280030, "DS", b"nan "),
    (0x00280030, "DS", b"1,5 "),
    (0x00280030, "DS", b"  "),
    (0x00201041, "DS", b"+12.000 "),
    (0x00200013, "IS", b"007 "),
    (0x00200013, "IS", b"1.0 "),
    (0x00200013, "IS", b"-2147483649 "),
    (0x00200013, "IS", b"1\\2 "),
    (0x00200013, "IS", b"\x00\x00"),
    (0x00080018, "UI", b"1.2.3\x00"),
    (0x00080018, "UI", b" 1.2.3 "),
    (0x00080018, "UI", b"1.2.3\\4.5\x00"),
    (0x00080018, "UI", b"1.2 3\x00"),
    (0x00080008, "CS", b"ORIGINAL\\\\AXIAL "),
    (0x00080008, "CS", b" LEADING "),
    (0x00080060, "CS", b"\x00\x00"),
    (0x00080020, "DA", b"20240101"),
    (0x00080030, "TM", b"101010.123 "),
    (0x0008002A, "DT", b"20240101101010+0100"),
    (0x00101010, "AS", b"042Y"),
    (0x00100020, "LO", b"ID 1 \\ ID2 "),
    (0x00100020, "LO", b"Ab\xe9 "),
    (0x00081030, "LO", b"  leading "),
    (0x00200010, "SH", b"\x00\x00"),
    (0x00100010, "PN", b"Doe^John "),
    (0x00100010, "PN", b"Doe^John\\Roe^Jane\x00"),
    (0x00100010, "PN", b"Doe^John=Yamada "),
    (0x00100010, "PN", b"Doe ^John "),
    (0x00100010, "PN", b"^^^^ "),
    (0x00280010, "US", struct.pack("<H", 512)),
    (0x00280010, "US", struct.pack("<3H", 1, 2, 3)),
    (0x00280010, "US", b"\x01"),  # a length that is no multiple of 2
    (0x00280106, "SS", struct.pack("<h", -5)),
    (0x00280106, "UL", struct.pack("<L", 70000)),
    (0x00280106, "SL", struct.pack("<l", -70000)),
]


@pytest.mark.parametrize(("tag", "vr", "value"), AWKWARD)
@pytest.mark.parametrize("little", [True, False])
def test_awkward_values_are_pydicoms_or_left_to_it(tag: int, vr: str, value: bytes, little: bool) -> None:
    dataset = _element(tag, vr, value, little=little)
    counts: dict[str, int] = {}
    assert _compare(dataset, counts) == []


def test_implicit_vr_takes_the_dictionarys_vr_and_gives_up_where_it_is_ambiguous() -> None:
    assert raw_values.element_vr(0x00280030, None) == "DS"
    assert raw_values.element_vr(0x00280106, None) is None  # US or SS
    assert raw_values.element_vr(0x00091001, None) is None  # private
    assert raw_values.element_vr(0x00280030, "UN") is None
    dataset = _element(0x00280030, None, b"0.5\\0.5 ", implicit=True)
    assert _compare(dataset, {}) == []
    assert raw_values.element_json("DS", b"0.5\\0.5 ", True, True) == {"vr": "DS", "Value": [0.5, 0.5]}


def test_text_under_other_character_sets_is_left_to_pydicom() -> None:
    assert raw_values.ascii_charset(None)
    assert raw_values.ascii_charset(b"ISO_IR 192")
    assert not raw_values.ascii_charset(b"\\ISO 2022 IR 87")
    assert not raw_values.ascii_charset(b"ISO_IR 13")
    assert raw_values.element_json("LO", b"ABC ", True, ascii_text=False) is None
    assert raw_values.element_json("PN", b"Doe^John ", True, ascii_text=False) is None
    # CS, UI, numbers and dates are ISO 8859-1 in pydicom whatever the character set.
    assert raw_values.element_json("CS", b"AXIAL ", True, ascii_text=False) == {
        "vr": "CS",
        "Value": ["AXIAL"],
    }


def test_another_pydicom_configuration_is_left_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom_config, "use_DS_decimal", True)
    assert raw_values.element_json("DS", b"0.5 ", True, True) is None
    monkeypatch.setattr(pydicom_config, "use_DS_decimal", False)
    assert raw_values.element_json("DS", b"0.5 ", True, True) == {"vr": "DS", "Value": [0.5]}


def test_the_ingest_header_gives_the_index_values_pydicom_gives() -> None:
    """`services.read_header(...)`'s JSON, instance number and texts (raw values, pydicom where
    they give up) equal `services._json` / `_int` / `_text` on the file as dcmread reads it, for
    the tags of every index level, on every pydicom file the ingest path would index."""
    tags = services.INSTANCE_TAGS + services.SERIES_TAGS + services.STUDY_TAGS + services.PATIENT_TAGS
    compared, differences = 0, []
    for path in FILES:
        try:
            header = services.read_header(path)
        except services.StoreRejected:
            continue  # not storable (no UIDs, malformed): the ingest path never indexes it
        compared += 1
        expected = dcmread(path, stop_before_pixels=True, specific_tags=services._HEADER_TAGS)
        if orjson.dumps(header.json(tags)) != orjson.dumps(services._json(expected, tags)):
            differences.append(f"{path.name}: JSON")
        if header.integer(0x00200013) != services._int(expected, 0x00200013):
            differences.append(f"{path.name}: Instance Number")
        differences += [
            f"{path.name}: text of {Tag(tag)}"
            for tag in services._HEADER_TAGS
            if header.text(tag) != services._text(expected, tag)
        ]
    assert differences == []
    assert compared > 100
