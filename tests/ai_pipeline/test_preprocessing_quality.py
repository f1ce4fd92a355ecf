"""Image-quality checks of the trust score on synthetic series: gaps, uneven spacing, noise, depth, spacing."""

from __future__ import annotations

import numpy as np
import pytest

from ai_pipeline.manifest import InputSpec, QualitySpec
from ai_pipeline.preprocessing import (
    check_bit_depth,
    check_compression,
    check_noise,
    check_pixel_spacing,
    check_slice_count,
    check_slice_spacing,
    decode_frames,
    estimate_noise,
    prepare_series,
)
from tests.ai_pipeline.support import ct_series

SPEC = InputSpec.model_validate(
    {"kind": "slice", "size": [64, 64], "windowing": {"center": 40, "width": 400}, "min_slices": 8}
)
QUALITY = QualitySpec(min_bits_stored=12, pixel_spacing_mm=(0.4, 2.0))


def prepared(datasets):
    return prepare_series((f for ds in datasets for f in decode_frames(ds)), SPEC, QUALITY)


def test_a_regular_series_passes_every_check():
    series = prepared(ct_series(slices=12, size=128, lesion=False))
    report = series.quality
    spacing = report.check("slice_spacing")
    assert spacing.score == 1.0
    assert spacing.value["missing"] == 0
    assert spacing.value["nominal_mm"] == 3.0
    assert report.check("bit_depth").score == 1.0
    assert report.check("compression").score == 1.0
    assert report.check("pixel_spacing").score == 1.0
    assert report.check("slice_count").score == 1.0
    assert report.check("noise").score > 0.8  # phantom noise 6-22 HU against a 400 HU window
    assert report.score == pytest.approx(float(np.prod([c.score for c in report.checks if c.applicable])))


def test_a_missing_slice_is_found_and_lowers_the_score():
    series = prepared(ct_series(slices=12, size=64, lesion=False, skip=[5]))
    spacing = series.quality.check("slice_spacing")
    assert spacing.value["missing"] == 1
    assert "1 missing slice(s)" in spacing.detail
    assert spacing.score == pytest.approx(1 - 2 * 1 / 12)  # 11 slices + 1 missing
    two = prepared(ct_series(slices=12, size=64, lesion=False, skip=[3, 4])).quality.check("slice_spacing")
    assert two.value["missing"] == 2
    assert two.score < spacing.score


def test_uneven_spacing_is_reported():
    positions = [0, 3, 6, 9, 12.9, 15, 18, 21]  # one gap 3.9 mm, the next 2.1 mm
    series = prepared(ct_series(positions=positions, size=64, lesion=False))
    spacing = series.quality.check("slice_spacing")
    assert spacing.value["missing"] == 0
    assert spacing.value["max_deviation"] == pytest.approx(0.3, abs=1e-3)
    assert "uneven spacing" in spacing.detail
    assert spacing.score == pytest.approx(1 - 2 * (0.3 - 0.05))


def test_duplicate_positions_and_unknown_positions():
    duplicates = check_slice_spacing([0, 3, 3, 6, 9])
    assert duplicates.value["duplicates"] == 1
    assert duplicates.score < 1
    unknown = check_slice_spacing([0, None, 6])
    assert unknown.score == 0.8
    projections = check_slice_spacing([None, None, None])
    assert projections.applicable is False
    assert check_slice_spacing([None, None, None], volume=True).score == 0.8
    assert check_slice_spacing([0, 3]).applicable is False


def test_the_noise_estimate_finds_the_noise_in_structured_images():
    rng = np.random.default_rng(1)
    base = np.zeros((256, 256), dtype=np.float32)
    base[64:192, 64:192] = 400  # a strong edge must not count as noise
    for sigma in (5.0, 20.0):
        noisy = base + rng.normal(0, sigma, base.shape).astype(np.float32)
        assert estimate_noise(noisy) == pytest.approx(sigma, rel=0.1)
    padded = np.full((64, 64), -2000, dtype=np.float32)
    padded[16:48, 16:48] += rng.normal(0, 10, (32, 32)).astype(np.float32)
    assert estimate_noise(padded) == pytest.approx(10, rel=0.2)  # constant padding is left out
    assert estimate_noise(np.zeros((4, 4))) is None


def test_noisier_series_score_lower():
    quiet = prepared(ct_series(slices=8, size=128, lesion=False, seed=3))
    noisy = ct_series(slices=8, size=128, lesion=False, seed=3)
    rng = np.random.default_rng(0)
    for ds in noisy:
        pixels = np.frombuffer(ds.PixelData, dtype=np.uint16).astype(np.float32)
        ds.PixelData = np.clip(pixels + rng.normal(0, 60, pixels.shape), 0, 4095).astype(np.uint16).tobytes()
    loud = prepared(noisy)
    assert loud.quality.check("noise").value["sigma"] > quiet.quality.check("noise").value["sigma"] + 40
    assert loud.quality.check("noise").score < quiet.quality.check("noise").score
    assert loud.quality.score < quiet.quality.score


def test_noise_scores_between_the_limits():
    assert check_noise([10], 12, 100).score == 1.0
    assert check_noise([56], 12, 100).score == pytest.approx(0.5)
    assert check_noise([150], 12, 100).score == 0.0
    assert check_noise([], 12, 100).applicable is False


def test_bit_depth_compression_pixel_spacing_and_count():
    assert check_bit_depth([12, 12], 12).score == 1.0
    assert check_bit_depth([8], 12).score == pytest.approx(8 / 12)
    lossy = check_compression([True, False], ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"])
    assert lossy.score == 0.9
    assert "JPEG Baseline" in lossy.detail
    assert check_pixel_spacing([None], (0.4, 2.0)).score == 0.7
    assert check_pixel_spacing([(0.7, 0.7)], (0.4, 2.0)).score == 1.0
    assert check_pixel_spacing([(4.0, 4.0)], (0.4, 2.0)).score == pytest.approx(0.5)
    assert check_pixel_spacing([(0.7, 1.0)], None).score == pytest.approx(0.9)
    assert check_slice_count(4, 8).score == 0.5
    assert check_slice_count(1, 1).score == 1.0


def test_an_eight_bit_series_without_spacing_scores_lower():
    datasets = ct_series(slices=8, size=64, lesion=False)
    for ds in datasets:
        ds.BitsStored, ds.HighBit = 8, 7
        pixels = np.frombuffer(ds.PixelData, dtype=np.uint16)
        ds.PixelData = np.minimum(pixels, 255).astype(np.uint16).tobytes()
        del ds.PixelSpacing
    report = prepared(datasets).quality
    assert report.check("bit_depth").score == pytest.approx(8 / 12)
    assert report.check("pixel_spacing").score == 0.7
    assert report.score < 0.6
