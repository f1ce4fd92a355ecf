"""The model registry: model folders on disk, checked and recorded as `AIModel` rows.

A model folder is a directory holding `model.onnx` and `manifest.json` (see `manifest.py`),
directly under one of `settings.BTT_MODEL_DIR` (default `fixtures/models` and
`$BTT_DATA_DIR/models`) or one level deeper (`<dir>/<name>/<version>/`).

`sync_registry()` (the `sync_models` management command, the admin's "re-scan" action) reads
every folder, validates its manifest and hashes its `model.onnx`:

- valid and matching: the row (name, version) is created or updated, status `available`; a new
  row is enabled when `BTT_MODELS_ENABLED_BY_DEFAULT` is on (the admin's switch is kept after that);
- the file's SHA-256 differs from the manifest's, or a registered version now comes with another
  SHA-256 (same version, different file): refused, status `integrity_error` with the error; the
  model is never loaded;
- an invalid manifest: refused; a row registered from that folder before gets status `invalid`;
- rows whose folder is gone: status `missing`.

Refusals are errors in the result and in the log, never exceptions, so one bad folder does not
hide the good ones. `verify_model_file` is also run by the runtime before it creates a session,
so a file swapped after registration is refused at load time with the same error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from packaging.version import InvalidVersion, Version

from ai_pipeline.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
)
from ai_pipeline.models import AIModel

logger = logging.getLogger(__name__)


class RegistryError(Exception):
    """A model that cannot be used."""


class ModelIntegrityError(RegistryError):
    """model.onnx is missing or is not the file its manifest pins (SHA-256 mismatch)."""


class ModelUnavailableError(RegistryError):
    """No enabled, available model of that name (and version)."""


@dataclass
class SyncResult:
    registered: list[AIModel] = field(default_factory=list)  # created or updated, available
    refused: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)
    missing: list[AIModel] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def model_dirs() -> list[Path]:
    return [Path(folder) for folder in settings.BTT_MODEL_DIR]


def find_model_folders(dirs: Iterable[Path] | None = None) -> list[Path]:
    """Folders holding a manifest.json, one or two levels below each directory, sorted."""
    found: list[Path] = []
    for root in dirs if dirs is not None else model_dirs():
        root = Path(root)
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not child.is_dir():
                continue
            if (child / MANIFEST_FILE).is_file():
                found.append(child)
                continue
            found.extend(sorted(g for g in child.iterdir() if g.is_dir() and (g / MANIFEST_FILE).is_file()))
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_model_file(folder: Path, expected_sha256: str, *, key: str) -> Path:
    """`folder/model.onnx` when its SHA-256 is `expected_sha256`; ModelIntegrityError otherwise."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise ModelIntegrityError(f"model {key}: {path} does not exist; refusing the model")
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise ModelIntegrityError(f"model {key}: cannot read {path}: {exc.strerror or exc}") from exc
    if actual != expected_sha256.lower():
        raise ModelIntegrityError(
            f"model {key}: sha256 mismatch for {path}: the file hashes to {actual} but the manifest pins "
            f"{expected_sha256.lower()}; the file is not the model the manifest describes, so it is refused "
            "(replace the file, or re-pin the manifest after checking where the file came from)"
        )
    return path


def _fields(manifest: Manifest, folder: Path) -> dict:
    return {
        "sha256": manifest.sha256,
        "manifest": manifest.to_json(),
        "path": str(folder),
        "title": manifest.title[:200],
        "specialty": manifest.specialty,
        "clinical_use": manifest.clinical_use,
    }


