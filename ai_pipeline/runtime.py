"""onnxruntime sessions: one per model per worker process, created on first use and kept.

Execution providers: `BTT_ONNX_PROVIDERS` when set (those of them this onnxruntime build has, in
that order; none of them available is an error), otherwise TensorRT, then CUDA, then CPU, as far
as the installed onnxruntime offers them (`onnxruntime-gpu` offers TensorRT and CUDA; plain
`onnxruntime` only CPU). onnxruntime-gpu lists the GPU providers even on a machine without a GPU
or without the TensorRT libraries: onnxruntime then falls back to the next provider, and when
session creation with GPU providers fails outright the session is made again on CPU with a
warning. `ModelRunner.providers` is what the session really uses; the job records it.

TensorRT builds an engine per model and input shape on first use (minutes for big models);
engines are cached in `BTT_ONNX_TRT_CACHE_DIR` and reused by later processes.

Before a session is created, `model.onnx` is hashed and compared with the registered SHA-256
(`registry.verify_model_file`), so a file swapped after registration is refused.

`ModelRunner.predict(inputs)` runs a prepared batch in chunks of the manifest's `max_batch` and
applies the output activation; `predict_tta(inputs)` does so for every test-time augmentation
the manifest lists (identity, left-right flip, up-down flip, both), giving the spread of the
predictions that the trust score's U_factor is computed from.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from django.conf import settings

from ai_pipeline.manifest import Manifest
from ai_pipeline.registry import RegistryError, manifest_of, verify_model_file

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelLoadError(RegistryError):
    """The ONNX model cannot be loaded, or does not take/give what its manifest says."""


class ModelOutputError(Exception):
    """The model's output does not have the shape its manifest describes."""


class ProviderConfigError(RuntimeError):
    """BTT_ONNX_PROVIDERS names no provider this onnxruntime build has."""


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def choose_providers(requested: list[str] | None = None, available: list[str] | None = None) -> list[str]:
    """The providers to create sessions with, in order of preference (see the module docstring)."""
    available = available_providers() if available is None else list(available)
    requested = list(settings.BTT_ONNX_PROVIDERS) if requested is None else list(requested)
    if requested:
        chosen = [name for name in requested if name in available]
        absent = [name for name in requested if name not in available]
        if not chosen:
            raise ProviderConfigError(
                f"BTT_ONNX_PROVIDERS asks for {', '.join(requested)}, but this onnxruntime offers only "
                f"{', '.join(available)} (install onnxruntime-gpu from requirements-gpu.txt for CUDA/TensorRT)"
            )
        if absent:
            logger.warning("onnxruntime has no %s; using %s", ", ".join(absent), ", ".join(chosen))
        return chosen
    chosen = [name for name in AUTO_ORDER if name in available]
    return chosen or available[:1]


def _with_options(providers: list[str]) -> list:
    result: list = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache = Path(settings.BTT_ONNX_TRT_CACHE_DIR)
            cache.mkdir(parents=True, exist_ok=True)
            result.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}))
        else:
            result.append(name)
    return result


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; provider fallbacks are logged by us
    return options


@dataclass
class TTAResult:
    """Predictions under each augmentation: `probabilities[a, i, k]` for augmentation a, image i, label k."""

    augmentations: list[str]
    probabilities: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.probabilities.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.probabilities.std(axis=0)


def augment(inputs: np.ndarray, name: str) -> np.ndarray:
    """Flip the last (width) and/or second-to-last (height) axis of a prepared batch."""
    if name == "identity":
        return inputs
    axes = {"flip_lr": (-1,), "flip_ud": (-2,), "flip_both": (-2, -1)}[name]
    return np.ascontiguousarray(np.flip(inputs, axis=axes))


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        shifted = values - values.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-values))
    return values


