"""Synthetic CT phantoms in Hounsfield units, with or without a synthetic lesion.

Used to train and evaluate the demo model (`train_ct_lesion_demo.py`) and by the AI pipeline's
tests to write DICOM series the demo model should (or should not) flag. Nothing here resembles a
patient closely enough for a model trained on it to mean anything clinically: it is a body-shaped
ellipse of soft tissue in air, with a fat rim, a few organ-like ellipsoids, a spine, an aorta, small
bright vessels and dark gas pockets (distractors), smooth texture and Gaussian noise.

A lesion is a sphere (radius 6-15 mm) inside soft tissue that is brighter or darker than its
surroundings by 40-90 HU, with a soft edge. Everything derives from a `numpy.random.Generator`,
so a seed reproduces the same phantoms exactly.

    patient = random_patient(rng)                          # one synthetic "patient" (3-D)
    hu = render_slice(patient, z_mm=0.0, size=256, spacing_mm=1.5, rng=rng)   # (256, 256) HU
    volume, lesion_slices = render_volume(patient, slices=24, slice_spacing_mm=3.0, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

AIR_HU = -1000.0


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned-in-z ellipsoid, rotated in-plane: centre (x, y, z) mm, semi-axes (a, b, c) mm."""

    x: float
    y: float
    z: float
    a: float
    b: float
    c: float
    angle: float  # in-plane rotation, radians
    hu: float

    def cross_section(self, z_mm: float) -> tuple[float, float] | None:
        dz = (z_mm - self.z) / self.c
        if abs(dz) >= 1.0:
            return None
        scale = math.sqrt(1.0 - dz * dz)
        return self.a * scale, self.b * scale


@dataclass(frozen=True)
class Lesion:
    x: float
    y: float
    z: float
    radius: float  # mm
    contrast: float  # HU added to the local tissue (positive: hyperdense)

    def radius_at(self, z_mm: float) -> float:
        dz = z_mm - self.z
        return math.sqrt(self.radius**2 - dz * dz) if abs(dz) < self.radius else 0.0


@dataclass(frozen=True)
class Patient:
    body_a: float
    body_b: float
    body_x: float
    body_y: float
    fat_mm: float
    tissue_hu: float
    organs: tuple[Ellipsoid, ...]
    spine: tuple[float, float, float, float]  # x, y, radius, hu
    aorta: tuple[float, float, float, float]
    vessels: tuple[tuple[float, float, float, float], ...]
    gas: tuple[Ellipsoid, ...]
    texture: tuple[tuple[float, float, float, float], ...]  # kx, ky, phase, amplitude
    noise_hu: float
    lesion: Lesion | None = field(default=None)


