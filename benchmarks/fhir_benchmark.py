#!/usr/bin/env python3
"""FHIR server benchmark: transaction ingest, reads and searches on PostgreSQL, against a ceiling.

One run does everything on a scratch PostgreSQL database that it creates and drops:

1. creates the database (`--db-name`, default `btt_bench`), runs `manage.py migrate` into it and
   makes an admin API client;
2. starts the stack with `python manage.py serve` on a free port (gunicorn with `--http-workers`
   workers and `--http-threads` threads each, no Celery worker, `BTT_BENCH_VIEWS=1`);
3. loads `--patients` Patients with `--observations-per-patient` Observations each through
   transaction Bundles over HTTP (one Patient plus its Observations per Bundle, linked by
   `urn:uuid:` fullUrls), from `--ingest-clients` concurrent clients -> resources/s;
4. with `--load-clients` concurrent keep-alive connections, measures requests/s and latency (p50,
   p99) of: the bare Django view `/bench/fixed` (a fixed ~1 KB JSON body, the ceiling), FHIR reads
   (`Patient/<id>`, `Observation/<id>`), token search (`Observation?code=http://loinc.org|<code>`)
   and date search (`Observation?date=ge<day>&date=lt<day+7>`), both with `_count=20`;
5. prints a markdown table with the targets and PASS/FAIL, and appends it with a description of
   the machine to `docs/benchmarks.md`, for full-size runs only (never with `--no-record`).

The load generator is `wrk` when it is installed (`apt-get install -y wrk`), else a Python client
(`http.client` keep-alive connections in threads), which itself uses much of a small machine's CPU;
the output says which one measured. Client and server share the machine either way.

Run from the repository root with the project's virtualenv:

    .venv/bin/python benchmarks/fhir_benchmark.py                  # full size: 10,000 + 100,000
    .venv/bin/python benchmarks/fhir_benchmark.py --patients 200 --duration 5   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql

try:
    import orjson
except ImportError:  # pragma: no cover - the project's venv has orjson
    orjson = None


def dumps(value: object) -> bytes:
    """Serialise to compact JSON bytes."""
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, separators=(",", ":")).encode()


def loads(data: bytes | str) -> object:
    """Parse JSON."""
    return orjson.loads(data) if orjson is not None else json.loads(data)


REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO_ROOT / "manage.py"
RESULTS_FILE = REPO_ROOT / "docs" / "benchmarks.md"
FULL_PATIENTS = 10_000
FULL_OBSERVATIONS_PER_PATIENT = 10

# Targets the table reports PASS/FAIL against.
TARGET_READ_SHARE_OF_BARE = 0.50
TARGET_SEARCH_P50_MS = 20.0
TARGET_INGEST_RESOURCES_PER_S = 1_000.0
# The load stops when this many Bundles were posted and every one failed.
ABORT_AFTER_FAILURES = 20

# Observations are spread over these two years; date searches ask for one week inside them.
PERIOD_START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
PERIOD_DAYS = 731
DATE_WINDOW_DAYS = 7
REFERENCE_WINDOW = dt.date(2021, 3, 1)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5.99999.1"

# 50 LOINC codes seen in EHR exports: (code, display, UCUM unit, typical value, spread, category).
# fmt: off
LOINC_CODES: tuple[tuple[str, str, str, float, float, str], ...] = (
    ("8867-4", "Heart rate", "/min", 76, 12, "vital-signs"),
    ("9279-1", "Respiratory rate", "/min", 15, 2.5, "vital-signs"),
    ("8310-5", "Body temperature", "Cel", 36.9, 0.5, "vital-signs"),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 124, 15, "vital-signs"),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 79, 10, "vital-signs"),
    ("29463-7", "Body weight", "kg", 78, 16, "vital-signs"),
    ("8302-2", "Body height", "cm", 170, 10, "vital-signs"),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 26.8, 4.5, "vital-signs"),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 97, 1.5, "vital-signs"),
    ("8287-5", "Head Occipital-frontal circumference by Tape measure", "cm", 48, 4, "vital-signs"),
    ("72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported", "{score}", 2, 2, "survey"),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 98, 18, "laboratory"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 99, 20, "laboratory"),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5.8, 0.8, "laboratory"),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 190, 35, "laboratory"),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 140, 45, "laboratory"),
    ("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", 110, 30, "laboratory"),
    ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 52, 12, "laboratory"),
    ("6299-2", "Urea nitrogen [Mass/volume] in Blood", "mg/dL", 14, 4, "laboratory"),
    ("38483-4", "Creatinine [Mass/volume] in Blood", "mg/dL", 0.95, 0.2, "laboratory"),
    ("49765-1", "Calcium [Mass/volume] in Blood", "mg/dL", 9.4, 0.4, "laboratory"),
    ("2947-0", "Sodium [Moles/volume] in Blood", "mmol/L", 140, 2.5, "laboratory"),
    ("6298-4", "Potassium [Moles/volume] in Blood", "mmol/L", 4.2, 0.4, "laboratory"),
    ("2069-3", "Chloride [Moles/volume] in Blood", "mmol/L", 103, 3, "laboratory"),
    ("20565-8", "Carbon dioxide, total [Moles/volume] in Blood", "mmol/L", 25, 2.5, "laboratory"),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area]", "mL/min/{1.73_m2}", 85, 20, "laboratory"),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 7.2, 1.8, "laboratory"),
    ("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 4.8, 0.4, "laboratory"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 14, 1.4, "laboratory"),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 42, 4, "laboratory"),
    ("787-2", "MCV [Entitic volume] by Automated count", "fL", 90, 5, "laboratory"),
    ("785-6", "MCH [Entitic mass] by Automated count", "pg", 30, 2, "laboratory"),
    ("786-4", "MCHC [Mass/volume] by Automated count", "g/dL", 33.5, 1, "laboratory"),
    ("21000-5", "Erythrocyte distribution width [Entitic volume] by Automated count", "fL", 44, 4, "laboratory"),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 250, 55, "laboratory"),
    ("32623-1", "Platelet mean volume [Entitic volume] in Blood by Automated count", "fL", 10, 1, "laboratory"),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 25, 10, "laboratory"),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 24, 8, "laboratory"),
    ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 75, 20, "laboratory"),
    ("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.7, 0.3, "laboratory"),
    ("2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", 7.1, 0.5, "laboratory"),
    ("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 4.3, 0.35, "laboratory"),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 2.1, 1.0, "laboratory"),
    ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", 110, 60, "laboratory"),
    ("2132-9", "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "pg/mL", 480, 150, "laboratory"),
    ("1989-3", "Calcidiol [Mass/volume] in Serum or Plasma", "ng/mL", 28, 9, "laboratory"),
    ("14959-1", "Microalbumin/Creatinine [Mass Ratio] in Urine", "mg/g", 12, 8, "laboratory"),
    ("5811-5", "Specific gravity of Urine by Test strip", "1", 1.018, 0.006, "laboratory"),
    ("2857-1", "Prostate specific Ag [Mass/volume] in Serum or Plasma", "ng/mL", 1.4, 1.0, "laboratory"),
    ("30522-7", "C reactive protein [Mass/volume] in Serum or Plasma by High sensitivity method", "mg/L", 2.0, 1.8, "laboratory"),
)
GIVEN_NAMES = ("Amara", "Luis", "Mei", "Tomasz", "Aisha", "Johan", "Priya", "Kwame", "Sofia", "Hiroshi",
               "Fatima", "Liam", "Elena", "Oluwaseun", "Noah", "Ines", "Dmitri", "Zara", "Mateo", "Yuki")
FAMILY_NAMES = ("Okafor", "Garcia", "Chen", "Nowak", "Khan", "Andersson", "Patel", "Mensah", "Rossi",
                "Tanaka", "Haddad", "Murphy", "Popescu", "Adeyemi", "Schmidt", "Silva", "Ivanov",
                "Ahmed", "Lopez", "Sato")
CITIES = (("Springfield", "MA", "01105"), ("Worcester", "MA", "01608"), ("Boston", "MA", "02118"),
          ("Lowell", "MA", "01852"), ("Cambridge", "MA", "02139"))
# fmt: on


# --- Synthetic data --------------------------------------------------------------------------------


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def make_patient(rng: random.Random, number: int) -> dict:
    """A Patient as an EHR exports it: MRN, name, gender, birth date, address, phone."""
    city, state, postal = rng.choice(CITIES)
    gender = rng.choice(("female", "male"))
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(0, 85 * 365))
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                },
                "system": MRN_SYSTEM,
                "value": f"BENCH-{number:08d}",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": rng.choice(FAMILY_NAMES), "given": [rng.choice(GIVEN_NAMES)]}],
        "telecom": [
            {"system": "phone", "value": f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"}
        ],
        "gender": gender,
        "birthDate": birth.isoformat(),
        "address": [
            {
                "line": [f"{rng.randrange(1, 999)} Main Street"],
                "city": city,
                "state": state,
                "postalCode": postal,
            }
        ],
    }


def make_observation(rng: random.Random, patient_urn: str) -> dict:
    """A final Observation with one of the 50 LOINC codes, a valueQuantity and a time in the period."""
    code, display, unit, mean, spread, category = rng.choice(LOINC_CODES)
    when = PERIOD_START + dt.timedelta(seconds=rng.randrange(PERIOD_DAYS * 86400))
    value = round(max(0.0, rng.gauss(mean, spread)), 3 if mean < 10 else 1)
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": patient_urn},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "issued": (when + dt.timedelta(minutes=rng.randrange(5, 600))).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def make_bundle(rng: random.Random, number: int, observations: int) -> bytes:
    """A transaction Bundle: one Patient and `observations` Observations referring to it by urn:uuid."""
    patient_urn = _urn()
    entries = [
        {
            "fullUrl": patient_urn,
            "resource": make_patient(rng, number),
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for _ in range(observations):
        entries.append(
            {
                "fullUrl": _urn(),
                "resource": make_observation(rng, patient_urn),
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


# --- Measurements ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """Requests/s and latency of one measured load phase."""

    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str
    mean_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class IngestResult:
    """What loading the Bundles took."""

    bundles: int
    resources: int
    seconds: float
    failures: int
    bundle_p50_ms: float
    bundle_p99_ms: float
    first_errors: list[str] = field(default_factory=list)

    @property
    def resources_per_s(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class Server:
    """Where the stack listens and the token it accepts."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host = host
        self.port = port
        self.token = token

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        """A new keep-alive connection to the server."""
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path: str, *, auth: bool = True) -> tuple[int, bytes]:
        """One GET on a fresh connection: (status, body)."""
        conn = self.connection()
        try:
            headers = {"Accept": "application/fhir+json"}
            if auth:
                headers["Authorization"] = f"Bearer {self.token}"
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def ingest(server: Server, bundles: Sequence[bytes], resources_per_bundle: int, clients: int) -> IngestResult:
    """POST every Bundle to /fhir from `clients` threads, each on one keep-alive connection."""
    next_index = iter(range(len(bundles)))
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    headers = {
        "Authorization": f"Bearer {server.token}",
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
    }

    def worker(slot: int) -> None:
        conn = server.connection(timeout=300)
        mine = latencies[slot]
        while True:
            with lock:
                posted = sum(len(x) for x in latencies)
                if len(failures) >= ABORT_AFTER_FAILURES and len(failures) == posted:
                    break  # nothing has worked: the server is broken, no point posting the rest
                index = next(next_index, None)
            if index is None:
                break
            started = time.perf_counter()
            try:
                conn.request("POST", "/fhir", body=bundles[index], headers=headers)
                response = conn.getresponse()
                body = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = server.connection(timeout=300)
                status, body = 0, str(exc).encode()
            mine.append(time.perf_counter() - started)
            if status != 200:
                with lock:
                    failures.append(f"bundle {index}: HTTP {status}: {body[:400].decode(errors='replace')}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    done = 0
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=10)
            now_done = sum(len(x) for x in latencies)
            if now_done != done:
                done = now_done
                elapsed = time.perf_counter() - started
                print(
                    f"  ingest: {done}/{len(bundles)} bundles, "
                    f"{done * resources_per_bundle / elapsed:,.0f} resources/s so far",
                    flush=True,
                )
    seconds = time.perf_counter() - started
    all_latencies = sorted(x for per_client in latencies for x in per_client)
    ok = len(all_latencies) - len(failures)
    not_posted = len(bundles) - len(all_latencies)
    if not_posted:
        failures.insert(0, f"stopped after {len(all_latencies)} Bundles, all failed; {not_posted} not posted")
    return IngestResult(
        bundles=len(bundles),
        resources=ok * resources_per_bundle,
        seconds=seconds,
        failures=len(bundles) - ok,
        bundle_p50_ms=percentile(all_latencies, 0.50) * 1000,
        bundle_p99_ms=percentile(all_latencies, 0.99) * 1000,
        first_errors=failures[:5],
    )