class ModelRunner:
    """An onnxruntime session for one registered model, with its manifest."""

    def __init__(self, path: Path, manifest: Manifest, providers: list[str], *, threads: int = 0) -> None:
        self.path = Path(path)
        self.manifest = manifest
        options = _session_options(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_with_options(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            gpu = [name for name in providers if name in GPU_PROVIDERS]
            if not gpu or "CPUExecutionProvider" not in available_providers():
                raise ModelLoadError(
                    f"model {manifest.key}: onnxruntime cannot load {self.path}: {exc}"
                ) from exc
            logger.warning("model %s: %s failed (%s); using the CPU", manifest.key, ", ".join(gpu), exc)
            try:
                self.session = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as cpu_exc:
                raise ModelLoadError(
                    f"model {manifest.key}: onnxruntime cannot load {self.path}: {cpu_exc}"
                ) from cpu_exc
        self.providers = list(self.session.get_providers())
        self.input_name = self._pick(self.session.get_inputs(), manifest.input.name, "input")
        self.output_name = self._pick(self.session.get_outputs(), manifest.output.name, "output")
        self._check_input()

    def _pick(self, nodes: list, wanted: str | None, what: str) -> str:
        names = [node.name for node in nodes]
        if wanted is None:
            return names[0]
        if wanted not in names:
            raise ModelLoadError(
                f"model {self.manifest.key}: the manifest names {what} {wanted!r}, the ONNX model has {names}"
            )
        return wanted

    def _check_input(self) -> None:
        spec = self.manifest.input
        node = next(node for node in self.session.get_inputs() if node.name == self.input_name)
        expected = [None, spec.channels, *spec.size]  # batch, channels, ([depth,] height, width)
        if len(node.shape) != len(expected):
            raise ModelLoadError(
                f"model {self.manifest.key}: input {node.name!r} has shape {node.shape}; a {spec.kind} model "
                f"of this manifest needs {len(expected)} dimensions"
            )
        for dimension, (actual, wanted) in enumerate(zip(node.shape, expected, strict=True)):
            if wanted is not None and isinstance(actual, int) and actual != wanted:
                raise ModelLoadError(
                    f"model {self.manifest.key}: input {node.name!r} dimension {dimension} is {actual}, "
                    f"the manifest says {wanted} (shape {node.shape})"
                )
        if node.type != "tensor(float)":
            raise ModelLoadError(
                f"model {self.manifest.key}: input {node.name!r} is {node.type}, not float32"
            )
        batch = node.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        if self.fixed_batch and len(chunk) != self.fixed_batch:  # models exported with a fixed batch size
            return np.concatenate([self._run(chunk[i : i + 1]) for i in range(len(chunk))])
        (output,) = self.session.run([self.output_name], {self.input_name: chunk})
        return np.asarray(output, dtype=np.float32).reshape(len(chunk), -1)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """(N, ...) prepared inputs → (N, labels) probabilities (after the manifest's activation)."""
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        size = self.fixed_batch or self.manifest.input.max_batch
        outputs = [self._run(inputs[start : start + size]) for start in range(0, len(inputs), size)]
        labels = len(self.manifest.output.labels)
        raw = np.concatenate(outputs) if outputs else np.zeros((0, labels), np.float32)
        if raw.shape[1] != labels:
            raise ModelOutputError(
                f"model {self.manifest.key}: output {self.output_name!r} gives {raw.shape[1]} values per image, "
                f"the manifest lists {labels} labels"
            )
        return _activate(raw, self.manifest.output.activation).astype(np.float32)

    def predict_tta(
        self,
        inputs: np.ndarray,
        augmentations: list[str] | None = None,
        *,
        focus: list[int] | None = None,
        plain: np.ndarray | None = None,
    ) -> TTAResult:
        """Predictions under every augmentation (the manifest's `tta` by default).

        With `focus` (image indexes), only those images are also run augmented; the others keep
        their plain prediction under every augmentation (no spread). The pipeline focuses on the
        images that decide the report (`focus_images`), which is where the trust score reads the
        spread, at a fraction of the cost of augmenting a 300-slice series. `plain` is the
        prediction without augmentation when the caller has it already.
        """
        names = list(augmentations or self.manifest.input.tta)
        if focus is None:
            return TTAResult(names, np.stack([self.predict(augment(inputs, name)) for name in names]))
        if plain is None or names[0] != "identity":
            plain = self.predict(augment(inputs, names[0]))
        stacked = np.repeat(plain[np.newaxis], len(names), axis=0)
        chosen = sorted({int(i) for i in focus if 0 <= int(i) < len(inputs)})
        if chosen and len(names) > 1:
            subset = inputs[chosen]
            for row, name in enumerate(names[1:], start=1):
                stacked[row, chosen] = self.predict(augment(subset, name))
        return TTAResult(names, stacked)


def focus_images(probabilities: np.ndarray, manifest: Manifest) -> list[int]:
    """Images that decide a report: for each finding label, those at or above its threshold (and
    their neighbours) and the few highest below it. `probabilities` is (images, labels)."""
    count = len(probabilities)
    run = manifest.output.min_consecutive_slices if manifest.input.kind == "slice" else 1
    chosen: set[int] = set()
    for label in manifest.output.findings:
        values = probabilities[:, label.index]
        for index in np.flatnonzero(values >= label.threshold):
            chosen.update({int(index) - 1, int(index), int(index) + 1})
        chosen.update(int(i) for i in np.argsort(-values, kind="stable")[: run + 2])
    return sorted(i for i in chosen if 0 <= i < count)


_runners: dict[tuple, ModelRunner] = {}
_runners_lock = threading.Lock()
_owner_pid = os.getpid()


def get_runner(model) -> ModelRunner:
    """The cached ModelRunner of an `AIModel` row, made (after an integrity check) on first use."""
    global _owner_pid
    providers = choose_providers()
    threads = int(settings.BTT_ONNX_THREADS)
    key = (model.name, model.version, model.sha256, model.path, tuple(providers), threads)
    with _runners_lock:
        if os.getpid() != _owner_pid:  # a forked child must not share the parent's sessions
            _runners.clear()
            _owner_pid = os.getpid()
        runner = _runners.get(key)
        if runner is not None:
            return runner
        manifest = manifest_of(model)
        path = verify_model_file(Path(model.path), model.sha256, key=f"{model.name} {model.version}")
        runner = ModelRunner(path, manifest, providers, threads=threads)
        # One session per model name: a new version or file replaces the old session.
        for old in [k for k in _runners if k[0] == model.name]:
            del _runners[old]
        _runners[key] = runner
        logger.info("model %s %s loaded on %s", model.name, model.version, ", ".join(runner.providers))
        return runner


def clear_runners() -> None:
    with _runners_lock:
        _runners.clear()
