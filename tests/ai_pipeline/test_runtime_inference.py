"""The demo model runs in onnxruntime; sessions are cached; TTA gives the spread; other ONNX models work too."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ai_pipeline import runtime
from ai_pipeline.manifest import load_manifest
from ai_pipeline.models import AIModel
from ai_pipeline.preprocessing import decode_frames, prepare_series
from ai_pipeline.registry import sync_registry
from ai_pipeline.runtime import ModelLoadError, ModelOutputError, ModelRunner, augment, focus_images
from tests.ai_pipeline.support import DEMO_MODEL, ct_series

MANIFEST = load_manifest(DEMO_MODEL)


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner(DEMO_MODEL / "model.onnx", MANIFEST, ["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def slices() -> dict[str, np.ndarray]:
    """Prepared 16-slice series with and without the synthetic lesion (at the middle slices)."""
    out = {}
    for name, lesion in (("lesion", True), ("clean", False)):
        datasets = ct_series(slices=16, size=256, lesion=lesion, seed=11)
        out[name] = prepare_series((f for ds in datasets for f in decode_frames(ds)), MANIFEST.input).inputs
    return out


def test_the_demo_model_finds_the_synthetic_lesion(runner, slices):
    lesion = runner.predict(slices["lesion"])
    clean = runner.predict(slices["clean"])
    assert lesion.shape == (16, 2)
    np.testing.assert_allclose(lesion.sum(axis=1), 1.0, rtol=1e-5)  # softmax
    assert lesion[6:10, 1].max() > 0.9  # the 12 mm lesion sits around slices 7-8
    assert clean[:, 1].max() < 0.5
    assert lesion[0, 1] < 0.5  # far from the lesion


def test_the_batch_dimension_is_dynamic(runner, slices):
    batch = np.concatenate([slices["lesion"]] * 5)[:70]  # more than max_batch (64): run in chunks
    together = runner.predict(batch)
    one_by_one = np.concatenate([runner.predict(batch[i : i + 1]) for i in (0, 7, 69)])
    np.testing.assert_allclose(together[[0, 7, 69]], one_by_one, atol=1e-5)
    assert runner.predict(batch[:0]).shape == (0, 2)


def test_tta_gives_one_prediction_per_augmentation(runner, slices):
    inputs = slices["lesion"]
    result = runner.predict_tta(inputs)
    assert result.augmentations == ["identity", "flip_lr", "flip_ud"]
    assert result.probabilities.shape == (3, 16, 2)
    np.testing.assert_allclose(result.probabilities[0], runner.predict(inputs), atol=1e-6)
    np.testing.assert_allclose(result.probabilities[1], runner.predict(inputs[..., ::-1].copy()), atol=1e-6)
    assert result.std.shape == (16, 2)
    assert float(result.std.max()) > 0  # the flipped views do not agree exactly


def test_focused_tta_augments_only_the_deciding_images(runner, slices):
    inputs = slices["lesion"]
    plain = runner.predict(inputs)
    focus = focus_images(plain, MANIFEST)
    assert 7 in focus or 8 in focus
    full = runner.predict_tta(inputs)
    focused = runner.predict_tta(inputs, focus=focus, plain=plain)
    np.testing.assert_allclose(focused.probabilities[:, focus], full.probabilities[:, focus], atol=1e-6)
    others = [i for i in range(16) if i not in focus]
    assert others
    assert float(focused.std[others].max()) < 1e-6  # no spread where only the plain view ran


def test_augmentations_flip_the_right_axes():
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    np.testing.assert_array_equal(augment(x, "flip_lr")[0, 0, 0], [3, 2, 1, 0])
    np.testing.assert_array_equal(augment(x, "flip_ud")[0, 0, :, 0], [4, 0])
    np.testing.assert_array_equal(augment(x, "flip_both")[0, 0, 0], [7, 6, 5, 4])
    assert augment(x, "identity") is x


def test_one_session_per_model_per_process(demo_model):
    first = runtime.get_runner(demo_model)
    assert runtime.get_runner(demo_model) is first
    assert first.providers == ["CPUExecutionProvider"]
    runtime.clear_runners()
    assert runtime.get_runner(demo_model) is not first


# --- any ONNX model with a manifest ------------------------------------------------------------


def tiny_model(path: Path, *, input_shape, outputs: int = 1) -> str:
    """An ONNX model: global average pool of the input, times 2, minus 1, as `outputs` logits."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", outputs])
    nodes = [
        helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
    ]
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes += [
        helper.make_node("Mul", ["flat", "two"], ["doubled"]),
        helper.make_node("Sub", ["doubled", "one"], ["centred"]),
        helper.make_node("Tile", ["centred", "repeats"], ["score"]),
    ]
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [2], [1, outputs])
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[two, one, repeats])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_manifest(sha: str, **overrides) -> dict:
    manifest = {
        "schema_version": 1,
        "name": "tiny-sigmoid",
        "version": "0.1",
        "sha256": sha,
        "title": "Tiny test model",
        "intended_use": "tests only",
        "clinical_use": False,
        "specialty": "pathology",
        "applicability": {"modalities": ["CT"]},
        "input": {
            "name": "pixels",
            "kind": "slice",
            "size": [16, 16],
            "normalisation": {"method": "minmax"},
            "tta": ["identity", "flip_both"],
        },
        "output": {
            "name": "score",
            "activation": "sigmoid",
            "labels": [{"index": 0, "name": "bright", "display": "Bright image", "threshold": 0.6}],
        },
        "report": {"code": {"system": "urn:test", "code": "tiny"}},
        "licence": "CC0-1.0",
        "training_data": "none",
    }
    manifest.update(overrides)
    return manifest