WRK_SCRIPT = r"""
-- Written by benchmarks/fhir_benchmark.py: GETs the paths in $BENCH_PATHS round-robin.
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do
  if #line > 0 then paths[#paths + 1] = line end
end
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
wrk.headers["Accept"] = "application/fhir+json"

local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

local i = 0
function init(args)
  i = ((tid or 0) * 7919) % #paths
end

function request()
  i = (i % #paths) + 1
  return wrk.format("GET", paths[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f," ..
    "\"mean_us\":%.1f,\"max_us\":%.1f,\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class LoadRunner:
    """Runs a fixed-duration GET load with `clients` concurrent keep-alive connections."""

    def __init__(
        self, server: Server, tool: str, clients: int, duration: float, warmup: float, workdir: Path
    ):
        self.server = server
        self.tool = tool
        self.clients = clients
        self.duration = duration
        self.warmup = warmup
        self.workdir = workdir

    @property
    def description(self) -> str:
        if self.tool == "wrk":
            return f"wrk ({self.clients} connections on {self._wrk_threads()} threads, keep-alive)"
        return f"Python http.client ({self.clients} threads, one keep-alive connection each)"

    def _wrk_threads(self) -> int:
        return max(1, min(self.clients, os.cpu_count() or 1))

    def run(self, name: str, paths: Sequence[str], *, auth: bool = True) -> LoadResult:
        """Warm up, then measure for `duration` seconds."""
        if self.warmup > 0:
            self._measure(name, paths, auth, self.warmup)
        result = self._measure(name, paths, auth, self.duration)
        print(
            f"  {name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
            f"{result.errors} errors",
            flush=True,
        )
        return result

    def _measure(self, name: str, paths: Sequence[str], auth: bool, seconds: float) -> LoadResult:
        if self.tool == "wrk":
            return self._wrk(name, paths, auth, seconds)
        return self._python(name, paths, auth, seconds)

    def _wrk(self, name: str, paths: Sequence[str], auth: bool, seconds: float) -> LoadResult:
        script = self.workdir / "bench.lua"
        script.write_text(WRK_SCRIPT)
        paths_file = self.workdir / f"paths-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        env = {**os.environ, "BENCH_PATHS": str(paths_file), "BENCH_TOKEN": self.server.token if auth else ""}
        argv = [
            "wrk",
            "-t",
            str(self._wrk_threads()),
            "-c",
            str(self.clients),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            self.server.base,
        ]
        completed = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        line = next((x for x in completed.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if completed.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout}\n{completed.stderr}")
        data = json.loads(line.removeprefix("BENCH_JSON "))
        errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
        return LoadResult(
            name=name,
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            mean_ms=data["mean_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            errors=errors,
            tool="wrk",
        )

    def _python(self, name: str, paths: Sequence[str], auth: bool, seconds: float) -> LoadResult:
        headers = {"Accept": "application/fhir+json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.server.token}"
        latencies: list[list[float]] = [[] for _ in range(self.clients)]
        errors = [0] * self.clients
        start_gate = threading.Barrier(self.clients + 1)
        deadline_box: list[float] = [0.0]

        def client(slot: int) -> None:
            conn = self.server.connection(timeout=30)
            index = slot * 7919 % len(paths)
            mine = latencies[slot]
            start_gate.wait()
            deadline = deadline_box[0]
            perf = time.perf_counter
            while True:
                began = perf()
                if began >= deadline:
                    break
                index = (index + 1) % len(paths)
                try:
                    conn.request("GET", paths[index], headers=headers)
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        errors[slot] += 1
                except (OSError, http.client.HTTPException):
                    errors[slot] += 1
                    conn.close()
                    conn = self.server.connection(timeout=30)
                    continue
                mine.append(perf() - began)
            conn.close()

        threads = [threading.Thread(target=client, args=(slot,), daemon=True) for slot in range(self.clients)]
        for thread in threads:
            thread.start()
        began = time.perf_counter()
        deadline_box[0] = began + seconds
        start_gate.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        ordered = sorted(x for per_client in latencies for x in per_client)
        return LoadResult(
            name=name,
            requests=len(ordered),
            seconds=elapsed,
            p50_ms=percentile(ordered, 0.50) * 1000,
            p99_ms=percentile(ordered, 0.99) * 1000,
            mean_ms=(statistics.fmean(ordered) * 1000) if ordered else 0.0,
            max_ms=(ordered[-1] * 1000) if ordered else 0.0,
            errors=sum(errors),
            tool="python",
        )


# --- The stack and its database -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(admin_url: str, name: str) -> str:
    """`admin_url` with its database name replaced by `name`."""
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


@contextlib.contextmanager
def admin_connection(admin_url: str) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection for CREATE/DROP DATABASE."""
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def create_database(admin_url: str, name: str) -> str:
    """Drop `name` if left over from an aborted run, create it empty; return the server version."""
    with admin_connection(admin_url) as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        cursor.execute("SHOW server_version")
        return cursor.fetchone()[0]


