"""Pixel data of stored instances: uncompressed frames and rendered (consumer format) images.

Frames (PS3.18 10.4, Frame resources) are returned uncompressed, in Explicit VR Little Endian
layout: for native (uncompressed) pixel data the stored frame bytes unchanged (byte-swapped from
big endian); for encapsulated pixel data (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
RLE) the frame decoded by pydicom's pixel handlers (pylibjpeg, openjpeg, RLE), colour converted
to RGB as pydicom does. Only the requested frames are read from the file.

Rendered images (PS3.18 Rendered resources): the frame, through the Modality LUT (rescale slope
and intercept), the VOI LUT (the `window` parameter, else the object's first Window
Center/Width, else its VOI LUT, else the frame's min/max), MONOCHROME1 inverted, palette colour
applied, optionally cropped and scaled to a `viewport`, encoded as JPEG or PNG with Pillow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, iter_pixels, pack_bits
from pydicom.uid import UID

from integrations.dicom.dicomweb.errors import DicomWebError, bad_request, not_acceptable, not_found
from integrations.dicom.models import Instance
from integrations.dicom.storage import get_instance_storage

PIXEL_DATA = 0x7FE00010
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


@contextmanager
def stored_file(instance: Instance) -> Iterator[str | Path | io.BufferedReader]:
    """A local path of the instance's file, or the opened file where the storage has no path."""
    storage = get_instance_storage()
    path = storage.path(instance.storage_key)
    if path is not None:
        if not path.is_file():
            raise DicomWebError(
                500, f"the file of instance {instance.sop_instance_uid} is missing from storage"
            )
        yield path
        return
    with storage.open(instance.storage_key) as handle:
        yield handle


@dataclass
class PixelHeader:
    """The image pixel description of an instance (its data set without pixel data)."""

    dataset: Dataset
    transfer_syntax: UID
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    frames: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of one native frame (BitsAllocated 1: rounded up; such frames may share a byte)."""
        size = math.ceil(self.rows * self.columns * self.samples * self.bits_allocated / 8)
        if str(self.dataset.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
            size = size // 3 * 2  # two luminance and one pair of chrominance samples per two pixels
        return size


def read_header(source) -> PixelHeader:
    ds = dcmread(source, stop_before_pixels=True)
    if hasattr(source, "seek"):
        source.seek(0)
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        raise not_found("the instance has no pixel data (frames and rendered images exist only for images)")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    return PixelHeader(
        dataset=ds,
        transfer_syntax=UID(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LITTLE_ENDIAN)),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        samples=int(ds.get("SamplesPerPixel") or 1),
        bits_allocated=int(ds.BitsAllocated),
        frames=max(frames, 1),
    )


def parse_frame_list(text: str) -> list[int]:
    """`1,3,5` as frame numbers (1-based); 400 for anything else."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise bad_request(f"frame list {text!r}: {item!r} is not a frame number (frames count from 1)")
        numbers.append(int(item))
    return numbers


def _check_frames(header: PixelHeader, numbers: list[int], sop_uid: str) -> None:
    for number in numbers:
        if number > header.frames:
            raise not_found(
                f"instance {sop_uid} has {header.frames} frame{'s' if header.frames != 1 else ''}; "
                f"there is no frame {number}"
            )


def _little_endian_bytes(array: np.ndarray) -> bytes:
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and np.little_endian is False):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def swap_words(data: bytes, width: int) -> bytes:
    if width <= 1:
        return data
    usable = len(data) - len(data) % width
    swapped = np.frombuffer(data[:usable], dtype=f">u{width}").astype(f"<u{width}").tobytes()
    return swapped + data[usable:]


def _decode_error(header: PixelHeader, exc: Exception) -> DicomWebError:
    return not_acceptable(
        f"the pixel data (transfer syntax {header.transfer_syntax} - {header.transfer_syntax.name}) "
        f"cannot be decoded here: {' '.join(str(exc).split())[:400] or type(exc).__name__}"
    )


