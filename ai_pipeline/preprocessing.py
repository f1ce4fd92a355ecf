"""From DICOM files to model input, and the image-quality checks the trust score uses.

No Django in here: the training script uses the same functions, so a model sees at inference
exactly the preprocessing it was trained with.

Decoding (`decode_frames`): pydicom reads every stored transfer syntax; the pixel data of the
compressed ones is decoded by the pylibjpeg plugins (JPEG baseline/extended/lossless and JPEG-LS by
pylibjpeg-libjpeg, JPEG 2000 by pylibjpeg-openjpeg, RLE by pylibjpeg-rle or pydicom itself), and
implicit/explicit little endian, explicit big endian and deflated explicit little endian by pydicom.
A frame that cannot be decoded raises `PixelDecodeError` naming the instance and its transfer
syntax; nothing is guessed. Colour images (RGB, YBR_*, PALETTE COLOR) come out as RGB.

Per frame, in this order (`prepare_frame`):

1. modality LUT: stored values x slope + intercept (Rescale Slope/Intercept at the top level or in
   the enhanced multi-frame functional groups; a Modality LUT Sequence is applied by pydicom), so CT
   values are Hounsfield units;
2. resize to the model's input size (bilinear, antialiased when shrinking: Pillow on float32);
3. windowing (DICOM linear VOI function, PS3.3 C.11.2.1.2.1, to [0, 1]; one window per channel
   allowed) or normalisation (fixed or per-image z-score, per-image min-max);
4. MONOCHROME1 images are inverted after step 3 (1 - y; -z for z-scores), so bright means dense
   whatever the photometric interpretation;
5. channels: a grey image is repeated into 3 channels for a 3-channel model, an RGB image is
   converted to grey (ITU-R BT.601 luma) for a 1-channel model.

Slices of a series are ordered along the slice normal (Image Position/Orientation), else by
Instance Number; a slice model gets them as a batch (N, C, H, W), a volume model as (1, C, D, H, W)
after linear resampling along z to the input depth.

Quality checks (`assess_quality`), each a score in [0, 1] where 1 means "no defect" and each defect
multiplies the score down (docs/trust-score.md): slice spacing (missing slices, uneven or duplicate
positions), noise (robust Laplacian estimate, Immerkaer 1996 with a median absolute deviation),
bit depth, lossy compression, pixel spacing, number of slices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ai_pipeline.manifest import InputSpec, QualitySpec

# Transfer syntaxes whose compression loses information (PS3.5 Annex A / PS3.6).
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (may be lossy)
        "1.2.840.10008.1.2.4.201",  # HTJ2K (may be lossy)
        "1.2.840.10008.1.2.4.203",  # HTJ2K (may be lossy)
    }
)
_NOISE_SAMPLE_STRIDE = 8  # estimate noise on every 8th frame of a series (and its first)


class PixelDecodeError(Exception):
    """A DICOM instance whose pixel data cannot be read or decoded."""


# --- reading and decoding ---------------------------------------------------------------------


def read_dataset(source: str | Path | BinaryIO, *, name: str = "") -> Dataset:
    """The DICOM data set in `source` (a path or a binary file); PixelDecodeError if it is not DICOM."""
    try:
        return pydicom.dcmread(source)
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError) as exc:
        label = name or (str(source) if isinstance(source, str | Path) else "instance")
        raise PixelDecodeError(f"{label}: not a readable DICOM file: {exc}") from exc


def transfer_syntax_of(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else UID("1.2.840.10008.1.2")


def describe_transfer_syntax(uid: str) -> str:
    uid = UID(uid)
    return f"{uid.name} ({uid})" if uid.is_transfer_syntax else str(uid)


def has_pixels(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


@dataclass
class ImageFrame:
    """One decoded frame: where it is in space, how it was stored, its modality values."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str
    body_part: str
    instance_number: int | None
    frame: int  # 0-based frame index within the instance
    transfer_syntax_uid: str
    photometric: str  # as stored
    bits_stored: int
    lossy: bool
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None  # 6 direction cosines
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    slice_thickness: float | None
    # (rows, columns) float32 modality values for greyscale, (rows, columns, 3) RGB for colour.
    values: np.ndarray = field(repr=False)

    @property
    def is_color(self) -> bool:
        return self.values.ndim == 3

    @property
    def inverted(self) -> bool:
        return self.photometric == "MONOCHROME1"

    @property
    def slice_location(self) -> float | None:
        """Position along the slice normal (mm), when position and orientation are known."""
        if self.position is None or self.orientation is None or len(self.orientation) != 6:
            return None
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        normal = np.cross(row, col)
        return float(np.dot(np.asarray(self.position), normal))


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(math.isfinite(n) for n in numbers) else None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional-group macro (per-frame first, then shared) of an enhanced image."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and sequence in per_frame[frame]:
        items = per_frame[frame][sequence].value
        if items:
            return items[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0]:
        items = shared[0][sequence].value
        if items:
            return items[0]
    return None


