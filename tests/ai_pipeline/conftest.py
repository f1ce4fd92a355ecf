"""Fixtures of the AI pipeline tests: model folders, the DICOM instance storage (helpers: support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_pipeline import runtime
from tests.ai_pipeline.support import copy_demo_model


@pytest.fixture(autouse=True)
def _one_onnx_thread(settings):
    """One onnxruntime thread (the test machine is shared) and fresh sessions for every test."""
    settings.BTT_ONNX_THREADS = 1
    settings.BTT_ONNX_PROVIDERS = []
    runtime.clear_runners()
    yield
    runtime.clear_runners()


@pytest.fixture
def model_root(tmp_path: Path, settings) -> Path:
    """An empty model folder that BTT_MODEL_DIR points at."""
    root = tmp_path / "models"
    root.mkdir()
    settings.BTT_MODEL_DIR = [root]
    return root


@pytest.fixture
def demo_model(db, model_root):
    """The demo model registered from a copy in `model_root` (an AIModel row)."""
    from ai_pipeline.models import AIModel
    from ai_pipeline.registry import sync_registry

    copy_demo_model(model_root)
    result = sync_registry()
    assert result.ok, result.refused
    return AIModel.objects.get(name="ct-lesion-demo")


@pytest.fixture
def dicom_storage(tmp_path: Path, settings) -> Path:
    settings.BTT_DICOM_STORAGE = "filesystem"
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "dicom"
    return settings.BTT_DICOM_STORAGE_DIR