def _register(folder: Path, manifest: Manifest, result: SyncResult) -> None:
    now = timezone.now()
    with transaction.atomic():
        row = AIModel.objects.select_for_update().filter(name=manifest.name, version=manifest.version).first()
        if row is not None and row.sha256 != manifest.sha256:
            reason = (
                f"model {manifest.key}: {folder} pins sha256 {manifest.sha256}, but this version was registered "
                f"with sha256 {row.sha256}; a changed model needs a new version, so it is refused"
            )
            row.status, row.status_detail = AIModel.Status.INTEGRITY_ERROR, reason
            row.save(update_fields=["status", "status_detail", "updated_at"])
            result.refused.append((str(folder), reason))
            logger.error("%s", reason)
            return
        try:
            verify_model_file(folder, manifest.sha256, key=manifest.key)
        except ModelIntegrityError as exc:
            status, detail, verified = AIModel.Status.INTEGRITY_ERROR, str(exc), None
            result.refused.append((str(folder), str(exc)))
            logger.error("%s", exc)
        else:
            status, detail, verified = AIModel.Status.AVAILABLE, "", now
        values = {**_fields(manifest, folder), "status": status, "status_detail": detail}
        if row is None:
            row = AIModel.objects.create(
                name=manifest.name,
                version=manifest.version,
                enabled=settings.BTT_MODELS_ENABLED_BY_DEFAULT,
                verified_at=verified,
                **values,
            )
            logger.info("model %s registered from %s (status %s)", manifest.key, folder, status)
        else:
            for key, value in values.items():
                setattr(row, key, value)
            if verified is not None:
                row.verified_at = verified
            row.save()
        if status == AIModel.Status.AVAILABLE:
            result.registered.append(row)


def sync_registry(dirs: Iterable[Path] | None = None) -> SyncResult:
    """Scan the model folders and bring the AIModel rows up to date (see the module docstring)."""
    result = SyncResult()
    seen: dict[tuple[str, str], Path] = {}
    for folder in find_model_folders(dirs):
        try:
            manifest = load_manifest(folder)
        except ManifestError as exc:
            reason = f"{exc}; the model is refused"
            result.refused.append((str(folder), reason))
            AIModel.objects.filter(path=str(folder)).update(
                status=AIModel.Status.INVALID, status_detail=reason
            )
            logger.error("%s", reason)
            continue
        key = (manifest.name, manifest.version)
        if key in seen:
            reason = f"model {manifest.key} in {folder} is also in {seen[key]}; the first one found is used"
            result.refused.append((str(folder), reason))
            logger.error("%s", reason)
            continue
        seen[key] = folder
        _register(folder, manifest, result)
    for row in AIModel.objects.exclude(status=AIModel.Status.MISSING):
        if (row.name, row.version) not in seen and not Path(row.path, MANIFEST_FILE).is_file():
            row.status, row.status_detail = AIModel.Status.MISSING, f"{row.path} is gone"
            row.save(update_fields=["status", "status_detail", "updated_at"])
            result.missing.append(row)
            logger.warning("model %s: its folder %s is gone", row, row.path)
    return result


def _version_key(row: AIModel) -> tuple:
    try:
        return (1, Version(row.version), row.registered_at)
    except InvalidVersion:
        return (0, Version("0"), row.registered_at)


def get_runnable_model(name: str, version: str | None = None) -> AIModel:
    """The enabled, available model `name` (that `version`, or the newest such version)."""
    rows = list(AIModel.objects.filter(name=name))
    if not rows:
        raise ModelUnavailableError(f"no model named {name!r} is registered (run `manage.py sync_models`)")
    if version:
        rows = [row for row in rows if row.version == version]
        if not rows:
            raise ModelUnavailableError(f"model {name!r} has no registered version {version!r}")
    runnable = [row for row in rows if row.runnable]
    if not runnable:
        states = ", ".join(
            f"{row.version}: {'disabled' if not row.enabled else row.get_status_display()}" for row in rows
        )
        raise ModelUnavailableError(f"model {name!r} has no enabled, available version ({states})")
    return max(runnable, key=_version_key)


def manifest_of(row: AIModel) -> Manifest:
    """The manifest registered with `row` (validated again: the schema may have moved on)."""
    try:
        return parse_manifest(row.manifest, where=f"registered manifest of {row}")
    except ManifestError as exc:
        raise RegistryError(f"{exc}; re-scan the model folders") from exc