def _rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """(slope, intercept) from the top level or the Pixel Value Transformation functional group."""
    source: Dataset | None = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else None
    if source is None:
        source = _group_item(ds, frame, "PixelValueTransformationSequence")
    if source is None:
        return None
    slope = _float(source.get("RescaleSlope", 1)) or 1.0
    intercept = _float(source.get("RescaleIntercept", 0)) or 0.0
    return slope, intercept


def _geometry(ds: Dataset, frame: int) -> tuple:
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    thickness = _float(ds.get("SliceThickness"))
    item = _group_item(ds, frame, "PlanePositionSequence")
    if item is not None:
        position = _floats(item.get("ImagePositionPatient"), 3) or position
    item = _group_item(ds, frame, "PlaneOrientationSequence")
    if item is not None:
        orientation = _floats(item.get("ImageOrientationPatient"), 6) or orientation
    item = _group_item(ds, frame, "PixelMeasuresSequence")
    if item is not None:
        spacing = _floats(item.get("PixelSpacing"), 2) or spacing
        thickness = _float(item.get("SliceThickness")) or thickness
    if spacing is None:  # projection images: the spacing at the detector
        spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
    return position, orientation, spacing, thickness


def decode_frames(ds: Dataset, *, name: str = "") -> list[ImageFrame]:
    """Every frame of `ds`, decoded, with the modality LUT applied; PixelDecodeError otherwise."""
    sop_uid = str(ds.get("SOPInstanceUID", "")) or name or "instance"
    syntax = transfer_syntax_of(ds)
    if not has_pixels(ds):
        raise PixelDecodeError(f"{sop_uid}: the instance has no pixel data")
    try:
        array = ds.pixel_array
    except (
        Exception
    ) as exc:  # the decoders raise many types (RuntimeError, ValueError, NotImplementedError...)
        raise PixelDecodeError(
            f"{sop_uid}: cannot decode the pixel data ({describe_transfer_syntax(syntax)}): {exc}"
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        array = array[np.newaxis]
    expected_ndim = 4 if samples > 1 else 3
    if array.ndim != expected_ndim or array.shape[0] != frames:
        raise PixelDecodeError(
            f"{sop_uid}: decoded pixel data has shape {array.shape}, expected {frames} frame(s) "
            f"of {samples} sample(s) ({describe_transfer_syntax(syntax)})"
        )
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        array = apply_color_lut(array, ds)
        samples = 3
    lossy = syntax in LOSSY_TRANSFER_SYNTAXES or str(ds.get("LossyImageCompression", "00")) == "01"
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    instance_number = ds.get("InstanceNumber")
    result = []
    for index in range(frames):
        pixels = array[index]
        if samples == 1:
            rescale = _rescale(ds, index)
            if "ModalityLUTSequence" in ds:
                from pydicom.pixels import apply_modality_lut

                values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
            elif rescale is not None:
                slope, intercept = rescale
                values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            else:
                values = pixels.astype(np.float32)
        else:
            values = pixels.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise PixelDecodeError(f"{sop_uid}: frame {index + 1} holds non-finite values")
        position, orientation, spacing, thickness = _geometry(ds, index)
        result.append(
            ImageFrame(
                sop_instance_uid=sop_uid,
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                modality=str(ds.get("Modality", "")).upper(),
                body_part=str(ds.get("BodyPartExamined", "")).upper(),
                instance_number=int(instance_number) if instance_number not in (None, "") else None,
                frame=index,
                transfer_syntax_uid=str(syntax),
                photometric=photometric,
                bits_stored=bits_stored,
                lossy=lossy,
                position=position,
                orientation=orientation,
                pixel_spacing=spacing,
                slice_thickness=thickness,
                values=values,
            )
        )
    return result


# --- value mapping ----------------------------------------------------------------------------


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear VOI function (PS3.3 C.11.2.1.2.1) to [0, 1].

    Below c - 0.5 - (w-1)/2: 0; above c - 0.5 + (w-1)/2: 1; linear in between.
    """
    values = np.asarray(values, dtype=np.float32)
    if width <= 1:
        return (values > center - 0.5).astype(np.float32)
    mapped = (values - np.float32(center - 0.5)) / np.float32(width - 1) + np.float32(0.5)
    return np.clip(mapped, 0.0, 1.0).astype(np.float32)


def normalise(
    values: np.ndarray, method: str, mean: float | None = None, std: float | None = None
) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if method == "minmax":
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros_like(values)
        return (values - low) / np.float32(high - low)
    if mean is None or std is None:
        mean, std = float(values.mean()), float(values.std())
        std = std if std > 1e-6 else 1.0
    return (values - np.float32(mean)) / np.float32(std)


def resize(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D float image (antialiased when shrinking)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (height, width):
        return values.copy()
    image = Image.fromarray(np.ascontiguousarray(values), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (..., 3) RGB array."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def prepare_values(values: np.ndarray, spec: InputSpec, *, inverted: bool = False) -> np.ndarray:
    """Modality values (H0, W0) or (H0, W0, 3) → model input (C, H, W) float32, steps 2-5 above."""
    height, width = spec.height, spec.width
    if values.ndim == 3:  # colour
        planes = [resize(values[..., c], height, width) for c in range(3)]
        if spec.channels == 1:
            planes = [to_grey(np.stack(planes, axis=-1))]
    else:
        planes = [resize(values, height, width)]
    if len(planes) == 1 and spec.channels == 3 and spec.windowing is not None:
        planes = planes * 3  # per-channel windows on the same grey plane
    mapped = []
    if spec.windowing is not None:
        windows = spec.windows
        for index, plane in enumerate(planes):
            window = windows[index] if index < len(windows) else windows[0]
            out = apply_window(plane, window.center, window.width)
            mapped.append(1.0 - out if inverted else out)
    else:
        norm = spec.normalisation
        assert norm is not None  # the manifest guarantees one of the two
        for plane in planes:
            out = normalise(plane, norm.method, norm.mean, norm.std)
            if inverted:
                out = 1.0 - out if norm.method == "minmax" else -out
            mapped.append(out)
    if len(mapped) == 1 and spec.channels == 3:
        mapped = mapped * 3
    return np.stack(mapped, axis=0).astype(np.float32)


def prepare_frame(frame: ImageFrame, spec: InputSpec) -> np.ndarray:
    return prepare_values(frame.values, spec, inverted=frame.inverted)


# --- series: ordering, batching ---------------------------------------------------------------


def frame_order_key(frame: ImageFrame) -> tuple:
    location = frame.slice_location
    return (
        0 if location is not None else 1,
        location if location is not None else 0.0,
        frame.instance_number if frame.instance_number is not None else 0,
        frame.frame,
    )


def batches(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most `size` along the first axis."""
    for start in range(0, len(array), size):
        yield array[start : start + size]


def resample_depth(volume: np.ndarray, depth: int) -> np.ndarray:
    """(C, D0, H, W) → (C, depth, H, W), linear along the slice axis."""
    current = volume.shape[1]
    if current == depth:
        return volume
    if current == 1:
        return np.repeat(volume, depth, axis=1)
    positions = np.linspace(0, current - 1, depth)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, current - 1)
    weight = (positions - low).astype(np.float32)[None, :, None, None]
    return (volume[:, low] * (1 - weight) + volume[:, high] * weight).astype(np.float32)


