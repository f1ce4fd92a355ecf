"""Pixel data of every stored transfer syntax decodes (pydicom + pylibjpeg); what cannot is named."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from ai_pipeline.preprocessing import PixelDecodeError, decode_frames, has_pixels, read_dataset
from tests.ai_pipeline.support import ct_series

# The same 64 x 64 MR image in six transfer syntaxes (pydicom's test files): all lossless.
LOSSLESS_MR = {
    "MR_small.dcm": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",  # implicit VR little endian
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",  # explicit VR big endian
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE lossless
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
}

# Other syntaxes: (file, transfer syntax, shape of the first frame, lossy)
OTHER_SYNTAXES = [
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", (100, 100, 3), True),  # JPEG baseline, YBR_FULL
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", (1024, 256), True),  # JPEG extended, 12 bit
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", (100, 100, 3), False),  # JPEG lossless SV1
    ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", (50, 10), True),  # JPEG-LS near-lossless
    ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91", (512, 512), True),  # JPEG 2000 (CT)
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", (512, 512), False),  # deflated explicit VR LE
    ("ExplVR_BigEnd.dcm", "1.2.840.10008.1.2.2", (60, 80, 3), False),  # big endian RGB
    ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5", (100, 100, 3), False),  # RLE RGB
    ("examples_palette.dcm", "1.2.840.10008.1.2.1", (350, 800, 3), False),  # palette colour -> RGB
]


def decode_file(name: str):
    return decode_frames(read_dataset(get_testdata_file(name)))


@pytest.mark.parametrize(("name", "syntax"), LOSSLESS_MR.items())
def test_lossless_syntaxes_decode_to_the_same_values(name, syntax):
    reference = decode_file("MR_small.dcm")[0].values
    (frame,) = decode_file(name)
    assert frame.transfer_syntax_uid == syntax
    assert frame.values.dtype == np.float32
    assert frame.values.shape == (64, 64)
    np.testing.assert_array_equal(frame.values, reference)
    assert frame.lossy is False


@pytest.mark.parametrize(("name", "syntax", "shape", "lossy"), OTHER_SYNTAXES)
def test_other_syntaxes_decode(name, syntax, shape, lossy):
    frames = decode_file(name)
    assert frames[0].transfer_syntax_uid == syntax
    assert frames[0].values.shape == shape
    assert np.isfinite(frames[0].values).all()
    assert frames[0].lossy is lossy


def test_jpeg_baseline_colour_comes_out_as_rgb_close_to_the_original():
    original = decode_file("SC_rgb_small_odd.dcm")[0].values
    jpeg = decode_file("SC_rgb_small_odd_jpeg.dcm")[0].values
    assert jpeg.shape == original.shape == (3, 3, 3)
    assert np.abs(jpeg - original).max() < 12  # lossy, YBR_FULL converted to RGB


def test_ct_values_are_hounsfield_units():
    (frame,) = decode_file("CT_small.dcm")
    ds = read_dataset(get_testdata_file("CT_small.dcm"))
    stored = ds.pixel_array.astype(np.float32)
    np.testing.assert_array_equal(frame.values, stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert frame.values.min() == -896.0  # air-ish, in HU


def test_multi_frame_instances_give_one_frame_each():
    frames = decode_file("examples_ybr_color.dcm")
    assert len(frames) == 30
    assert [f.frame for f in frames[:3]] == [0, 1, 2]


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian]
)
def test_a_synthetic_ct_slice_survives_every_syntax_we_can_write(syntax):
    (reference,) = ct_series(slices=1, size=96)
    expected = decode_frames(reference)[0].values
    (ds,) = ct_series(slices=1, size=96)
    if syntax.is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    (frame,) = decode_frames(read_dataset(buffer))
    assert frame.transfer_syntax_uid == syntax
    np.testing.assert_array_equal(frame.values, expected)
    assert expected.min() >= -1024  # HU after RescaleIntercept -1024


def test_undecodable_pixel_data_names_the_instance_and_its_syntax():
    (ds,) = ct_series(slices=1, size=32)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb not a jpeg stream \xff\xd9"])
    with pytest.raises(PixelDecodeError) as caught:
        decode_frames(ds)
    message = str(caught.value)
    assert str(ds.SOPInstanceUID) in message
    assert "JPEG Baseline (Process 1) (1.2.840.10008.1.2.4.50)" in message


def test_a_file_the_decoders_reject_is_a_decode_error():
    with pytest.raises(PixelDecodeError, match=r"cannot decode the pixel data \(JPEG Extended"):
        decode_file("JPEG-lossy.dcm")


def test_instances_without_pixels_and_non_dicom_files(tmp_path):
    sr = read_dataset(get_testdata_file("test-SR.dcm"))
    assert not has_pixels(sr)
    with pytest.raises(PixelDecodeError, match="no pixel data"):
        decode_frames(sr)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello")
    with pytest.raises(PixelDecodeError, match="not a readable DICOM file"):
        read_dataset(junk)
