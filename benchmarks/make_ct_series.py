#!/usr/bin/env python3
"""A synthetic CT series for DICOM benchmarks: reproducible, realistic attributes, a phantom as pixels.

Writes `slices` files of CT Image Storage in explicit VR little endian, 512x512 16-bit by default
(about 0.5 MB each, 150 MB for 300 slices), one per axial slice of the same series, with what a
scanner sends: patient, study and series attributes with stable UIDs, ImagePositionPatient,
SliceLocation and InstanceNumber advancing along z, PixelSpacing, SliceThickness,
RescaleSlope/Intercept and WindowCenter/Width. The pixel data is a body phantom made of ellipses
(soft tissue, lungs, spine, aorta, liver, kidneys) whose sizes change along z, plus Gaussian noise.

Everything derives from the seed: the same parameters give byte-identical files. `ensure_series()`
caches a series by its parameters in a directory under the temporary directory, so a benchmark
generates it once and later runs reuse it.

    .venv/bin/python benchmarks/make_ct_series.py /tmp/ct --slices 20     # write 20 slices to /tmp/ct
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

# Bump when the generated content changes, so cached series of an older version are not reused.
GENERATOR_VERSION = 1
CACHE_ROOT_NAME = "btt-dicom-bench-series"
COMPLETE_MARKER = "series.json"


@dataclass(frozen=True)
class SeriesSpec:
    """What to generate; every field is part of the cache key."""

    slices: int = 300
    rows: int = 512
    columns: int = 512
    seed: int = 20240607
    slice_thickness_mm: float = 1.25
    pixel_spacing_mm: float = 0.703125  # a 360 mm field of view over 512 pixels

    @property
    def key(self) -> str:
        return (
            f"ct-v{GENERATOR_VERSION}-{self.slices}x{self.rows}x{self.columns}-seed{self.seed}"
            f"-st{self.slice_thickness_mm:g}-ps{self.pixel_spacing_mm:g}"
        )


@dataclass
class Series:
    """A generated series on disk."""

    directory: Path
    files: list[Path]  # in InstanceNumber order
    total_bytes: int
    study_instance_uid: str
    series_instance_uid: str

    @property
    def count(self) -> int:
        return len(self.files)


def _uid(spec: SeriesSpec, *parts: object) -> str:
    """A UID that depends only on the spec and `parts`: 2.25 and 128 bits of a SHA-256 (PS3.5 B.2)."""
    digest = hashlib.sha256("|".join([spec.key, *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


# Phantom in Hounsfield units: (centre x, centre y, semi-axis x, semi-axis y, HU), in fractions of
# the half-width of the image; z scales some of them so the anatomy changes along the series.
BODY = (0.0, 0.0, 0.78, 0.58, 40.0)
FAT_RIM = (0.0, 0.0, 0.74, 0.54, -90.0)
SOFT = (0.0, 0.0, 0.70, 0.50, 35.0)


def _phantom_slice(spec: SeriesSpec, index: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """HU image of slice `index`: thorax at the top of the series, abdomen at the bottom."""
    x, y = grid
    t = index / max(1, spec.slices - 1)  # 0 at the top slice, 1 at the bottom
    image = np.full((spec.rows, spec.columns), -1000.0, dtype=np.float32)  # air

    def ellipse(cx: float, cy: float, ax: float, ay: float, value: float, *, add: bool = False) -> None:
        if ax <= 0 or ay <= 0:
            return
        mask = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
        if add:
            image[mask] += value
        else:
            image[mask] = value

    ellipse(*BODY)
    ellipse(*FAT_RIM)
    ellipse(*SOFT)
    # Lungs: large at the top, shrinking to nothing by the middle of the series.
    lung = max(0.0, 1.0 - 1.8 * t)
    ellipse(-0.33, -0.05, 0.26 * lung, 0.36 * lung, -820.0)
    ellipse(0.33, -0.05, 0.24 * lung, 0.35 * lung, -820.0)
    # Heart in the upper half, liver and kidneys in the lower half.
    heart = max(0.0, 1.0 - abs(t - 0.3) / 0.2)
    ellipse(0.08, 0.02, 0.2 * heart, 0.17 * heart, 45.0)
    liver = max(0.0, 1.0 - abs(t - 0.65) / 0.3)
    ellipse(-0.28, 0.05, 0.3 * liver, 0.25 * liver, 60.0)
    kidney = max(0.0, 1.0 - abs(t - 0.8) / 0.15)
    ellipse(-0.3, 0.3, 0.09 * kidney, 0.13 * kidney, 150.0)
    ellipse(0.3, 0.3, 0.09 * kidney, 0.13 * kidney, 150.0)
    # Aorta (contrast-enhanced) and the vertebral body with its spinal canal, all along the series.
    ellipse(0.06, 0.22, 0.05, 0.05, 180.0)
    ellipse(0.0, 0.38, 0.1, 0.09, 700.0)
    ellipse(0.0, 0.5, 0.035, 0.03, 20.0)
    # Ribs: small bony ellipses around the thorax.
    if lung > 0:
        for angle in np.linspace(0.2, np.pi - 0.2, 7):
            for side in (-1, 1):
                ellipse(side * 0.7 * np.cos(angle), -0.5 * np.sin(angle) * 0.95, 0.025, 0.02, 900.0)
    return image


def _base_dataset(spec: SeriesSpec, study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    """The attributes every slice shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = "20240607"
    ds.SeriesDate = "20240607"
    ds.AcquisitionDate = "20240607"
    ds.ContentDate = "20240607"
    ds.StudyTime = "101502"
    ds.SeriesTime = "101733"
    ds.AccessionNumber = "BENCH000001"
    ds.Modality = "CT"
    ds.Manufacturer = "BTT Health benchmark"
    ds.InstitutionName = "BTT Health"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN WITH CONTRAST"
    ds.SeriesDescription = "AXIAL 1.25 STD"
    ds.ManufacturerModelName = "Synthetic phantom"
    ds.PatientName = "Phantom^Bench"
    ds.PatientID = "BENCH-CT-0001"
    ds.IssuerOfPatientID = "BTTBENCH"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "054Y"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = f"{spec.slice_thickness_mm:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{spec.pixel_spacing_mm * spec.columns:g}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "200"
    ds.Exposure = "100"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = "2"
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [f"{spec.pixel_spacing_mm:g}", f"{spec.pixel_spacing_mm:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0  # unsigned: stored value = HU + 1024 (air is 24 or so)
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
    return ds


def write_series(spec: SeriesSpec, directory: Path) -> Series:
    """Generate the series into `directory` (created; existing files of the same names overwritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    study_uid = _uid(spec, "study")
    series_uid = _uid(spec, "series")
    frame_uid = _uid(spec, "frame")
    half_x = (np.arange(spec.columns, dtype=np.float32) - (spec.columns - 1) / 2) / (spec.columns / 2)
    half_y = (np.arange(spec.rows, dtype=np.float32) - (spec.rows - 1) / 2) / (spec.rows / 2)
    grid = np.meshgrid(half_x, half_y)
    base = _base_dataset(spec, study_uid, series_uid, frame_uid)
    origin_x = -spec.pixel_spacing_mm * (spec.columns - 1) / 2
    origin_y = -spec.pixel_spacing_mm * (spec.rows - 1) / 2
    top_z = 0.0
    acquired = dt.datetime(2024, 6, 7, 10, 17, 33)
    files: list[Path] = []
    total = 0
    for index in range(spec.slices):
        hu = _phantom_slice(spec, index, grid)
        hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)  # quantum noise, ~12 HU
        stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype("<u2")
        ds = base.copy()
        number = index + 1
        z = top_z - index * spec.slice_thickness_mm  # feet first supine: z decreases going down
        sop_uid = _uid(spec, "instance", number)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = str(number)
        ds.ImagePositionPatient = [f"{origin_x:.4f}", f"{origin_y:.4f}", f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.ContentTime = (acquired + dt.timedelta(milliseconds=250 * index)).strftime("%H%M%S.%f")[:13]
        ds.AcquisitionTime = ds.ContentTime
        ds.SmallestImagePixelValue = int(stored.min())
        ds.LargestImagePixelValue = int(stored.max())
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "BTT_BENCH_CT"
        ds.file_meta = meta
        path = directory / f"CT{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        total += path.stat().st_size
    return Series(directory, files, total, study_uid, series_uid)


def ensure_series(spec: SeriesSpec, cache_root: Path | None = None, *, regenerate: bool = False) -> Series:
    """The series for `spec`, generated into the cache on first use and reused afterwards."""
    root = cache_root or Path(tempfile.gettempdir()) / CACHE_ROOT_NAME
    directory = root / spec.key
    marker = directory / COMPLETE_MARKER
    if not regenerate and marker.exists():
        with open(marker) as f:
            meta = json.load(f)
        files = [directory / name for name in meta["files"]]
        if meta.get("spec") == asdict(spec) and all(p.exists() for p in files):
            total = sum(p.stat().st_size for p in files)
            if total == meta["total_bytes"]:
                return Series(
                    directory, files, total, meta["study_instance_uid"], meta["series_instance_uid"]
                )
    shutil.rmtree(directory, ignore_errors=True)
    series = write_series(spec, directory)
    with open(directory / (COMPLETE_MARKER + ".tmp"), "w") as f:
        json.dump(
            {
                "spec": asdict(spec),
                "files": [p.name for p in series.files],
                "total_bytes": series.total_bytes,
                "study_instance_uid": series.study_instance_uid,
                "series_instance_uid": series.series_instance_uid,
            },
            f,
        )
    (directory / (COMPLETE_MARKER + ".tmp")).replace(marker)
    return series


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("directory", type=Path, help="where to write the files")
    parser.add_argument("--slices", type=int, default=SeriesSpec.slices)
    parser.add_argument("--rows", type=int, default=SeriesSpec.rows)
    parser.add_argument("--columns", type=int, default=SeriesSpec.columns)
    parser.add_argument("--seed", type=int, default=SeriesSpec.seed)
    args = parser.parse_args(argv)
    spec = SeriesSpec(slices=args.slices, rows=args.rows, columns=args.columns, seed=args.seed)
    began = time.perf_counter()
    series = write_series(spec, args.directory)
    print(
        f"wrote {series.count} slices, {series.total_bytes / 1e6:.1f} MB, to {series.directory} "
        f"in {time.perf_counter() - began:.1f} s (study {series.study_instance_uid})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