def random_patient(rng: np.random.Generator, *, extent_mm: float = 80.0) -> Patient:
    """A random phantom "patient" spanning about +-extent_mm along z."""
    body_a = rng.uniform(130, 175)
    body_b = rng.uniform(95, 130)
    body_x, body_y = rng.uniform(-10, 10, size=2)
    organs = []
    # liver-like (patient's right = image left), spleen-like, two kidney-like, fatty regions
    organs.append(
        Ellipsoid(
            body_x - body_a * rng.uniform(0.35, 0.5), body_y - body_b * rng.uniform(0.0, 0.25), rng.uniform(-20, 20),
            body_a * rng.uniform(0.3, 0.42), body_b * rng.uniform(0.4, 0.6), rng.uniform(60, 120),
            rng.uniform(-0.4, 0.4), rng.uniform(52, 68),
        )
    )  # fmt: skip
    organs.append(
        Ellipsoid(
            body_x + body_a * rng.uniform(0.45, 0.6), body_y - body_b * rng.uniform(0.0, 0.3), rng.uniform(-30, 30),
            body_a * rng.uniform(0.12, 0.2), body_b * rng.uniform(0.2, 0.3), rng.uniform(40, 70),
            rng.uniform(-0.6, 0.6), rng.uniform(42, 55),
        )
    )  # fmt: skip
    for side in (-1, 1):
        organs.append(
            Ellipsoid(
                body_x + side * body_a * rng.uniform(0.25, 0.35), body_y + body_b * rng.uniform(0.35, 0.5),
                rng.uniform(-30, 30), rng.uniform(22, 32), rng.uniform(30, 40), rng.uniform(40, 60),
                rng.uniform(-0.5, 0.5), rng.uniform(25, 38),
            )
        )  # fmt: skip
    for _ in range(rng.integers(1, 4)):  # elongated fatty regions, darker than any lesion
        organs.append(
            Ellipsoid(
                body_x + rng.uniform(-0.4, 0.4) * body_a, body_y + rng.uniform(-0.5, 0.2) * body_b,
                rng.uniform(-extent_mm, extent_mm), rng.uniform(25, 50), rng.uniform(8, 18), rng.uniform(30, 80),
                rng.uniform(0, math.pi), rng.uniform(-115, -90),
            )
        )  # fmt: skip
    spine = (
        body_x + rng.uniform(-5, 5),
        body_y + body_b * rng.uniform(0.55, 0.7),
        rng.uniform(14, 20),
        rng.uniform(350, 700),
    )
    contrast_enhanced = rng.random() < 0.5
    # Enhanced vessels are brighter than any lesion (above the soft-tissue window), plain ones like blood.
    aorta = (
        spine[0] + rng.uniform(-12, 12),
        spine[1] - spine[2] - rng.uniform(12, 20),
        rng.uniform(9, 13),
        rng.uniform(260, 350) if contrast_enhanced else rng.uniform(35, 50),
    )
    vessels = tuple(
        (
            body_x + rng.uniform(-0.6, 0.6) * body_a,
            body_y + rng.uniform(-0.6, 0.5) * body_b,
            rng.uniform(2.5, 4.5),
            rng.uniform(260, 350) if contrast_enhanced else rng.uniform(40, 60),
        )
        for _ in range(rng.integers(0, 5))
    )
    gas = tuple(
        Ellipsoid(
            body_x + rng.uniform(-0.5, 0.5) * body_a, body_y + rng.uniform(-0.6, 0.1) * body_b,
            rng.uniform(-extent_mm, extent_mm), rng.uniform(4, 14), rng.uniform(4, 12), rng.uniform(5, 25),
            rng.uniform(0, math.pi), rng.uniform(-950, -700),
        )
        for _ in range(rng.integers(0, 4))
    )  # fmt: skip
    texture = tuple(
        (rng.uniform(0.005, 0.04), rng.uniform(0.005, 0.04), rng.uniform(0, 2 * math.pi), rng.uniform(2, 6))
        for _ in range(4)
    )
    return Patient(
        body_a=body_a,
        body_b=body_b,
        body_x=body_x,
        body_y=body_y,
        fat_mm=rng.uniform(8, 25),
        tissue_hu=rng.uniform(32, 48),
        organs=tuple(organs),
        spine=spine,
        aorta=aorta,
        vessels=vessels,
        gas=gas,
        texture=texture,
        noise_hu=rng.uniform(6, 22),
    )


