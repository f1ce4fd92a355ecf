"""Inference workers of the AI pipeline tests: a real `celery -A btt_health worker` on a queue of
its own (and, when asked, another broker), so no other worker of the session takes its jobs."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from tests.processes import WORKER_READY, ManagedProcess, ProcessLauncher, child_env, worker_argv

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class InferenceWorker:
    process: ManagedProcess
    queue: str
    env: dict[str, str]


def inference_env(
    base_env: Mapping[str, str], queue: str, overrides: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """The environment of a process of the pipeline on `queue`: one onnxruntime thread on CPU,
    the default model folders, no extra event subscribers."""
    return child_env(
        base_env,
        {
            "BTT_INFERENCE_QUEUE": queue,
            "BTT_ONNX_THREADS": "1",
            "BTT_ONNX_PROVIDERS": "cpu",
            "BTT_MODEL_DIR": None,
            "BTT_EVENT_SUBSCRIBERS": None,
            **(overrides or {}),
        },
    )


def new_queue(prefix: str = "pytest-ai") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def start_inference_worker(
    launcher: ProcessLauncher,
    base_env: Mapping[str, str],
    name: str,
    *,
    queue: str | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> InferenceWorker:
    """A worker (concurrency 1, prefetch 1, acks_late) consuming only `queue`; ready when returned
    (consuming, models registered, the start-up sweep queued)."""
    queue = queue or new_queue()
    env = inference_env(base_env, queue, overrides)
    process = launcher.start(name, worker_argv([queue], nodename=name), env)
    process.wait_for_log(WORKER_READY)
    process.wait_for_log(r"models: \d+ available")
    return InferenceWorker(process, queue, env)