@dataclass
class FrameInfo:
    """What is kept of a frame once its pixels have been prepared."""

    sop_instance_uid: str
    frame: int
    instance_number: int | None
    slice_location: float | None
    transfer_syntax_uid: str
    bits_stored: int
    lossy: bool
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None

    @classmethod
    def of(cls, frame: ImageFrame) -> FrameInfo:
        return cls(
            sop_instance_uid=frame.sop_instance_uid,
            frame=frame.frame,
            instance_number=frame.instance_number,
            slice_location=frame.slice_location,
            transfer_syntax_uid=frame.transfer_syntax_uid,
            bits_stored=frame.bits_stored,
            lossy=frame.lossy,
            pixel_spacing=frame.pixel_spacing,
            slice_thickness=frame.slice_thickness,
        )


@dataclass
class PreparedSeries:
    """A series ready for the model: its frames in spatial order and their model input."""

    series_instance_uid: str
    modality: str
    body_part: str
    frames: list[FrameInfo]
    inputs: np.ndarray  # (N, C, H, W) for slice models; (1, C, D, H, W) for volume models
    noise_samples: list[float]
    value_range: float  # robust dynamic range (p99 - p1) of the sampled frames
    quality: QualityReport | None = None

    @property
    def count(self) -> int:
        return len(self.frames)


