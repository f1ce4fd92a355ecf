"""A sender that puts its file's bytes on the wire gets exactly those bytes stored.

pynetdicom as the SCU with `STORE_SEND_CHUNKED_DATASET`: the data set of each file goes out
without being decoded, so the node's stored file must hold the file's data set byte for byte
(trailing padding, group lengths, odd encodings and all), behind File Meta naming the same
transfer syntax. Includes transfer syntaxes DCMTK's storescu cannot propose (JPEG lossless
process 14, raw deflated bytes) and a large instance streamed to disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from integrations.dicom import services
from integrations.dicom.dataset_check import read_file_meta
from integrations.dicom.models import Instance
from tests.dicom.conftest import DicomNode, pydicom_file
from tests.dicom.store_support import (
    dataset_bytes,
    make_ct,
    send_file_raw,
    with_transfer_syntax,
    write_part10,
)

pytestmark = pytest.mark.django_db(transaction=True)

FILES = [
    "CT_small.dcm",  # ends with Data Set Trailing Padding, which DCMTK would drop
    "MR_small_padded.dcm",
    "MR_small_expb.dcm",  # big endian with group lengths
    "ExplVR_BigEnd.dcm",
    "MR_small_implicit.dcm",
    "image_dfl.dcm",  # deflated: the compressed bytes as they are
    "SC_rgb_rle_32bit_2frame.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000, GB18030 text
    "examples_jpeg2k.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "693_J2KI.dcm",
    "examples_palette.dcm",
    "reportsi.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "liver_expb_1frame.dcm",
]


def _assert_stored_as_is(node: DicomNode, source: Path) -> Instance:
    header = dcmread(source, stop_before_pixels=True)
    status = send_file_raw(node.host, node.port, source, called_ae=node.aet)
    assert status.Status == 0x0000, status
    stored = services.instance_file(str(header.SOPInstanceUID))
    assert read_file_meta(stored.path).transfer_syntax_uid == read_file_meta(source).transfer_syntax_uid
    assert dataset_bytes(stored.path) == dataset_bytes(source)
    return Instance.objects.get(sop_instance_uid=header.SOPInstanceUID)


@pytest.mark.parametrize("name", FILES)
def test_file_bytes_are_stored_unchanged(dicom_node: DicomNode, name: str) -> None:
    instance = _assert_stored_as_is(dicom_node, pydicom_file(name))
    assert instance.calling_ae == "PYNETDICOM"
    assert instance.transfer_syntax_uid == read_file_meta(pydicom_file(name)).transfer_syntax_uid


def test_jpeg_lossless_process_14(dicom_node: DicomNode, tmp_path: Path) -> None:
    """1.2.840.10008.1.2.4.57 (a Selection Value 1 stream is a valid process 14 one)."""
    source = with_transfer_syntax(
        pydicom_file("SC_rgb_jpeg_gdcm.dcm"), "1.2.840.10008.1.2.4.57", tmp_path / "p14.dcm"
    )
    instance = _assert_stored_as_is(dicom_node, source)
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.4.57"


def test_a_large_instance_streams_to_disk(dicom_node: DicomNode, tmp_path: Path) -> None:
    """A 40 MB image (2048 x 2048 x 5 frames, 16 bit) arrives in thousands of PDUs and is stored intact."""
    ds = make_ct(rows=2048, columns=2048, description="large")
    ds.NumberOfFrames = 5
    ds.PixelData = bytes(range(256)) * (2048 * 2048 * 2 * 5 // 256)
    source = write_part10(ds, tmp_path / "large.dcm")
    instance = _assert_stored_as_is(dicom_node, source)
    assert instance.file_size == services.instance_file(instance.sop_instance_uid).path.stat().st_size
    assert instance.file_size > 40 * 1024 * 1024
    assert instance.tags["00280008"]["Value"] == [5]
