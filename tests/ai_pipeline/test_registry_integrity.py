"""A model whose file does not match its manifest's sha256 is refused, at registration and at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai_pipeline import runtime
from ai_pipeline.models import AIModel
from ai_pipeline.registry import (
    ModelIntegrityError,
    ModelUnavailableError,
    file_sha256,
    get_runnable_model,
    sync_registry,
    verify_model_file,
)
from tests.ai_pipeline.support import copy_demo_model

pytestmark = pytest.mark.django_db


def tamper(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_file_is_refused_with_both_hashes_named(model_root):
    folder = copy_demo_model(model_root)
    pinned = json.loads((folder / "manifest.json").read_text())["sha256"]
    tamper(folder / "model.onnx")
    actual = file_sha256(folder / "model.onnx")
    result = sync_registry()
    assert result.registered == []
    ((where, reason),) = result.refused
    assert where == str(folder)
    assert "sha256 mismatch" in reason
    assert actual in reason
    assert pinned in reason
    assert "refused" in reason
    row = AIModel.objects.get()
    assert row.status == AIModel.Status.INTEGRITY_ERROR
    assert row.status_detail == reason
    assert row.runnable is False
    with pytest.raises(ModelUnavailableError, match="sha256 mismatch"):
        get_runnable_model("ct-lesion-demo")


def test_verify_model_file_names_a_missing_file(tmp_path):
    with pytest.raises(ModelIntegrityError, match=r"model.onnx does not exist; refusing the model"):
        verify_model_file(tmp_path, "0" * 64, key="x 1")


def test_a_file_swapped_after_registration_is_refused_at_load(demo_model):
    tamper(Path(demo_model.path) / "model.onnx")
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        runtime.get_runner(demo_model)


def test_a_changed_file_under_the_same_version_is_refused(model_root):
    folder = copy_demo_model(model_root)
    sync_registry()
    # Someone re-pins the manifest to a different file without bumping the version.
    tamper(folder / "model.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = file_sha256(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = sync_registry()
    assert "a changed model needs a new version" in result.refused[0][1]
    assert AIModel.objects.get().status == AIModel.Status.INTEGRITY_ERROR


def test_restoring_the_file_makes_the_model_available_again(model_root):
    folder = copy_demo_model(model_root)
    original = (folder / "model.onnx").read_bytes()
    tamper(folder / "model.onnx")
    sync_registry()
    (folder / "model.onnx").write_bytes(original)
    assert sync_registry().ok
    assert AIModel.objects.get().status == AIModel.Status.AVAILABLE
