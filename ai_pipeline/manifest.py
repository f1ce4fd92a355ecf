"""The model manifest: what a model folder's `manifest.json` must say, and its validation.

A model is a folder holding `model.onnx` and `manifest.json`. The manifest names the model and its
version, pins the ONNX file by its SHA-256, says what the model is for (and what it is not for),
which studies it applies to, how its input is prepared and how its output reads. Everything the
pipeline does with a model (routing, preprocessing, reading the output, the report's codes, the
image-quality checks of the trust score) comes from here, so any ONNX model with a valid manifest
runs the same way as the demo model.

This module has no Django dependency (the training script imports it). `load_manifest(folder)`
and `parse_manifest(data)` raise `ManifestError` listing every problem with its JSON path,
e.g. `manifest.json: input.size: a slice model takes [height, width], got 3 numbers`.

Schema (version 1), with the demo model's values as the example (`fixtures/models/ct-lesion-demo`):

    schema_version   1
    name             "ct-lesion-demo"        lower-case letters, digits, . _ - (at most 64)
    version          "1.0.0"                 letters, digits, . _ + - (at most 32)
    sha256           64 hex digits           of model.onnx; a mismatch refuses the model
    title            short human-readable name
    intended_use     what the model may be used for, in words (required, non-empty)
    clinical_use     false for anything that is not a cleared medical device
    specialty        "radiology"             picks the trust-score weights (see docs/trust-score.md)
    applicability    modalities ["CT"], body_parts [] (any), sop_classes [CT Image Storage]
    input            kind slice|volume, size [H, W] or [D, H, W], channels 1|3, windowing
                     {center, width} (or one per channel) or normalisation {method zscore|minmax},
                     max_batch, min_slices, tta (flips for test-time augmentation), series_selection
    output           type "classification", activation softmax|sigmoid|none, labels [{index, name,
                     display, code, threshold, background}], units, min_consecutive_slices
    quality          expectations of the image-quality checks (bit depth, pixel spacing, noise)
    report           code of the DiagnosticReport, category
    licence          licence of the model (SPDX id or text)
    training_data    a note on what the model was trained on
    evaluation       optional: the data set and metrics the model was evaluated on
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SCHEMA_VERSION = 1

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")

Augmentation = Literal["identity", "flip_lr", "flip_ud", "flip_both"]


class ManifestError(ValueError):
    """A manifest that cannot be used; `problems` lists each one as 'path: message'."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Strict):
    system: str = Field(min_length=1)
    code: str = Field(min_length=1)
    display: str | None = None

    def as_fhir(self) -> dict:
        coding = {"system": self.system, "code": self.code}
        if self.display:
            coding["display"] = self.display
        return coding


class Applicability(_Strict):
    """Which studies the model applies to; an empty list means any value."""

    modalities: list[str] = []
    body_parts: list[str] = []
    sop_classes: list[str] = []

    @field_validator("modalities", "body_parts")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [value.strip().upper() for value in values if value.strip()]

    @field_validator("sop_classes")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        for value in values:
            if not UID_PATTERN.match(value):
                raise ValueError(f"{value!r} is not a UID (digits and dots)")
        return values

    def matches(self, *, modality: str = "", body_part: str = "", sop_class_uid: str = "") -> bool:
        """Whether an image (or series) with these attributes is one the model applies to."""
        if self.modalities and modality.upper() not in self.modalities:
            return False
        if self.body_parts and body_part and body_part.upper() not in self.body_parts:
            # A series without Body Part Examined is not excluded: many scanners leave it empty.
            return False
        return not (self.sop_classes and sop_class_uid not in self.sop_classes)


class Window(_Strict):
    """A DICOM linear VOI window (PS3.3 C.11.2.1.2.1) mapping modality values to [0, 1]."""

    center: float
    width: float = Field(ge=1)


class Normalisation(_Strict):
    """zscore: (x - mean) / std, with fixed mean/std or per image when they are left out;
    minmax: per image to [0, 1]."""

    method: Literal["zscore", "minmax"]
    mean: float | None = None
    std: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _pair(self) -> Normalisation:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (fixed z-score) or neither (per-image z-score)")
        if self.method == "minmax" and self.mean is not None:
            raise ValueError("minmax takes no mean or std")
        return self


class InputSpec(_Strict):
    name: str | None = None  # ONNX input name; None: the model's first input
    kind: Literal["slice", "volume"]
    size: list[Annotated[int, Field(ge=1, le=4096)]]
    channels: Literal[1, 3] = 1
    dtype: Literal["float32"] = "float32"
    windowing: Window | list[Window] | None = None
    normalisation: Normalisation | None = None
    max_batch: int = Field(default=32, ge=1, le=4096)
    min_slices: int = Field(default=1, ge=1)
    tta: list[Augmentation] = ["identity"]
    series_selection: Literal["largest", "all"] = "largest"

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        expected = 2 if self.kind == "slice" else 3
        if len(self.size) != expected:
            shape = "[height, width]" if self.kind == "slice" else "[depth, height, width]"
            raise ValueError(f"a {self.kind} model takes size {shape}, got {len(self.size)} numbers")
        if (self.windowing is None) == (self.normalisation is None):
            raise ValueError("give exactly one of windowing or normalisation")
        if isinstance(self.windowing, list) and len(self.windowing) != self.channels:
            raise ValueError(
                f"{len(self.windowing)} windows for {self.channels} channel(s): give one per channel"
            )
        if not self.tta or self.tta[0] != "identity" or len(set(self.tta)) != len(self.tta):
            raise ValueError("tta must start with 'identity' and list each augmentation once")
        return self

    @property
    def windows(self) -> list[Window]:
        """One window per channel (a single window is repeated)."""
        if self.windowing is None:
            return []
        if isinstance(self.windowing, list):
            return list(self.windowing)
        return [self.windowing] * self.channels

    @property
    def height(self) -> int:
        return self.size[-2]

    @property
    def width(self) -> int:
        return self.size[-1]


