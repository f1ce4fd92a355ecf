"""Readers for the AI pipeline's settings (used by `btt_health/settings.py`; no Django models here).

Both raise `ImproperlyConfigured` naming the variable, so a bad value stops the process at start.
"""

from __future__ import annotations

import json
import math

from django.core.exceptions import ImproperlyConfigured

# Built-in trust-score weights (docs/trust-score.md); BTT_TRUST_WEIGHTS and TrustWeights rows override them.
DEFAULT_TRUST_WEIGHTS: dict[str, dict[str, float]] = {"default": {"alpha": 0.5, "beta": 0.25, "gamma": 0.25}}

# Short names accepted in BTT_ONNX_PROVIDERS for onnxruntime's execution providers.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def check_weights(alpha: float, beta: float, gamma: float, *, where: str) -> dict[str, float]:
    """The weights as a dict; ValueError unless each is in [0, 1] and they sum to 1 (within 0.001)."""
    values = {"alpha": alpha, "beta": beta, "gamma": gamma}
    for key, value in values.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{where}: {key} must be a number, got {value!r}")
        if not 0 <= value <= 1:
            raise ValueError(f"{where}: {key} must be between 0 and 1, got {value}")
    total = alpha + beta + gamma
    if abs(total - 1.0) > 1e-3:
        raise ValueError(f"{where}: alpha + beta + gamma must be 1, got {total:g}")
    return {key: float(value) for key, value in values.items()}


def parse_trust_weights(
    text: str | None, *, variable: str = "BTT_TRUST_WEIGHTS"
) -> dict[str, dict[str, float]]:
    """`{"radiology": {"alpha": 0.5, "beta": 0.2, "gamma": 0.3}, ...}` merged over the defaults."""
    weights = {name: dict(values) for name, values in DEFAULT_TRUST_WEIGHTS.items()}
    if text is None:
        return weights
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{variable} must be JSON, got {text!r}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ImproperlyConfigured(f"{variable} must be a JSON object of specialty -> {{alpha, beta, gamma}}")
    for specialty, values in data.items():
        name = str(specialty).strip().lower()
        if not name or not isinstance(values, dict) or set(values) != {"alpha", "beta", "gamma"}:
            raise ImproperlyConfigured(
                f"{variable}: {specialty!r} must map to an object with exactly alpha, beta and gamma"
            )
        try:
            weights[name] = check_weights(
                values["alpha"], values["beta"], values["gamma"], where=f"{variable}[{specialty!r}]"
            )
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from None
    return weights


def parse_providers(names: list[str], *, variable: str = "BTT_ONNX_PROVIDERS") -> list[str]:
    """Provider names (aliases like `cuda` expanded) in the order given; [] means choose automatically."""
    providers = []
    for name in names:
        full = PROVIDER_ALIASES.get(name.strip().lower(), name.strip())
        if not full.endswith("ExecutionProvider"):
            raise ImproperlyConfigured(
                f"{variable}: {name!r} is not an onnxruntime execution provider "
                f"(e.g. CUDAExecutionProvider, or one of {', '.join(sorted(PROVIDER_ALIASES))})"
            )
        if full not in providers:
            providers.append(full)
    return providers