class SeriesBuilder:
    """Collects the frames of one series one at a time (full-resolution pixels are not kept)."""

    def __init__(self, series_instance_uid: str, spec: InputSpec) -> None:
        self.series_instance_uid = series_instance_uid
        self.spec = spec
        self.modality = ""
        self.body_part = ""
        self._frames: list[tuple[tuple, FrameInfo, np.ndarray]] = []
        self._noise: list[float] = []
        self._ranges: list[float] = []

    def add(self, frame: ImageFrame) -> None:
        self.modality = self.modality or frame.modality
        self.body_part = self.body_part or frame.body_part
        if len(self._frames) % _NOISE_SAMPLE_STRIDE == 0:
            grey = to_grey(frame.values) if frame.is_color else frame.values
            sigma = estimate_noise(grey)
            if sigma is not None:
                self._noise.append(sigma)
            low, high = np.percentile(grey, [1, 99])
            self._ranges.append(float(high - low))
        self._frames.append((frame_order_key(frame), FrameInfo.of(frame), prepare_frame(frame, self.spec)))

    def __len__(self) -> int:
        return len(self._frames)

    def build(self, quality: QualitySpec | None = None) -> PreparedSeries:
        ordered = sorted(self._frames, key=lambda item: item[0])
        frames = [info for _, info, _ in ordered]
        if ordered:
            stacked = np.stack([array for _, _, array in ordered], axis=0)  # (N, C, H, W)
        else:
            stacked = np.zeros((0, self.spec.channels, self.spec.height, self.spec.width), np.float32)
        if self.spec.kind == "volume" and len(stacked):
            volume = resample_depth(np.moveaxis(stacked, 0, 1), self.spec.size[0])
            stacked = volume[np.newaxis]
        series = PreparedSeries(
            series_instance_uid=self.series_instance_uid,
            modality=self.modality,
            body_part=self.body_part,
            frames=frames,
            inputs=np.ascontiguousarray(stacked, dtype=np.float32),
            noise_samples=list(self._noise),
            value_range=float(np.median(self._ranges)) if self._ranges else 0.0,
        )
        series.quality = assess_quality(series, self.spec, quality or QualitySpec())
        return series


def prepare_series(
    frames: Iterable[ImageFrame], spec: InputSpec, quality: QualitySpec | None = None
) -> PreparedSeries:
    """Prepare frames of one series in one go (tests, training); see `SeriesBuilder`."""
    builder: SeriesBuilder | None = None
    for frame in frames:
        if builder is None:
            builder = SeriesBuilder(frame.series_instance_uid, spec)
        builder.add(frame)
    if builder is None:
        raise ValueError("no frames to prepare")
    return builder.build(quality)


# --- quality checks ---------------------------------------------------------------------------


@dataclass
class QualityCheck:
    name: str
    score: float  # 1.0: no defect; each defect lowers it
    value: Any
    detail: str
    applicable: bool = True

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "score": round(self.score, 4),
            "value": self.value,
            "detail": self.detail,
            "applicable": self.applicable,
        }