class Label(_Strict):
    index: int = Field(ge=0)
    name: str = Field(min_length=1)
    display: str = ""
    code: Coding | None = None
    threshold: float | None = Field(default=None, gt=0, lt=1)
    background: bool = False  # the "nothing found" class of a softmax: not reported as a finding

    @model_validator(mode="after")
    def _finding(self) -> Label:
        if not self.background and self.threshold is None:
            raise ValueError(f"label {self.name!r}: a finding label needs a threshold")
        return self


class OutputSpec(_Strict):
    name: str | None = None  # ONNX output name; None: the model's first output
    type: Literal["classification"] = "classification"
    activation: Literal["softmax", "sigmoid", "none"]
    labels: list[Label] = Field(min_length=1)
    units: Literal["probability"] = "probability"
    # A finding of a slice model counts only when it is seen on at least this many adjacent slices
    # of a series (fewer when the series is shorter).
    min_consecutive_slices: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _labels(self) -> OutputSpec:
        indexes = sorted(label.index for label in self.labels)
        if indexes != list(range(len(self.labels))):
            raise ValueError(f"label indexes must be 0..{len(self.labels) - 1}, each once; got {indexes}")
        if not self.findings:
            raise ValueError("at least one label must be a finding (not background)")
        if self.activation == "softmax" and len(self.labels) < 2:
            raise ValueError("softmax needs at least two labels")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique")
        return self

    @property
    def findings(self) -> list[Label]:
        return [label for label in self.labels if not label.background]


class QualitySpec(_Strict):
    """What the image-quality checks of the trust score expect (docs/trust-score.md)."""

    min_bits_stored: int = Field(default=8, ge=1, le=32)
    pixel_spacing_mm: tuple[float, float] | None = None  # acceptable in-plane range [min, max]
    # Noise (standard deviation in modality units, e.g. HU) that is fine / that makes images useless.
    # Left out: 3% / 25% of the input window width (or of the normalisation std).
    noise_good: float | None = Field(default=None, gt=0)
    noise_bad: float | None = Field(default=None, gt=0)
    # Relative deviation of a slice gap from the series' nominal spacing that still counts as even.
    spacing_tolerance: float = Field(default=0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _ranges(self) -> QualitySpec:
        if self.pixel_spacing_mm is not None and not 0 < self.pixel_spacing_mm[0] <= self.pixel_spacing_mm[1]:
            raise ValueError("pixel_spacing_mm must be [min, max] with 0 < min <= max")
        if self.noise_good is not None and self.noise_bad is not None and self.noise_bad <= self.noise_good:
            raise ValueError("noise_bad must be above noise_good")
        return self


class ReportSpec(_Strict):
    code: Coding
    category: Coding = Coding(
        system="http://terminology.hl7.org/CodeSystem/v2-0074", code="RAD", display="Radiology"
    )


class Manifest(_Strict):
    schema_version: Literal[1]
    name: str
    version: str
    sha256: str
    title: str = Field(min_length=1)
    intended_use: str = Field(min_length=1)
    clinical_use: bool
    specialty: str = "radiology"
    applicability: Applicability = Applicability()
    input: InputSpec
    output: OutputSpec
    quality: QualitySpec = QualitySpec()
    report: ReportSpec
    licence: str = Field(min_length=1)
    training_data: str = Field(min_length=1)
    authors: list[str] = []
    description: str = ""
    # How the model was evaluated (dataset, metrics); shown to people, not used by the pipeline.
    evaluation: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError("must be 1-64 of a-z 0-9 . _ - starting with a letter or digit")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not VERSION_PATTERN.match(value):
            raise ValueError("must be 1-32 of A-Z a-z 0-9 . _ + - starting with a letter or digit")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        value = value.lower()
        if not SHA256_PATTERN.match(value):
            raise ValueError("must be the 64 hex digits of the SHA-256 of model.onnx")
        return value

    @field_validator("specialty")
    @classmethod
    def _specialty(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("must not be empty")
        return value

    @property
    def key(self) -> str:
        """'name version', as in log lines and errors."""
        return f"{self.name} {self.version}"

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def _format_errors(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(manifest)"
        message = item["msg"]
        message = message.removeprefix("Value error, ")
        problems.append(f"{path}: {message}")
    return problems


def parse_manifest(data: object, *, where: str = MANIFEST_FILE) -> Manifest:
    """Validate manifest data (a dict) and return the `Manifest`; ManifestError otherwise."""
    if not isinstance(data, dict):
        raise ManifestError(where, ["the manifest must be a JSON object"])
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(where, [f"schema_version: must be {SCHEMA_VERSION}, got {version!r}"])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(where, _format_errors(exc)) from None


def load_manifest(folder: Path) -> Manifest:
    """Read and validate `folder/manifest.json`."""
    path = Path(folder) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(str(path), ["no manifest.json in the model folder"]) from None
    except OSError as exc:
        raise ManifestError(str(path), [f"cannot read it: {exc.strerror or exc}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            str(path), [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from None
    return parse_manifest(data, where=str(path))