def test_any_onnx_model_with_a_manifest_registers_and_runs(db, model_root):
    folder = model_root / "tiny"
    folder.mkdir()
    sha = tiny_model(folder / "model.onnx", input_shape=["n", 1, 16, 16])
    (folder / "manifest.json").write_text(json.dumps(tiny_manifest(sha)))
    assert sync_registry().ok
    model = AIModel.objects.get(name="tiny-sigmoid")
    runner = runtime.get_runner(model)
    inputs = np.stack([np.full((1, 16, 16), v, np.float32) for v in (0.0, 0.5, 1.0)])
    probabilities = runner.predict(inputs)
    np.testing.assert_allclose(
        probabilities[:, 0], 1 / (1 + np.exp(-(2 * np.array([0, 0.5, 1]) - 1))), rtol=1e-5
    )
    assert runner.predict_tta(inputs).probabilities.shape == (2, 3, 1)


def test_a_model_that_does_not_take_the_manifests_input_is_refused(tmp_path):
    sha = tiny_model(tmp_path / "model.onnx", input_shape=[1, 1, 32, 32])
    from ai_pipeline.manifest import parse_manifest

    manifest = parse_manifest(tiny_manifest(sha))
    with pytest.raises(ModelLoadError, match=r"dimension 2 is 32, the manifest says 16"):
        ModelRunner(tmp_path / "model.onnx", manifest, ["CPUExecutionProvider"])
    wrong_name = parse_manifest(tiny_manifest(sha, input={**tiny_manifest(sha)["input"], "name": "image"}))
    with pytest.raises(ModelLoadError, match=r"names input 'image', the ONNX model has \['pixels'\]"):
        ModelRunner(tmp_path / "model.onnx", wrong_name, ["CPUExecutionProvider"])


def test_an_output_that_does_not_fit_the_labels_is_an_error(tmp_path):
    sha = tiny_model(tmp_path / "model.onnx", input_shape=["n", 1, 16, 16], outputs=3)
    from ai_pipeline.manifest import parse_manifest

    runner = ModelRunner(
        tmp_path / "model.onnx", parse_manifest(tiny_manifest(sha)), ["CPUExecutionProvider"]
    )
    with pytest.raises(ModelOutputError, match="gives 3 values per image, the manifest lists 1 labels"):
        runner.predict(np.zeros((2, 1, 16, 16), np.float32))


def test_a_file_that_is_not_onnx_cannot_be_loaded(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        ModelRunner(tmp_path / "model.onnx", MANIFEST, ["CPUExecutionProvider"])