@dataclass
class QualityReport:
    checks: list[QualityCheck]

    @property
    def score(self) -> float:
        """D_quality of the series: the product of the applicable checks' scores."""
        return float(np.prod([check.score for check in self.checks if check.applicable] or [1.0]))

    def check(self, name: str) -> QualityCheck:
        return next(check for check in self.checks if check.name == name)

    def as_dict(self) -> dict:
        return {"score": round(self.score, 4), "checks": [check.as_dict() for check in self.checks]}


def estimate_noise(values: np.ndarray) -> float | None:
    """Standard deviation of the image noise, in the image's units (None for tiny images).

    The 3x3 Laplacian-difference kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels smooth structure;
    on white noise of std s its response has std 6s. The median absolute deviation of the
    response (x 1.4826) is robust to edges; exact zeros (constant padding outside the field of
    view) are left out.
    """
    x = np.asarray(values, dtype=np.float32)
    if x.ndim != 2 or min(x.shape) < 8:
        return None
    response = (
        x[:-2, :-2] - 2 * x[:-2, 1:-1] + x[:-2, 2:]
        - 2 * x[1:-1, :-2] + 4 * x[1:-1, 1:-1] - 2 * x[1:-1, 2:]
        + x[2:, :-2] - 2 * x[2:, 1:-1] + x[2:, 2:]
    )  # fmt: skip
    response = response[response != 0]
    if response.size < 16:
        return 0.0
    mad = float(np.median(np.abs(response - np.median(response))))
    return 1.4826 * mad / 6.0


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def check_slice_spacing(
    locations: Sequence[float | None], tolerance: float = 0.05, *, volume: bool = False
) -> QualityCheck:
    """Missing slices, uneven gaps and duplicate positions along the slice normal."""
    count = len(locations)
    if count < 3:
        return QualityCheck(
            "slice_spacing", 1.0, None, f"{count} slice(s): nothing to check", applicable=False
        )
    unknown = sum(1 for location in locations if location is None)
    if unknown == count and not volume:
        return QualityCheck(
            "slice_spacing",
            1.0,
            None,
            "no slice positions (projection images): nothing to check",
            applicable=False,
        )
    if unknown:
        return QualityCheck(
            "slice_spacing",
            0.8,
            None,
            "slice positions unknown (no Image Position/Orientation): gaps cannot be checked",
        )
    ordered = np.sort(np.asarray(locations, dtype=np.float64))
    gaps = np.diff(ordered)
    duplicates = int(np.sum(gaps < 1e-3))
    real = gaps[gaps >= 1e-3]
    if real.size == 0:
        return QualityCheck(
            "slice_spacing", 0.3, {"duplicates": duplicates}, "every slice at the same position"
        )
    nominal = float(np.median(real))
    steps = np.rint(real / nominal)
    missing = int(np.sum(np.maximum(steps - 1, 0)))
    single = real[steps <= 1]
    deviation = float(np.max(np.abs(single - nominal)) / nominal) if single.size else 0.0
    score = max(0.0, 1.0 - 2.0 * missing / (count + missing))
    problems = []
    if missing:
        problems.append(f"{missing} missing slice(s)")
    if deviation > tolerance:
        score *= max(0.5, 1.0 - 2.0 * (deviation - tolerance))
        problems.append(f"uneven spacing (gaps deviate up to {deviation:.0%} from {nominal:.3g} mm)")
    if duplicates:
        score *= max(0.5, 1.0 - duplicates / count)
        problems.append(f"{duplicates} duplicate position(s)")
    value = {
        "nominal_mm": _round(nominal),
        "missing": missing,
        "max_deviation": _round(deviation, 4),
        "duplicates": duplicates,
    }
    detail = ", ".join(problems) if problems else f"{count} slices evenly spaced at {nominal:.3g} mm"
    return QualityCheck("slice_spacing", score, value, detail)


def noise_limits(spec: InputSpec, quality: QualitySpec, value_range: float) -> tuple[float, float]:
    """(good, bad) noise levels in modality units for this model."""
    if spec.windowing is not None:
        reference = min(window.width for window in spec.windows)
    elif spec.normalisation is not None and spec.normalisation.std is not None:
        reference = spec.normalisation.std
    else:
        reference = value_range or 1.0
    good = quality.noise_good if quality.noise_good is not None else 0.03 * reference
    bad = quality.noise_bad if quality.noise_bad is not None else 0.25 * reference
    return good, max(bad, good * 1.01)


