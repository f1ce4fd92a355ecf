"""The DICOM JSON the index keeps per instance is pydicom's, element for element, whether it was
converted or taken from the ingest path's per-element cache (`services._json`): the same for the
first instance of a series and for every later one, across encodings and character sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files

from integrations.dicom import services
from integrations.dicom.dataset_check import check_part10_file
from tests.dicom.conftest import pydicom_file

FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "ExplVR_BigEnd.dcm",
    "GDCMJ2K_TextGBR.dcm",  # GB18030
    "JPEG2000.dcm",
]
CHARSET_FILES = [
    "chrGerm.dcm",  # ISO_IR 100
    "chrJapMulti.dcm",  # ISO 2022 IR 13 / 87: the same bytes mean other text
    "chrRuss.dcm",  # ISO_IR 144
    "chrKoreanMulti.dcm",
    "chrX1.dcm",  # ISO_IR 192
]
TAGS = services.INSTANCE_TAGS + services.SERIES_TAGS + services.STUDY_TAGS + services.PATIENT_TAGS


def _pydicom_json(path) -> dict:
    ds = dcmread(path, stop_before_pixels=True)
    result = {}
    for tag in TAGS:
        element = ds.get(tag)
        if element is None:
            continue
        try:
            result[f"{tag:08X}"] = element.to_json_dict(
                bulk_data_element_handler=None, bulk_data_threshold=1024 * 1024
            )
        except Exception:
            continue
    return result


def _path(name: str) -> Path:
    if name in CHARSET_FILES:
        found = get_charset_files(name)
        if not found:
            pytest.fail(f"pydicom charset file {name} is not available")
        return Path(found[0])
    return pydicom_file(name)


@pytest.mark.parametrize("name", FILES + CHARSET_FILES)
def test_index_json_equals_pydicoms_first_time_and_from_the_cache(name: str) -> None:
    path = _path(name)
    expected = _pydicom_json(path)
    assert expected, f"{name} has none of the indexed attributes"
    for _ in range(2):  # the second read is answered from the cache
        header = dcmread(path, stop_before_pixels=True, specific_tags=services._HEADER_TAGS)
        assert services._json(header, TAGS) == expected


def test_a_cached_value_is_not_shared_between_instances() -> None:
    path = pydicom_file("CT_small.dcm")
    first = services._json(dcmread(path, stop_before_pixels=True), [0x00280030])
    first["00280030"]["Value"].append(99.0)
    second = services._json(dcmread(path, stop_before_pixels=True), [0x00280030])
    assert second["00280030"]["Value"] != first["00280030"]["Value"]


@pytest.mark.parametrize("name", FILES + CHARSET_FILES)
def test_the_header_captured_by_the_structural_check_reads_as_dcmread_does(name: str) -> None:
    """`read_header` takes the indexed attributes from the structural walk of the file instead of
    reading it again with pydicom (falling back to dcmread where it cannot): the same values."""
    path = _path(name)
    layout = check_part10_file(path, capture=services._HEADER_TAG_SET)
    header = services.read_header(path).dataset
    expected = dcmread(path, stop_before_pixels=True, specific_tags=services._HEADER_TAGS)
    assert services._json(header, TAGS) == _pydicom_json(path)
    for tag in services._HEADER_TAGS:
        assert services._text(header, tag) == services._text(expected, tag), f"{tag:08X}"
    if layout.captured is not None:
        assert set(layout.captured) == {tag for tag in services._HEADER_TAGS if tag in expected}