def _grid(size: int, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * np.float32(spacing_mm)
    return np.meshgrid(coords, coords)  # x across columns, y down rows


def _inside(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = dx * cos + dy * sin, -dx * sin + dy * cos
    return (dx / a) ** 2 + (dy / b) ** 2 <= 1.0


def _soft_tissue_mask(patient: Patient, x: np.ndarray, y: np.ndarray, z_mm: float) -> np.ndarray:
    """Where a lesion may sit: inside the body, off the fat rim, spine, aorta and gas."""
    mask = _inside(
        x,
        y,
        patient.body_x,
        patient.body_y,
        patient.body_a - patient.fat_mm - 8,
        patient.body_b - patient.fat_mm - 8,
    )
    sx, sy, sr, _ = patient.spine
    mask &= np.hypot(x - sx, y - sy) > sr + 15
    ax, ay, ar, _ = patient.aorta
    mask &= np.hypot(x - ax, y - ay) > ar + 12
    for gas in patient.gas:
        section = gas.cross_section(z_mm)
        if section is not None:
            mask &= ~_inside(x, y, gas.x, gas.y, section[0] + 10, section[1] + 10, gas.angle)
    for organ in patient.organs:
        section = organ.cross_section(z_mm)
        if section is not None and organ.hu < 0:  # fatty regions
            mask &= ~_inside(x, y, organ.x, organ.y, section[0] + 8, section[1] + 8, organ.angle)
    return mask


def add_lesion(
    patient: Patient,
    rng: np.random.Generator,
    *,
    z_mm: float = 0.0,
    radius_mm: tuple[float, float] = (6.0, 15.0),
    contrast_hu: tuple[float, float] = (40.0, 90.0),
) -> Patient:
    """The same patient with a lesion centred in soft tissue on the plane `z_mm`."""
    x, y = _grid(128, 3.2)
    mask = _soft_tissue_mask(patient, x, y, z_mm)
    candidates = np.argwhere(mask)
    if len(candidates) == 0:  # pragma: no cover - the body is always large enough
        raise ValueError("no soft tissue to place a lesion in")
    row, col = candidates[rng.integers(len(candidates))]
    magnitude = rng.uniform(*contrast_hu)
    contrast = magnitude if rng.random() < 0.5 else -magnitude
    lesion = Lesion(
        float(x[row, col]), float(y[row, col]), z_mm, float(rng.uniform(*radius_mm)), float(contrast)
    )
    return Patient(**{**patient.__dict__, "lesion": lesion})


def render_slice(
    patient: Patient,
    *,
    z_mm: float,
    size: int,
    spacing_mm: float,
    rng: np.random.Generator,
    noise: bool = True,
) -> np.ndarray:
    """The (size, size) slice at `z_mm` in HU (float32)."""
    x, y = _grid(size, spacing_mm)
    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    body = _inside(x, y, patient.body_x, patient.body_y, patient.body_a, patient.body_b)
    hu[body] = rng.uniform(-115, -85)  # subcutaneous fat
    inner = _inside(
        x, y, patient.body_x, patient.body_y, patient.body_a - patient.fat_mm, patient.body_b - patient.fat_mm
    )
    texture = np.zeros_like(hu)
    for kx, ky, phase, amplitude in patient.texture:
        texture += amplitude * np.sin(2 * math.pi * (kx * x + ky * y) + phase + 0.01 * z_mm).astype(
            np.float32
        )
    hu[inner] = (patient.tissue_hu + texture)[inner]
    for organ in patient.organs:
        section = organ.cross_section(z_mm)
        if section is not None:
            region = _inside(x, y, organ.x, organ.y, section[0], section[1], organ.angle) & inner
            hu[region] = (organ.hu + texture * 0.5)[region]
    lesion = patient.lesion
    if lesion is not None:
        radius = lesion.radius_at(z_mm)
        if radius > 0:
            distance = np.hypot(x - lesion.x, y - lesion.y)
            edge = 0.5 * (1.0 - np.tanh((distance - radius) / 1.6))  # logistic edge, 0.8 mm scale
            hu += (lesion.contrast * edge).astype(np.float32) * inner
    sx, sy, sr, shu = patient.spine
    spine = np.hypot(x - sx, y - sy)
    hu[spine <= sr] = shu
    hu[(spine <= sr) & (spine > sr - 3)] = shu + 300  # cortical rim
    ax, ay, ar, ahu = patient.aorta
    hu[np.hypot(x - ax, y - ay) <= ar] = ahu
    for vx, vy, vr, vhu in patient.vessels:
        hu[(np.hypot(x - vx, y - vy) <= vr) & inner] = vhu
    for gas in patient.gas:
        section = gas.cross_section(z_mm)
        if section is not None:
            hu[_inside(x, y, gas.x, gas.y, section[0], section[1], gas.angle) & inner] = gas.hu
    if noise:
        hu += rng.normal(0.0, patient.noise_hu, size=hu.shape).astype(np.float32)
    return hu


def render_volume(
    patient: Patient,
    *,
    slices: int,
    slice_spacing_mm: float,
    size: int,
    spacing_mm: float,
    rng: np.random.Generator,
    first_z_mm: float | None = None,
) -> tuple[np.ndarray, list[float], list[float]]:
    """(volume (slices, size, size) HU, z of each slice, lesion radius visible on each slice)."""
    if first_z_mm is None:
        first_z_mm = -(slices - 1) * slice_spacing_mm / 2
    zs = [first_z_mm + index * slice_spacing_mm for index in range(slices)]
    volume = np.stack([render_slice(patient, z_mm=z, size=size, spacing_mm=spacing_mm, rng=rng) for z in zs])
    radii = [patient.lesion.radius_at(z) if patient.lesion else 0.0 for z in zs]
    return volume, zs, radii


def to_stored(hu: np.ndarray, intercept: float = -1024.0) -> np.ndarray:
    """HU → stored unsigned 16-bit values for RescaleIntercept `intercept` and slope 1 (12 bits used)."""
    return np.clip(np.rint(hu - intercept), 0, 4095).astype(np.uint16)


def lesion_mask(
    patient: Patient, *, z_mm: float, size: int, spacing_mm: float, fraction: float = 0.8
) -> np.ndarray:
    """(size, size) bool: where the lesion shows on the slice at `z_mm` (within `fraction` of its radius)."""
    mask = np.zeros((size, size), dtype=bool)
    lesion = patient.lesion
    if lesion is None:
        return mask
    radius = lesion.radius_at(z_mm)
    if radius <= 0:
        return mask
    x, y = _grid(size, spacing_mm)
    return np.hypot(x - lesion.x, y - lesion.y) <= max(radius * fraction, spacing_mm / 2)
