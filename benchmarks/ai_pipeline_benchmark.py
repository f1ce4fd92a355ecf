#!/usr/bin/env python3
"""AI pipeline benchmark: inference throughput against bare onnxruntime, and study-to-report latency.

One run, in a temporary directory (and a scratch PostgreSQL database it creates and drops):

1. generates a synthetic CT series with `make_ct_series.py` (`--slices`, default 300 slices of
   512x512 16-bit; seeded, cached);
2. inference throughput: prepares the series for the demo model (`fixtures/models/ct-lesion-demo`,
   or `--model-dir`) with the pipeline's own preprocessing (`SeriesBuilder`), then, taking turns in
   the same process, times
   - the pipeline's inference step: `runtime.ModelRunner.predict` (chunks of the manifest's
     `max_batch`, output activation), as `services._run` calls it, and separately the whole step
     with the test-time augmentation the pipeline applies (`predict` + `predict_tta` focused on
     `focus_images`), and the full TTA over every image for reference;
   - a bare loop: `onnxruntime.InferenceSession` on the same `model.onnx`, the same providers and
     intra-op threads, `session.run` over the same float32 array in chunks of the same batch size;
   and reports images/s (median of interleaved passes) and the ratio (target: at least 80%);
3. latency: `python manage.py serve` (HTTP, Celery worker, DICOM node) on a scratch database with
   `BTT_DICOM_STUDY_QUIET_SECONDS` (`--quiet`, default 5), the benchmark's calling AE registered
   as a peer, pushes the series with DCMTK `storescu` (`TCP_NODELAY=1`), notes when storescu exits
   (its last C-STORE answered) and polls `GET /fhir/DiagnosticReport?imaging-study=...` with a
   bearer token (`create_api_client bench --role admin`) every 100 ms until the report appears
   (target: within the quiet period plus 5 s);
4. prints a markdown table with both targets (PASS/FAIL), the providers and the machine, and
   appends it to `docs/benchmarks.md` for full-size runs (300 slices or more, both parts, never
   with `--no-record`).

Exit status: 0 when every target passed, 1 when one failed, 2 on errors.

Run from the repository root with the project's virtualenv:

    .venv/bin/python benchmarks/ai_pipeline_benchmark.py                          # full size, CPU
    .venv/bin/python benchmarks/ai_pipeline_benchmark.py --slices 40 --no-record  # smoke run
    .venv/bin/python benchmarks/ai_pipeline_benchmark.py --providers cuda         # GPU (onnxruntime-gpu)
    .venv/bin/python benchmarks/ai_pipeline_benchmark.py --providers cuda --inference-only  # no PG/DCMTK
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicom_ingest_benchmark import CALLING_AET, NODE_AET, ScratchDatabase, echo, node_env, tool_version
from fhir_benchmark import Stack, free_port, load_average, machine_description, manage, record
from make_ct_series import Series, SeriesSpec, ensure_series

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO_ROOT / "manage.py"
RESULTS_FILE = REPO_ROOT / "docs" / "benchmarks.md"
DEMO_MODEL = REPO_ROOT / "fixtures" / "models" / "ct-lesion-demo"

FULL_SLICES = 300
TARGET_SHARE_OF_BARE = 0.80
LATENCY_SLACK_S = 5.0
POLL_INTERVAL_S = 0.1
FHIR_JSON = "application/fhir+json"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- Part 1: inference throughput -------------------------------------------------------------------


@dataclass
class Throughput:
    images: int
    batch: int
    providers: list[str]
    threads: int
    passes: int
    bare: float  # images/s, median
    plain: float  # pipeline predict
    step: float  # predict + focused TTA, as services._run does
    tta_full: float  # every augmentation over every image
    focus: int
    augmentations: list[str]
    prepare_seconds: float
    bare_all: list[float] = field(default_factory=list)
    plain_all: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.plain / self.bare if self.bare else 0.0

    @property
    def ok(self) -> bool:
        return self.ratio >= TARGET_SHARE_OF_BARE


def setup_django(data_dir: Path, providers: str, threads: int) -> None:
    """Django settings for the in-process part (runtime reads a few); storage in the work dir."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "btt_health.settings")
    os.environ["BTT_DATA_DIR"] = str(data_dir)
    os.environ["BTT_ONNX_THREADS"] = str(threads)
    if providers == "auto":
        os.environ.pop("BTT_ONNX_PROVIDERS", None)
    else:
        os.environ["BTT_ONNX_PROVIDERS"] = providers
    os.environ.setdefault("BTT_LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()


def prepare(series: Series, manifest) -> tuple[object, float]:
    """The series as the pipeline prepares it (decode, window, resize, stack): a PreparedSeries."""
    from ai_pipeline.preprocessing import SeriesBuilder, decode_frames, read_dataset

    began = time.perf_counter()
    builder = SeriesBuilder(series.series_instance_uid, manifest.input)
    for path in series.files:
        ds = read_dataset(path, name=path.name)
        for frame in decode_frames(ds, name=path.name):
            builder.add(frame)
    prepared = builder.build(manifest.quality)
    return prepared, time.perf_counter() - began


def measure_inference(series: Series, model_dir: Path, min_seconds: float, min_passes: int) -> Throughput:
    import numpy as np
    import onnxruntime as ort
    from django.conf import settings

    from ai_pipeline import runtime
    from ai_pipeline.manifest import load_manifest

    manifest = load_manifest(model_dir)
    prepared, prepare_seconds = prepare(series, manifest)
    inputs = np.ascontiguousarray(prepared.inputs, dtype=np.float32)
    providers = runtime.choose_providers()
    threads = int(settings.BTT_ONNX_THREADS)
    runner = runtime.ModelRunner(model_dir / "model.onnx", manifest, providers, threads=threads)
    batch = runner.fixed_batch or manifest.input.max_batch

    # The peer: onnxruntime as anyone would call it, same model, providers and intra-op threads.
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), options, providers=runtime._with_options(runner.providers)
    )
    input_name = session.get_inputs()[0].name
    chunks = [inputs[start : start + batch] for start in range(0, len(inputs), batch)]

    def bare() -> None:
        for chunk in chunks:
            session.run(None, {input_name: chunk})

    def plain() -> None:
        runner.predict(inputs)

    def step() -> None:
        result = runner.predict(inputs)
        runner.predict_tta(inputs, focus=runtime.focus_images(result, manifest), plain=result)

    def tta_full() -> None:
        runner.predict_tta(inputs)

    focus = runtime.focus_images(runner.predict(inputs), manifest)
    for fn in (bare, plain, step, tta_full):  # warm-up (first runs allocate, CUDA/TensorRT build)
        fn()

    def timed(fn: Callable[[], None]) -> float:
        began = time.perf_counter()
        fn()
        return len(inputs) / (time.perf_counter() - began)

    # The two compared take turns, so drift in load hits them alike; until both had min_seconds.
    bare_rates: list[float] = []
    plain_rates: list[float] = []
    spent = 0.0
    began = time.perf_counter()
    while len(bare_rates) < min_passes or spent < 2 * min_seconds:
        bare_rates.append(timed(bare))
        plain_rates.append(timed(plain))
        spent = time.perf_counter() - began
    extra = max(3, min_passes // 2)
    step_rates = [timed(step) for _ in range(extra)]
    tta_rates = [timed(tta_full) for _ in range(extra)]
    return Throughput(
        images=len(inputs),
        batch=batch,
        providers=list(runner.providers),
        threads=threads,
        passes=len(bare_rates),
        bare=statistics.median(bare_rates),
        plain=statistics.median(plain_rates),
        step=statistics.median(step_rates),
        tta_full=statistics.median(tta_rates),
        focus=len(focus),
        augmentations=list(manifest.input.tta),
        prepare_seconds=prepare_seconds,
        bare_all=bare_rates,
        plain_all=plain_rates,
    )


# --- Part 2: last C-STORE to readable DiagnosticReport ---------------------------------------------


@dataclass
class Latency:
    quiet: float
    seconds: float | None  # last storescu exit -> report readable
    push_seconds: float
    polls: int
    report_id: str = ""
    job: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def target(self) -> float:
        return self.quiet + LATENCY_SLACK_S

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.seconds <= self.target and not self.problems


class ServeStack(Stack):
    """`manage.py serve` on the scratch database (see fhir_benchmark.Stack), with its ports."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.http_port = int(env["BTT_HTTP_PORT"])
        self.dicom_port = int(env["BTT_DICOM_PORT"])

    def get(self, path: str, token: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            headers = {"Accept": FHIR_JSON}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def query_one(db_url: str, statement: str, params: Sequence[object] = ()) -> tuple | None:
    import psycopg2

    with contextlib.closing(psycopg2.connect(db_url)) as conn, conn.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def measure_latency(
    args: argparse.Namespace, series: Series, db: ScratchDatabase, workdir: Path
) -> tuple[Latency, ServeStack]:
    data_dir = workdir / "serve-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    db.fresh_copy()
    env = node_env(db.url, data_dir, free_port())
    env.update(
        {
            "BTT_DICOM_STUDY_QUIET_SECONDS": f"{args.quiet:g}",
            "BTT_ONNX_THREADS": str(args.threads),
            "BTT_LOG_LEVEL": "INFO",
        }
    )
    if args.providers != "auto":
        env["BTT_ONNX_PROVIDERS"] = args.providers
    token = manage(env, "create_api_client", "bench", "--role", "admin").stdout.strip().splitlines()[-1]
    stack = ServeStack(env, workdir / "serve.log")

    def ready() -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if stack.get("/readyz", "")[0] != 200:
                return False
            # The worker registers the models when it is ready (ai_pipeline.tasks, worker_ready).
            row = query_one(db.url, "SELECT count(*) FROM ai_pipeline_aimodel WHERE status = 'available'")
            return bool(row and row[0]) and echo(stack.dicom_port, NODE_AET)
        return False

    began = time.perf_counter()
    stack.start(ready)
    print(f"serve ready in {time.perf_counter() - began:.1f} s (log {stack.log_path})", flush=True)

    argv = [
        "storescu",
        "-aet",
        CALLING_AET,
        "-aec",
        NODE_AET,
        "-R",
        "127.0.0.1",
        str(stack.dicom_port),
        *map(str, series.files),
    ]
    storescu_env = dict(env, TCP_NODELAY="1")
    started = time.monotonic()
    sent = subprocess.run(argv, env=storescu_env, capture_output=True, text=True)
    last_store = time.monotonic()
    result = Latency(quiet=args.quiet, seconds=None, push_seconds=last_store - started, polls=0)
    if sent.returncode != 0:
        result.problems.append(f"storescu exit {sent.returncode}: {sent.stderr.strip()[-300:]}")
        return result, stack
    print(f"pushed {series.count} slices in {result.push_seconds:.2f} s; polling for the report", flush=True)

    uid = series.study_instance_uid
    imaging_id = ""
    deadline = last_store + max(60.0, 4 * result.target)
    while time.monotonic() < deadline:
        result.polls += 1
        if not imaging_id:
            row = query_one(
                db.url, "SELECT fhir_imaging_study_id FROM dicom_study WHERE study_instance_uid = %s", [uid]
            )
            imaging_id = row[0] if row and row[0] else ""
        if imaging_id:
            query = urllib.parse.urlencode({"imaging-study": f"ImagingStudy/{imaging_id}"})
            status, body = stack.get(f"/fhir/DiagnosticReport?{query}", token)
            if status != 200:
                result.problems.append(f"GET DiagnosticReport: HTTP {status} {body[:200]!r}")
                return result, stack
            entries = [
                e
                for e in json.loads(body).get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"
            ]
            if entries:
                result.seconds = time.monotonic() - last_store
                result.report_id = entries[0]["resource"]["id"]
                break
        time.sleep(POLL_INTERVAL_S)
    if result.seconds is None:
        job = query_one(
            db.url, "SELECT state, reason FROM ai_pipeline_inferencejob WHERE study_instance_uid = %s", [uid]
        )
        result.problems.append(
            f"no DiagnosticReport within {deadline - last_store:.0f} s (ImagingStudy {imaging_id or 'not made'}, "
            f"job {job or 'not created'})"
        )
        return result, stack
    row = query_one(
        db.url,
        "SELECT queue_seconds, load_seconds, preprocess_seconds, inference_seconds, write_seconds, run_seconds, "
        "images FROM ai_pipeline_inferencejob WHERE study_instance_uid = %s",
        [uid],
    )
    if row:
        names = ("queue", "load", "preprocess", "inference", "write", "run")
        result.job = {name: value for name, value in zip(names, row[:6], strict=True) if value is not None}
        images = row[6]
        result.job["images"] = len(images) if isinstance(images, list) else images
    return result, stack


# --- Report ---------------------------------------------------------------------------------------


def report(args: argparse.Namespace, series: Series, tp: Throughput | None, lat: Latency | None) -> str:
    lines = ["| target (issue 4) | result | verdict |", "| --- | --- | --- |"]
    if tp:
        lines.append(
            f"| pipeline inference step ≥ {TARGET_SHARE_OF_BARE:.0%} of bare onnxruntime | "
            f"{tp.plain:,.1f} vs {tp.bare:,.1f} images/s ({tp.ratio:.0%}) | {verdict(tp.ok)} |"
        )
    else:
        lines.append("| pipeline inference step ≥ 80% of bare onnxruntime | not measured | — |")
    if lat:
        shown = f"{lat.seconds:.2f} s" if lat.seconds is not None else "no report"
        extra = f"; {'; '.join(lat.problems)}" if lat.problems else ""
        lines.append(
            f"| last C-STORE → DiagnosticReport readable ≤ quiet period + {LATENCY_SLACK_S:g} s | {shown} "
            f"(quiet period {lat.quiet:g} s, limit {lat.target:g} s){extra} | {verdict(lat.ok)} |"
        )
    else:
        lines.append("| last C-STORE → DiagnosticReport readable | not measured (`--inference-only`) | — |")

    if tp:
        lines += [
            "",
            "| inference, same process, same input | images/s | ratio to bare |",
            "| --- | --- | --- |",
            f"| bare onnxruntime loop (`InferenceSession.run`, chunks of {tp.batch}) | {tp.bare:,.1f} | 1.00 |",
            f"| pipeline `ModelRunner.predict` (chunks of {tp.batch}, softmax) | {tp.plain:,.1f} | {tp.ratio:.2f} |",
            f"| pipeline step with its TTA (`predict` + `predict_tta` on {tp.focus} focus images x "
            f"{len(tp.augmentations) - 1} flips) | {tp.step:,.1f} | {tp.step / tp.bare:.2f} |",
            f"| full TTA, every image x {len(tp.augmentations)} ({', '.join(tp.augmentations)}) "
            f"| {tp.tta_full:,.1f} | {tp.tta_full / tp.bare:.2f} |",
        ]
    lines.append("")
    lines.append(
        f"- Series: {series.count} slices of CT Image Storage, 512x512 16-bit (synthetic phantom from "
        f"`make_ct_series.py`, seed {args.seed}); model `{args.model_dir.name}` "
        f"({args.model_dir.relative_to(REPO_ROOT) if args.model_dir.is_relative_to(REPO_ROOT) else args.model_dir})."
    )
    if tp:
        lines.append(
            f"- Inference: {tp.images} prepared images (pipeline preprocessing took {tp.prepare_seconds:.2f} s, "
            f"not timed below); providers {', '.join(tp.providers)}; intra-op threads "
            f"{tp.threads or 'onnxruntime default'}; median of {tp.passes} interleaved passes each "
            f"(bare {min(tp.bare_all):,.0f} to {max(tp.bare_all):,.0f}, pipeline "
            f"{min(tp.plain_all):,.0f} to {max(tp.plain_all):,.0f} images/s); TTA rows: median of their own passes."
        )
    if lat:
        lines.append(
            f"- Latency: `manage.py serve` (HTTP, Celery worker, DICOM node; embedded broker), "
            f"`BTT_DICOM_STUDY_QUIET_SECONDS={lat.quiet:g}`, one storescu association (`TCP_NODELAY=1`, push "
            f"took {lat.push_seconds:.2f} s), from storescu's exit to the first `GET /fhir/DiagnosticReport?"
            f"imaging-study=` that finds the report, polled every {POLL_INTERVAL_S * 1000:.0f} ms "
            f"({lat.polls} polls); the worker's first study (session created on first use)."
        )
    if lat and lat.job:
        parts = ", ".join(
            f"{k} {v:.2f} s" for k, v in lat.job.items() if k != "images" and isinstance(v, int | float)
        )
        lines.append(f"- The inference job's own timings: {parts}; {lat.job.get('images')} images.")
    return "\n".join(lines)


# --- Main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=FULL_SLICES, help="slices in the CT series")
    parser.add_argument("--seed", type=int, default=SeriesSpec.seed, help="seed of the synthetic series")
    parser.add_argument(
        "--model-dir", type=Path, default=DEMO_MODEL, help="model folder (model.onnx, manifest)"
    )
    parser.add_argument(
        "--providers",
        default="auto",
        help="onnxruntime providers as BTT_ONNX_PROVIDERS takes them (cpu, cuda, tensorrt, comma-separated), "
        "or auto: TensorRT, CUDA, CPU as far as onnxruntime offers them",
    )
    parser.add_argument("--threads", type=int, default=0, help="BTT_ONNX_THREADS (0: onnxruntime's default)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least time for each compared loop")
    parser.add_argument("--min-passes", type=int, default=10, help="least passes for each compared loop")
    parser.add_argument("--quiet", type=float, default=5.0, help="BTT_DICOM_STUDY_QUIET_SECONDS of the node")
    parser.add_argument(
        "--inference-only",
        action="store_true",
        help="skip the latency part (no PostgreSQL or DCMTK needed: e.g. a bare GPU machine)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL of a role that may create databases (env BENCH_PG_URL)",
    )
    parser.add_argument("--db-name", default="btt_ai_bench", help="scratch database, dropped at the end")
    parser.add_argument("--series-cache", type=Path, default=None, help="where generated series are cached")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and the database")
    args = parser.parse_args(argv)
    args.command_line = [
        "python",
        "benchmarks/ai_pipeline_benchmark.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    args.model_dir = args.model_dir.resolve()
    if not (args.model_dir / "model.onnx").is_file() or not (args.model_dir / "manifest.json").is_file():
        parser.error(f"--model-dir {args.model_dir}: needs model.onnx and manifest.json")
    if args.slices < 1 or args.min_passes < 1 or args.threads < 0:
        parser.error("--slices and --min-passes must be at least 1, --threads at least 0")
    if not args.inference_only:
        missing = [tool for tool in ("storescu", "echoscu") if not shutil.which(tool)]
        if missing:
            parser.error(f"DCMTK is not installed ({', '.join(missing)} missing); or pass --inference-only")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every target passed, 1 when one failed, 2 on errors."""
    args = parse_args(argv)
    will_record = args.slices >= FULL_SLICES and not args.inference_only and not args.no_record
    signal.signal(signal.SIGTERM, _interrupt)
    load_before = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="btt-ai-bench-"))
    db: ScratchDatabase | None = None
    stack: ServeStack | None = None
    print(f"work dir {workdir}", flush=True)
    try:
        setup_django(workdir / "inproc-data", args.providers, args.threads)
        spec = SeriesSpec(slices=args.slices, seed=args.seed)
        began = time.perf_counter()
        series = ensure_series(spec, args.series_cache)
        print(
            f"series: {series.count} slices in {series.directory} ({time.perf_counter() - began:.1f} s)",
            flush=True,
        )

        tp = measure_inference(series, args.model_dir, args.min_seconds, args.min_passes)
        print(
            f"inference on {', '.join(tp.providers)}: pipeline {tp.plain:,.1f} images/s, bare {tp.bare:,.1f} "
            f"({tp.ratio:.0%}); with focused TTA {tp.step:,.1f}; full TTA {tp.tta_full:,.1f}",
            flush=True,
        )

        lat = None
        pg_version = "not used (--inference-only)"
        if not args.inference_only:
            db = ScratchDatabase(args.pg_url, args.db_name)
            db.create_template(workdir)
            pg_version = db.version
            lat, stack = measure_latency(args, series, db, workdir)
            print(
                f"latency: {lat.seconds:.2f} s" if lat.seconds is not None else "latency: no report",
                *lat.problems,
                flush=True,
            )

        import onnxruntime as ort

        table = report(args, series, tp, lat)
        machine = machine_description(pg_version, load_before)
        machine["onnxruntime"] = (
            f"{ort.__version__} (available providers: {', '.join(ort.get_available_providers())})"
        )
        machine["Providers used"] = ", ".join(tp.providers)
        if not args.inference_only:
            machine["DCMTK"] = tool_version(["storescu", "--version"], r"storescu (v[\w.]+ [\d-]+)")
        gpu = gpu_description()
        if gpu:
            machine["GPU"] = gpu
        print()
        print("\n".join(f"- {k}: {v}" for k, v in machine.items()))
        print()
        print(table)
        print()
        if will_record:
            record(table, machine, args, "AI pipeline: inference throughput and study-to-report latency")
            print(f"appended to {RESULTS_FILE.relative_to(REPO_ROOT)}")
        elif args.no_record:
            print("not recorded (--no-record)")
        else:
            print(f"not recorded: not a full run (both parts, at least {FULL_SLICES} slices)")
        passed = tp.ok and (lat is None or lat.ok)
        return 0 if passed else 1
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"benchmark failed: {exc!r}", file=sys.stderr)
        if stack is not None:
            print(f"--- end of serve's log ---\n{stack.log_tail(30)}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.stop()
        if args.keep:
            print(f"kept {workdir}" + (f" and database {db.name}" if db else ""), file=sys.stderr)
        else:
            if db is not None:
                db.drop()
            shutil.rmtree(workdir, ignore_errors=True)


def gpu_description() -> str:
    """`nvidia-smi`'s name and memory of the GPUs, where there is one."""
    if not shutil.which("nvidia-smi"):
        return ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        return "; ".join(line.strip() for line in out.splitlines() if line.strip())
    return ""


if __name__ == "__main__":
    sys.exit(main())