def drop_database(admin_url: str, name: str) -> None:
    """Drop the scratch database, disconnecting whatever still uses it."""
    with admin_connection(admin_url) as conn, conn.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def stack_env(db_url: str, data_dir: Path, port: int, workers: int, threads: int) -> dict[str, str]:
    """The server's environment: this one without its BTT_/DJANGO_/CELERY_ settings, plus ours."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BTT_", "DJANGO_", "CELERY_")) and name != "DATABASE_URL"
    }
    env.update(
        {
            "DATABASE_URL": db_url,
            "BTT_DATA_DIR": str(data_dir),
            "BTT_HTTP_HOST": "127.0.0.1",
            "BTT_HTTP_PORT": str(port),
            "BTT_HTTP_WORKERS": str(workers),
            "BTT_HTTP_THREADS": str(threads),
            "BTT_RUN_WORKER": "false",
            "BTT_BENCH_VIEWS": "1",
            "BTT_LOG_LEVEL": "WARNING",
            # Listeners `serve` may run besides HTTP get free ports, away from a dev stack's.
            "BTT_DICOM_PORT": str(free_port()),
            "BTT_MLLP_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run a management command to completion; raise with its output when it fails."""
    completed = subprocess.run(
        [sys.executable, str(MANAGE_PY), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    if completed.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed


def launch(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `argv` in a session (process group) of its own, its output appended to `log_path`."""
    with log_path.open("ab") as log:
        log.write(f"\n--- {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(
    process: subprocess.Popen, ready: Callable[[], bool], what: str, log_path: Path, timeout: float
) -> None:
    """Poll `ready()` until it is true; RuntimeError with the log's end if `what` exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail(log_path)}")
        if ready():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s:\n{log_tail(log_path)}")


def stop_group(process: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL to its process group if it hangs; then whatever its children left."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The end of a child's log."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Stack:
    """`python manage.py serve` as a child process, stopped with SIGTERM like an operator would."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 180.0) -> None:
        """Start serve and wait until `ready()` (e.g. `readyz_ok(server)`) is true."""
        self.process = launch([sys.executable, str(MANAGE_PY), "serve"], self.env, self.log_path)
        wait_ready(self.process, ready, "serve", self.log_path, timeout)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 40.0) -> None:
        stop_group(self.process, timeout)
        self.process = None


def readyz_ok(server: Server) -> Callable[[], bool]:
    """A readiness check for `Stack.start`: /readyz answers 200."""

    def ready() -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = server.get("/readyz", auth=False)
            return status == 200
        return False

    return ready


def count_resources(db_url: str) -> dict[str, int]:
    """Live resources per type in the scratch database, counted with SQL (independent of search)."""
    with contextlib.closing(psycopg2.connect(db_url)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT resource_type, count(*) FROM fhir_resourcerecord WHERE NOT deleted GROUP BY resource_type"
        )
        return dict(cursor.fetchall())


def sample_ids(db_url: str, resource_type: str, limit: int) -> list[str]:
    """Up to `limit` random logical ids of `resource_type`."""
    with contextlib.closing(psycopg2.connect(db_url)) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT logical_id FROM fhir_resourcerecord WHERE resource_type = %s AND NOT deleted "
            "ORDER BY random() LIMIT %s",
            [resource_type, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def vacuum_analyze(db_url: str) -> None:
    """VACUUM ANALYZE after the bulk load, as autovacuum would do shortly after it anyway, then a
    CHECKPOINT, so that writing out the pages the load and the vacuum dirtied (a WAL-triggered
    checkpoint spreads it over tens of seconds) cannot fall into the measurements."""
    conn = psycopg2.connect(db_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("CHECKPOINT")
    finally:
        conn.close()


# --- Search paths and their sanity checks --------------------------------------------------------


def token_search_paths() -> list[str]:
    """One token search per LOINC code."""
    return [
        "/fhir/Observation?" + urllib.parse.urlencode({"code": f"{LOINC}|{code}", "_count": "20"})
        for code, *_ in LOINC_CODES
    ]


def date_windows() -> list[dt.date]:
    """Week starts inside the period, the reference week (2021-03-01) first."""
    first = PERIOD_START.date()
    starts = [first + dt.timedelta(days=d) for d in range(3, PERIOD_DAYS - DATE_WINDOW_DAYS - 3, 13)]
    return [REFERENCE_WINDOW, *(s for s in starts if s != REFERENCE_WINDOW)]


def date_search_path(start: dt.date) -> str:
    """`Observation?date=ge<start>&date=lt<start+7d>&_count=20`."""
    end = start + dt.timedelta(days=DATE_WINDOW_DAYS)
    return f"/fhir/Observation?date=ge{start.isoformat()}&date=lt{end.isoformat()}&_count=20"


def check_search(server: Server, path: str, accept: Callable[[dict], bool], what: str) -> list[str]:
    """GET `path` once and check each match with `accept`; return problems found (empty when fine)."""
    status, body = server.get(path)
    if status != 200:
        return [f"{what}: HTTP {status}: {body[:300].decode(errors='replace')}"]
    bundle = loads(body)
    matches = [
        e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"
    ]
    problems = []
    if bundle.get("resourceType") != "Bundle":
        problems.append(f"{what}: not a Bundle")
    if not matches:
        problems.append(f"{what}: no matches (the data has some)")
    if len(matches) > 20:
        problems.append(f"{what}: {len(matches)} matches on a page of _count=20")
    rejected = [m.get("id") for m in matches if not accept(m)]
    if rejected:
        problems.append(f"{what}: {len(rejected)} entries do not match the criteria, e.g. {rejected[:3]}")
    return problems


def sanity_checks(server: Server, observation_id: str) -> list[str]:
    """Read, token search and date search each answer correctly before they are timed."""
    problems = []
    status, body = server.get(f"/fhir/Observation/{observation_id}")
    if status != 200 or loads(body).get("id") != observation_id:
        problems.append(f"read Observation/{observation_id}: HTTP {status}")
    code = LOINC_CODES[0][0]
    problems += check_search(
        server,
        token_search_paths()[0],
        lambda r: any(c.get("code") == code for c in r.get("code", {}).get("coding", [])),
        f"token search code={code}",
    )
    low = REFERENCE_WINDOW.isoformat()
    high = (REFERENCE_WINDOW + dt.timedelta(days=DATE_WINDOW_DAYS)).isoformat()
    problems += check_search(
        server,
        date_search_path(REFERENCE_WINDOW),
        lambda r: low <= r.get("effectiveDateTime", "")[:10] < high,
        f"date search {low}..{high}",
    )
    status, _ = server.get("/bench/fixed", auth=False)
    if status != 200:
        problems.append(
            f"/bench/fixed: HTTP {status} (is `if settings.BTT_BENCH_VIEWS:` in btt_health/urls.py?)"
        )
    return problems


# --- Machine description and the report -----------------------------------------------------------


def load_average() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every number."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cpu_probe() -> str:
    """Seconds for a fixed pure-Python loop on one core, best of three: shared machines run at
    different speeds from hour to hour (one session's 2-core machine took 0.9 s to 1.8 s), which
    absolute targets need to be read against."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for number in range(5_000_000):
            total += number
        best = min(best, time.perf_counter() - start)
    return f"{best:.2f} s for 5,000,000 additions in a Python loop (lower is faster)"


def meminfo_kib(field: str) -> int:
    """A field of /proc/meminfo, in KiB (KeyError when it has none)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(f"/proc/meminfo has no {field}")


def machine_description(pg_version: str, load_before: str) -> dict[str, str]:
    """CPU model, cores, memory, PostgreSQL version, date, git commit and load, for the record."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
        memory = f"{meminfo_kib('MemTotal') / 1024 / 1024:.1f} GiB"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit = head + (" (with uncommitted changes)" if dirty else "")
    return {
        "CPU": f"{cpu}, {cores} cores available ({os.cpu_count()} online)",
        "Memory": memory,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "PostgreSQL": pg_version,
        "Date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "Commit": commit,
        "Load average (1/5/15 min) before the run": load_before,
        "CPU speed probe before the run": cpu_probe(),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    args: argparse.Namespace,
    ingest_result: IngestResult,
    loads_: dict[str, LoadResult],
    counts: dict[str, int],
    tool_description: str,
    problems: list[str],
) -> str:
    """The markdown table of results against the targets, with how they were measured."""
    bare, read = loads_["bare"], loads_["read"]
    token, date = loads_["token"], loads_["date"]
    share = read.rps / bare.rps if bare.rps else 0.0
    valid = not problems and all(r.errors == 0 for r in loads_.values()) and ingest_result.failures == 0

    def load_row(label: str, r: LoadResult, target: str, result: str) -> str:
        return (
            f"| {label} | {r.rps:,.0f} req/s; p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
            f"{f'; {r.errors} errors' if r.errors else ''} | {target} | {result} |"
        )

    lines = [
        "| measure | result | target | verdict |",
        "| --- | --- | --- | --- |",
        f"| transaction ingest ({ingest_result.bundles:,} Bundles of "
        f"1 Patient + {args.observations_per_patient} Observations, {args.ingest_clients} clients) "
        f"| {ingest_result.resources_per_s:,.0f} resources/s ({ingest_result.resources:,} in "
        f"{ingest_result.seconds:.1f} s; per Bundle p50 {ingest_result.bundle_p50_ms:.0f} ms, "
        f"p99 {ingest_result.bundle_p99_ms:.0f} ms"
        f"{f'; {ingest_result.failures} failed' if ingest_result.failures else ''}) "
        f"| ≥ {TARGET_INGEST_RESOURCES_PER_S:,.0f} resources/s "
        f"| {verdict(ingest_result.resources_per_s >= TARGET_INGEST_RESOURCES_PER_S and not ingest_result.failures)} |",
        load_row("bare Django view `/bench/fixed` (ceiling)", bare, "—", "—"),
        load_row(
            f"FHIR read `Patient/<id>`, `Observation/<id>` ({share:.0%} of the bare view)",
            read,
            f"≥ {TARGET_READ_SHARE_OF_BARE:.0%} of the bare view's req/s",
            verdict(share >= TARGET_READ_SHARE_OF_BARE and not read.errors),
        ),
        load_row(
            "token search `Observation?code=http://loinc.org\\|<code>&_count=20`",
            token,
            f"p50 < {TARGET_SEARCH_P50_MS:.0f} ms",
            verdict(token.p50_ms < TARGET_SEARCH_P50_MS and not token.errors),
        ),
        load_row(
            "date search `Observation?date=ge<day>&date=lt<day+7>&_count=20`",
            date,
            f"p50 < {TARGET_SEARCH_P50_MS:.0f} ms",
            verdict(date.p50_ms < TARGET_SEARCH_P50_MS and not date.errors),
        ),
    ]
    stored = ", ".join(f"{n:,} {t}" for t, n in sorted(counts.items()))
    notes = [
        "",
        f"- Stored: {stored} (counted in the database after the load).",
        f"- Load: {args.load_clients} concurrent clients, {args.duration:g} s per measurement after "
        f"{args.warmup:g} s of warm-up, measured with {tool_description}; the client runs on the same "
        "machine as the server.",
        f"- Server: `python manage.py serve` with gunicorn gthread, {args.http_workers} workers x "
        f"{args.http_threads} threads, no Celery worker; PostgreSQL on the same machine; "
        "VACUUM ANALYZE and a CHECKPOINT after the load.",
        f"- Reads rotate over {args.read_ids[0]:,} random Patient and {args.read_ids[1]:,} random Observation "
        f"ids; token searches over the "
        f"{len(LOINC_CODES)} LOINC codes; date searches over {len(date_windows())} one-week windows in "
        f"{PERIOD_START.year}-{PERIOD_START.year + 1} (starting with {REFERENCE_WINDOW.isoformat()}).",
    ]
    if not valid:
        notes.append(
            "- **The run had errors; its numbers are not valid:** " + "; ".join(problems or ["see above"])
        )
    return "\n".join(lines + notes)


def targets_passed(table: str) -> bool:
    """Whether every target row of a results table (a row ending in PASS or FAIL) passed."""
    return all(
        line.endswith("| PASS |") for line in table.splitlines() if line.endswith(("| PASS |", "| FAIL |"))
    )


def record(
    table: str,
    machine: dict[str, str],
    args: argparse.Namespace,
    title: str = "FHIR server: ingest, read and search",
) -> None:
    """Append the table under `title`, with the machine description, to docs/benchmarks.md."""
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS_FILE.exists():
        RESULTS_FILE.write_text(
            "# Benchmarks\n\n"
            "Results appended by the scripts under `benchmarks/`, newest last. Each entry names the "
            "machine it ran on and the peer it was compared with in the same run.\n"
        )
    header = f"\n## {title} ({machine['Date']})\n\n`{' '.join(args.command_line)}`\n\n"
    description = "\n".join(f"- {key}: {value}" for key, value in machine.items())
    with RESULTS_FILE.open("a") as out:
        out.write(header + description + "\n\n" + table + "\n")


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--patients", type=int, default=FULL_PATIENTS, help="Patients to load (one Bundle each)"
    )
    parser.add_argument(
        "--observations-per-patient",
        type=int,
        default=FULL_OBSERVATIONS_PER_PATIENT,
        help="Observations per Patient",
    )
    parser.add_argument("--ingest-clients", type=int, default=4, help="concurrent clients posting Bundles")
    parser.add_argument(
        "--load-clients", type=int, default=8, help="concurrent clients for reads and searches"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds each load measurement lasts")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load before each")
    parser.add_argument("--http-workers", type=int, default=2, help="gunicorn workers (BTT_HTTP_WORKERS)")
    parser.add_argument("--http-threads", type=int, default=4, help="threads per worker (BTT_HTTP_THREADS)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL of a role that may create databases (env BENCH_PG_URL)",
    )
    parser.add_argument("--db-name", default="btt_bench", help="scratch database, dropped at the end")
    parser.add_argument(
        "--load-tool",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or Python http.client threads",
    )
    parser.add_argument(
        "--sample-ids", type=int, default=1000, help="ids of each type that reads rotate over"
    )
    parser.add_argument("--seed", type=int, default=20210301, help="seed of the synthetic data")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not append to docs/benchmarks.md (runs smaller than full size never do)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and data dir (to inspect them)"
    )
    args = parser.parse_args(argv)
    args.command_line = ["python", "benchmarks/fhir_benchmark.py", *(sys.argv[1:] if argv is None else argv)]
    if args.patients < 1 or args.observations_per_patient < 1:
        parser.error("--patients and --observations-per-patient must be at least 1")
    if args.load_tool == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")
    if args.load_tool == "auto":
        args.load_tool = "wrk" if shutil.which("wrk") else "python"
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every target passed, 1 when one failed, 2 on errors."""
    args = parse_args(argv)
    full_size = (
        args.patients >= FULL_PATIENTS and args.observations_per_patient >= FULL_OBSERVATIONS_PER_PATIENT
    )
    will_record = full_size and not args.no_record
    # SIGTERM ends the run like Ctrl-C, through the clean-up below.
    signal.signal(signal.SIGTERM, _interrupt)

    load_before = load_average()
    pg_version = create_database(args.pg_url, args.db_name)
    db_url = database_url(args.pg_url, args.db_name)
    workdir = Path(tempfile.mkdtemp(prefix="btt-bench-"))
    port = free_port()
    env = stack_env(db_url, workdir / "data", port, args.http_workers, args.http_threads)
    stack = Stack(env, workdir / "serve.log")
    print(f"PostgreSQL {pg_version}: scratch database {args.db_name}; work dir {workdir}", flush=True)
    try:
        began = time.perf_counter()
        manage(env, "migrate", "--no-input", "-v", "0")
        print(f"migrated in {time.perf_counter() - began:.1f} s", flush=True)
        token = manage(env, "create_api_client", "bench", "--role", "admin").stdout.strip().splitlines()[-1]
        server = Server("127.0.0.1", port, token)
        stack.start(readyz_ok(server))
        print(
            f"serve is ready on {server.base} ({args.http_workers} workers x {args.http_threads} threads)",
            flush=True,
        )

        per_bundle = 1 + args.observations_per_patient
        print(f"generating {args.patients:,} Bundles of {per_bundle} resources ...", flush=True)
        rng = random.Random(args.seed)
        bundles = [make_bundle(rng, n, args.observations_per_patient) for n in range(args.patients)]
        print(
            f"loading {args.patients * per_bundle:,} resources "
            f"({sum(map(len, bundles)) / 1e6:.0f} MB of JSON) with {args.ingest_clients} clients ...",
            flush=True,
        )
        ingest_result = ingest(server, bundles, per_bundle, args.ingest_clients)
        del bundles
        print(
            f"  ingest: {ingest_result.resources_per_s:,.0f} resources/s, "
            f"{ingest_result.failures} failed Bundles",
            flush=True,
        )
        for error in ingest_result.first_errors:
            print(f"  ! {error}", flush=True)
        counts = count_resources(db_url)
        expected = {"Patient": args.patients, "Observation": args.patients * args.observations_per_patient}
        problems = [
            f"{t}: {counts.get(t, 0):,} stored, {n:,} sent"
            for t, n in expected.items()
            if counts.get(t, 0) != n
        ]
        if ingest_result.failures:
            problems.append(f"{ingest_result.failures} Bundles failed: {ingest_result.first_errors[:1]}")
        vacuum_analyze(db_url)

        observation_ids = sample_ids(db_url, "Observation", args.sample_ids)
        patient_ids = sample_ids(db_url, "Patient", args.sample_ids)
        args.read_ids = (len(patient_ids), len(observation_ids))
        if not observation_ids or not patient_ids:
            raise RuntimeError(f"nothing to read: the load stored {counts}")
        problems += sanity_checks(server, observation_ids[0])
        for problem in problems:
            print(f"  ! {problem}", flush=True)

        runner = LoadRunner(server, args.load_tool, args.load_clients, args.duration, args.warmup, workdir)
        print(f"measuring with {runner.description} ...", flush=True)
        read_paths = [f"/fhir/Observation/{i}" for i in observation_ids] + [
            f"/fhir/Patient/{i}" for i in patient_ids
        ]
        random.Random(args.seed).shuffle(read_paths)
        results = {
            "bare": runner.run("bare view", ["/bench/fixed"], auth=False),
            "read": runner.run("FHIR read", read_paths),
            "token": runner.run("token search", token_search_paths()),
            "date": runner.run("date search", [date_search_path(d) for d in date_windows()]),
        }

        table = report(args, ingest_result, results, counts, runner.description, problems)
        machine = machine_description(pg_version, load_before)
        print()
        print("\n".join(f"- {k}: {v}" for k, v in machine.items()))
        print()
        print(table)
        print()
        if will_record:
            record(table, machine, args)
            print(f"appended to {RESULTS_FILE.relative_to(REPO_ROOT)}")
        elif not full_size:
            print(
                f"not recorded: smaller than the full size ({FULL_PATIENTS:,} Patients x "
                f"{FULL_OBSERVATIONS_PER_PATIENT} Observations)"
            )
        else:
            print("not recorded (--no-record)")
        return 0 if targets_passed(table) and not problems else 1
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        tail = stack.log_tail()
        if tail:
            print(f"--- end of serve's log ---\n{tail}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stack.stop()
        if args.keep:
            print(f"kept database {args.db_name} and {workdir}", file=sys.stderr)
        else:
            with contextlib.suppress(psycopg2.Error):
                drop_database(args.pg_url, args.db_name)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