def check_noise(samples: Sequence[float], good: float, bad: float) -> QualityCheck:
    if not samples:
        return QualityCheck("noise", 1.0, None, "image too small to estimate noise", applicable=False)
    sigma = float(np.median(samples))
    if sigma <= good:
        score = 1.0
    elif sigma >= bad:
        score = 0.0
    else:
        score = 1.0 - (sigma - good) / (bad - good)
    detail = f"noise {sigma:.3g} (fine up to {good:.3g}, useless from {bad:.3g})"
    return QualityCheck(
        "noise", score, {"sigma": _round(sigma), "good": _round(good), "bad": _round(bad)}, detail
    )


def check_bit_depth(bits: Sequence[int], minimum: int) -> QualityCheck:
    lowest = min(bits) if bits else minimum
    score = 1.0 if lowest >= minimum else max(0.3, lowest / minimum)
    detail = f"{lowest} bits stored" + (
        "" if score == 1.0 else f", fewer than the {minimum} the model expects"
    )
    return QualityCheck("bit_depth", score, lowest, detail)


def check_compression(lossy: Sequence[bool], syntaxes: Sequence[str]) -> QualityCheck:
    count = sum(1 for flag in lossy if flag)
    if not count:
        return QualityCheck("compression", 1.0, 0, "no lossy compression")
    names = sorted({describe_transfer_syntax(uid) for uid, flag in zip(syntaxes, lossy, strict=True) if flag})
    return QualityCheck("compression", 0.9, count, f"{count} frame(s) lossy compressed: {', '.join(names)}")


def check_pixel_spacing(
    spacings: Sequence[tuple[float, float] | None], expected: tuple[float, float] | None
) -> QualityCheck:
    known = [spacing for spacing in spacings if spacing is not None]
    if not known:
        return QualityCheck("pixel_spacing", 0.7, None, "no pixel spacing: physical size unknown")
    row, col = (float(np.median([s[0] for s in known])), float(np.median([s[1] for s in known])))
    score, problems = 1.0, []
    if abs(row - col) / max(row, col) > 0.05:
        score *= 0.9
        problems.append(f"anisotropic pixels {row:.3g} x {col:.3g} mm")
    if expected is not None:
        low, high = expected
        largest = max(row, col)
        smallest = min(row, col)
        if largest > high:
            score *= max(0.3, high / largest)
            problems.append(f"coarser than {high:g} mm")
        elif smallest < low:
            score *= max(0.5, smallest / low)
            problems.append(f"finer than {low:g} mm")
    detail = ", ".join(problems) if problems else f"{row:.3g} x {col:.3g} mm"
    return QualityCheck("pixel_spacing", score, [_round(row, 4), _round(col, 4)], detail)


def check_slice_count(count: int, minimum: int) -> QualityCheck:
    if minimum <= 1:
        return QualityCheck("slice_count", 1.0, count, f"{count} slice(s)", applicable=count > 0)
    score = 1.0 if count >= minimum else count / minimum
    detail = f"{count} slice(s)" + ("" if score == 1.0 else f", fewer than the {minimum} the model expects")
    return QualityCheck("slice_count", score, count, detail)


def assess_quality(series: PreparedSeries, spec: InputSpec, quality: QualitySpec) -> QualityReport:
    frames = series.frames
    good, bad = noise_limits(spec, quality, series.value_range)
    checks = [
        check_slice_spacing(
            [f.slice_location for f in frames], quality.spacing_tolerance, volume=spec.kind == "volume"
        ),
        check_noise(series.noise_samples, good, bad),
        check_bit_depth([f.bits_stored for f in frames], quality.min_bits_stored),
        check_compression([f.lossy for f in frames], [f.transfer_syntax_uid for f in frames]),
        check_pixel_spacing([f.pixel_spacing for f in frames], quality.pixel_spacing_mm),
        check_slice_count(len(frames), spec.min_slices),
    ]
    return QualityReport(checks)
