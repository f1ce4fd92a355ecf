"""Execution providers: what onnxruntime offers, in order of preference, overridable by configuration."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ImproperlyConfigured

from ai_pipeline import runtime
from ai_pipeline.config import parse_providers
from ai_pipeline.runtime import ProviderConfigError, choose_providers

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_the_cpu_build_offers_the_cpu_provider():
    assert "CPUExecutionProvider" in runtime.available_providers()
    assert choose_providers([])[-1] == "CPUExecutionProvider"


def test_automatic_choice_prefers_tensorrt_then_cuda_then_cpu():
    assert choose_providers([], available=GPU_BUILD) == GPU_BUILD
    assert choose_providers([], available=["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers([], available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    # Providers the pipeline does not rank (e.g. OpenVINO) are only used when configured.
    assert choose_providers([], available=["OpenVINOExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_configuration_overrides_the_order(settings):
    settings.BTT_ONNX_PROVIDERS = ["CPUExecutionProvider"]
    assert choose_providers(available=GPU_BUILD) == ["CPUExecutionProvider"]
    settings.BTT_ONNX_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(available=GPU_BUILD) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_configured_providers_this_build_lacks_are_skipped_or_refused(settings, caplog):
    settings.BTT_ONNX_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING, logger="ai_pipeline.runtime"):
        assert choose_providers(available=["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "onnxruntime has no CUDAExecutionProvider" in caplog.text
    settings.BTT_ONNX_PROVIDERS = ["CUDAExecutionProvider"]
    with pytest.raises(ProviderConfigError, match=r"requirements-gpu\.txt"):
        choose_providers(available=["CPUExecutionProvider"])


def test_provider_names_and_aliases_in_the_setting():
    assert parse_providers(["cuda", "CPU", "TensorrtExecutionProvider", "cuda"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
        "TensorrtExecutionProvider",
    ]
    with pytest.raises(ImproperlyConfigured, match="'gpu' is not an onnxruntime execution provider"):
        parse_providers(["gpu"])


def test_a_failing_gpu_provider_falls_back_to_the_cpu(monkeypatch, caplog, tmp_path, settings):
    """onnxruntime-gpu on a machine whose CUDA libraries are missing: the session is made on CPU."""
    from ai_pipeline.manifest import load_manifest
    from tests.ai_pipeline.support import DEMO_MODEL

    real = runtime.ort.InferenceSession
    calls = []

    def session(path, options, providers):
        calls.append(providers)
        if any("CUDA" in (p if isinstance(p, str) else p[0]) for p in providers):
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(path, options, providers=providers)

    monkeypatch.setattr(runtime.ort, "InferenceSession", session)
    with caplog.at_level(logging.WARNING, logger="ai_pipeline.runtime"):
        runner = runtime.ModelRunner(
            DEMO_MODEL / "model.onnx",
            load_manifest(DEMO_MODEL),
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
            threads=1,
        )
    assert runner.providers == ["CPUExecutionProvider"]
    assert calls[-1] == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider failed" in caplog.text
