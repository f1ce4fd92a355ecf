"""Rescale, windowing, normalisation, resizing, channels and slice order: the numbers."""

from __future__ import annotations

import numpy as np
import pytest

from ai_pipeline.manifest import InputSpec
from ai_pipeline.preprocessing import (
    apply_window,
    batches,
    decode_frames,
    normalise,
    prepare_series,
    prepare_values,
    resample_depth,
    resize,
    to_grey,
)
from tests.ai_pipeline.support import ct_series


def spec(**fields) -> InputSpec:
    values = {"kind": "slice", "size": [8, 8], "windowing": {"center": 40, "width": 400}}
    values.update(fields)
    return InputSpec.model_validate(values)


def test_rescale_slope_and_intercept_give_modality_values():
    (ds,) = ct_series(slices=1, size=16)
    ds.PixelData = np.full((16, 16), 1024, dtype=np.uint16).tobytes()
    assert decode_frames(ds)[0].values[0, 0] == 0.0  # 1024 * 1 - 1024 HU: water
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    assert decode_frames(ds)[0].values[0, 0] == 1048.0
    del ds.RescaleSlope, ds.RescaleIntercept
    assert decode_frames(ds)[0].values[0, 0] == 1024.0  # no modality LUT: stored values


def test_the_dicom_linear_window_function():
    # PS3.3 C.11.2.1.2.1 with c=40, w=400: 0 at or below -160, 1 above 239, linear in between.
    values = np.array([-1000, -160, -159.5, 39.5, 40, 239, 240, 3000], dtype=np.float32)
    mapped = apply_window(values, 40, 400)
    expected = [0.0, 0.0, 0.5 / 399, 0.5, 0.5 + 0.5 / 399, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(mapped, expected, atol=1e-6)
    np.testing.assert_array_equal(apply_window(np.array([0.0, 1.0]), 1, 1), [0.0, 1.0])  # width 1: a step


def test_normalisations():
    values = np.array([[0, 10], [20, 30]], dtype=np.float32)
    np.testing.assert_allclose(normalise(values, "minmax"), [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    np.testing.assert_allclose(normalise(values, "zscore", 10, 5), [[-2, 0], [2, 4]])
    per_image = normalise(values, "zscore")
    assert abs(float(per_image.mean())) < 1e-6
    assert abs(float(per_image.std()) - 1) < 1e-6
    np.testing.assert_array_equal(normalise(np.ones((2, 2)), "minmax"), np.zeros((2, 2)))


def test_resize_shrinks_with_antialiasing_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 30, size=(256, 256)).astype(np.float32)
    small = resize(image, 64, 64)
    assert small.shape == (64, 64)
    assert abs(float(small.mean()) - float(image.mean())) < 1.0
    assert float(small.std()) < 15  # averaging over ~4x4 pixels cuts the noise
    assert resize(image, 256, 256) is not image  # same size: a copy


def test_prepare_values_windows_resizes_and_orders_channels():
    hu = np.full((32, 32), 40, dtype=np.float32)
    out = prepare_values(hu, spec())
    assert out.shape == (1, 8, 8)
    np.testing.assert_allclose(out, 0.50125, atol=1e-5)
    three = spec(
        channels=3,
        windowing=[{"center": 40, "width": 400}, {"center": 40, "width": 80}, {"center": 500, "width": 2000}],
    )
    out = prepare_values(hu, three)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out[:, 0, 0], [0.50125, 0.50633, 0.27013], atol=1e-4)
    out = prepare_values(hu, spec(windowing=None, normalisation={"method": "zscore", "mean": 0, "std": 20}))
    np.testing.assert_allclose(out, 2.0)


def test_monochrome1_is_inverted_after_windowing():
    hu = np.full((8, 8), -100, dtype=np.float32)
    plain = prepare_values(hu, spec())
    inverted = prepare_values(hu, spec(), inverted=True)
    np.testing.assert_allclose(plain + inverted, 1.0)


def test_colour_becomes_grey_for_a_one_channel_model():
    rgb = np.zeros((8, 8, 3), dtype=np.float32)
    rgb[..., 0] = 100
    np.testing.assert_allclose(to_grey(rgb), 29.9, rtol=1e-6)
    out = prepare_values(rgb, spec(windowing=None, normalisation={"method": "zscore", "mean": 0, "std": 1}))
    assert out.shape == (1, 8, 8)
    np.testing.assert_allclose(out, 29.9, rtol=1e-5)


def test_slices_are_ordered_along_the_normal_whatever_the_arrival_order():
    datasets = ct_series(slices=6, size=32)
    shuffled = [datasets[i] for i in (3, 0, 5, 1, 4, 2)]
    series = prepare_series((f for ds in shuffled for f in decode_frames(ds)), spec())
    assert [f.instance_number for f in series.frames] == [1, 2, 3, 4, 5, 6]
    assert series.inputs.shape == (6, 1, 8, 8)
    locations = [f.slice_location for f in series.frames]
    assert locations == sorted(locations)


def test_without_positions_instance_numbers_order_the_slices():
    datasets = ct_series(slices=4, size=32)
    for ds in datasets:
        del ds.ImagePositionPatient
    shuffled = [datasets[i] for i in (2, 0, 3, 1)]
    series = prepare_series((f for ds in shuffled for f in decode_frames(ds)), spec())
    assert [f.instance_number for f in series.frames] == [1, 2, 3, 4]


def test_a_volume_model_gets_one_resampled_volume():
    datasets = ct_series(slices=5, size=32)
    volume = spec(kind="volume", size=[8, 16, 16])
    series = prepare_series((f for ds in datasets for f in decode_frames(ds)), volume)
    assert series.inputs.shape == (1, 1, 8, 16, 16)
    ramp = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1) * np.ones((1, 3, 2, 2), np.float32)
    np.testing.assert_allclose(resample_depth(ramp, 5)[0, :, 0, 0], [0, 0.5, 1, 1.5, 2])


def test_batches_split_along_the_first_axis():
    chunks = list(batches(np.zeros((70, 1, 2, 2)), 32))
    assert [len(chunk) for chunk in chunks] == [32, 32, 6]


def test_a_series_needs_frames():
    with pytest.raises(ValueError, match="no frames"):
        prepare_series([], spec())