def _decoded_frames(source, header: PixelHeader, numbers: list[int]) -> dict[int, np.ndarray]:
    """Decode the given frames (1-based numbers) with pydicom's pixel handlers."""
    wanted = sorted(set(numbers))
    try:
        # pydicom decodes deflated data sets only once inflated into a Dataset.
        src = dcmread(source) if header.transfer_syntax == DEFLATED else source
        arrays = iter_pixels(src, indices=[n - 1 for n in wanted])
        return dict(zip(wanted, (np.array(a) for a in arrays), strict=True))
    except DicomWebError:
        raise
    except Exception as exc:
        raise _decode_error(header, exc) from exc


def _native_frames(source, header: PixelHeader, numbers: list[int]) -> dict[int, bytes]:
    """Native pixel data: slice the frames out of the stored value, reading only those bytes
    (a deflated data set is inflated whole first)."""
    deflated = header.transfer_syntax == DEFLATED
    ds = dcmread(source, defer_size=None if deflated else 4096)
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        raise not_found("the instance has no Pixel Data element")
    size = header.frame_bytes
    # Big endian words are swapped to little endian; OW data swaps 16-bit words even for 8-bit
    # samples. Frames are read on word boundaries, swapped, then cut out.
    width = 1
    if header.transfer_syntax == BIG_ENDIAN:
        vr = str(getattr(element, "VR", "") or "OW")
        width = max(header.bits_allocated // 8, 2 if vr == "OW" else 1)
    deferred = isinstance(element, RawDataElement) and element.value is None
    value = None if deferred else ds.PixelData
    handle = open(source, "rb") if deferred and not isinstance(source, io.IOBase) else source  # noqa: SIM115
    result: dict[int, bytes] = {}
    try:
        for number in sorted(set(numbers)):
            start, end = (number - 1) * size, number * size
            low, high = start - start % width, -(-end // width) * width
            if value is not None:
                data = bytes(value[low:high])
            else:
                handle.seek(element.value_tell + low)
                data = handle.read(high - low)
            if width > 1:
                data = swap_words(data, width)
            result[number] = data[start - low : start - low + size]
    finally:
        if handle is not source:
            handle.close()
    for number, data in result.items():
        if len(data) != size:
            raise DicomWebError(
                500, f"frame {number} is truncated in the stored file ({len(data)} of {size} bytes)"
            )
    return result


def frames(instance: Instance, numbers: list[int]) -> list[bytes]:
    """The uncompressed bytes of each requested frame, in the order asked."""
    with stored_file(instance) as source:
        header = read_header(source)
        _check_frames(header, numbers, instance.sop_instance_uid)
        if header.transfer_syntax.is_encapsulated:
            arrays = _decoded_frames(source, header, numbers)
            by_number = {number: _little_endian_bytes(array) for number, array in arrays.items()}
        elif header.bits_allocated == 1:  # bit-packed: decoded, then packed again frame by frame
            arrays = _decoded_frames(source, header, numbers)
            by_number = {number: pack_bits(array) for number, array in arrays.items()}
        else:
            by_number = _native_frames(source, header, numbers)
    return [by_number[number] for number in numbers]


def frame_stream(instance: Instance, numbers: list[int]) -> Iterator[bytes]:
    """The requested frames, lazily, after checking the numbers and decoding the first one now
    (so that a bad frame number or undecodable pixel data is answered with a status)."""
    first = frames(instance, numbers[:1])

    def generate() -> Iterator[bytes]:
        yield from first
        for start in range(1, len(numbers), 8):
            yield from frames(instance, numbers[start : start + 8])

    if len(numbers) > 1:
        with stored_file(instance) as source:
            _check_frames(read_header(source), numbers, instance.sop_instance_uid)
    return generate()


# --- Rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


def parse_window(text: str) -> Window:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3):
        raise bad_request(
            f"window={text!r}: give center,width,function (function linear, linear-exact or sigmoid)"
        )
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise bad_request(f"window={text!r}: center and width must be numbers") from None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise bad_request(f"window={text!r}: center and width must be finite numbers")
    function = parts[2].lower() if len(parts) == 3 and parts[2] else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise bad_request(f"window={text!r}: function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    if width <= 0 or (function == "linear" and width < 1):
        raise bad_request(
            f"window={text!r}: width must be {'at least 1' if function == 'linear' else 'positive'}"
        )
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 6):
        raise bad_request(f"viewport={text!r}: give vw,vh or vw,vh,sx,sy,sw,sh")
    try:
        numbers = [int(part) if part else None for part in parts]
    except ValueError:
        raise bad_request(f"viewport={text!r}: the values must be integers") from None
    vw, vh = numbers[0], numbers[1]
    if vw is None or vh is None or vw < 1 or vh < 1 or vw > 8192 or vh > 8192:
        raise bad_request(f"viewport={text!r}: vw and vh must be integers from 1 to 8192")
    if len(numbers) == 2:
        return Viewport(vw, vh)
    sx, sy, sw, sh = numbers[2:]
    if (sx is not None and sx < 0) or (sy is not None and sy < 0) or sw == 0 or sh == 0:
        raise bad_request(f"viewport={text!r}: sx and sy must not be negative, sw and sh not zero")
    return Viewport(vw, vh, sx or 0, sy or 0, sw, sh)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2: map modality values through a window to 0..255."""
    c, w = window.center, window.width
    x = values.astype(np.float64, copy=False)
    if window.function == "sigmoid":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "linear-exact":
        y = ((x - c) / w + 0.5) * 255.0
    elif w <= 1:
        y = np.where(x > c - 0.5, 255.0, 0.0)
    else:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _first_number(value) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, MultiValue | list | tuple):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _default_window(ds: Dataset, values: np.ndarray) -> Window | None:
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction") or "LINEAR").lower().replace("_", "-")
        function = function if function in WINDOW_FUNCTIONS else "linear"
        return Window(center, max(width, 1.0) if function == "linear" else width, function)
    return None


def _min_max_window(values: np.ndarray) -> Window:
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return Window(low + 0.5, 1.0, "linear")
    return Window((low + high) / 2.0, high - low, "linear-exact")


def _to_8bit(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    top = float((1 << bits) - 1) if bits > 0 else float(np.max(array) or 1)
    return np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _grayscale(array: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    values = apply_modality_lut(array, ds)
    chosen = window or _default_window(ds, values)
    if chosen is not None:
        out = apply_window(values, chosen)
    elif "VOILUTSequence" in ds:
        lut = apply_voi_lut(values, ds, prefer_lut=True)
        out = apply_window(lut, _min_max_window(lut))
    else:
        out = apply_window(values, _min_max_window(values))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


def _crop_and_scale(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return image
    width, height = image.size
    if viewport.sw is not None or viewport.sh is not None or viewport.sx or viewport.sy:
        sw = viewport.sw if viewport.sw is not None else width - viewport.sx
        sh = viewport.sh if viewport.sh is not None else height - viewport.sy
        left, right = sorted((viewport.sx, viewport.sx + sw))
        top, bottom = sorted((viewport.sy, viewport.sy + sh))
        left, right = max(0, min(left, width)), max(0, min(right, width))
        top, bottom = max(0, min(top, height)), max(0, min(bottom, height))
        if right <= left or bottom <= top:
            raise bad_request("viewport: the source region lies outside the image")
        image = image.crop((left, top, right, bottom))
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        width, height = image.size
    scale = min(viewport.width / width, viewport.height / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def render(
    instance: Instance,
    frame_number: int,
    media_type: str,
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int | None = None,
) -> bytes:
    """The frame rendered as `image/jpeg` or `image/png` bytes."""
    with stored_file(instance) as source:
        header = read_header(source)
        _check_frames(header, [frame_number], instance.sop_instance_uid)
        array = _decoded_frames(source, header, [frame_number])[frame_number]
        if hasattr(source, "seek"):
            source.seek(0)
        # The rendering attributes (palette LUT data included), without the pixel data.
        ds = dcmread(source, stop_before_pixels=True)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    try:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(array, ds)
            pixels = _to_8bit(rgb, 16 if rgb.dtype != np.uint8 else 8)
        elif header.samples == 1:
            pixels = _grayscale(array, ds, window)
        else:  # RGB / YBR (pydicom returns it as RGB)
            pixels = _to_8bit(array, int(ds.get("BitsStored") or header.bits_allocated))
    except DicomWebError:
        raise
    except Exception as exc:
        raise DicomWebError(500, f"rendering instance {instance.sop_instance_uid} failed: {exc}") from exc
    image = Image.fromarray(np.ascontiguousarray(pixels))  # uint8: 2-D is L, (rows, columns, 3) is RGB
    image = _crop_and_scale(image, viewport)
    buffer = io.BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=quality or 90)
    return buffer.getvalue()
