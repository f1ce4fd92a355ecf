#!/usr/bin/env python3
"""DICOM ingest benchmark: C-STORE a CT series into our node, Orthanc and DCMTK storescp, same run.

One run does everything in a temporary directory (and, for our node, a scratch PostgreSQL database
that it creates and drops):

1. generates a synthetic CT series with `make_ct_series.py` (`--slices`, default 300 slices of
   512x512 16-bit, about 150 MB; seeded, cached by its parameters under the temporary directory);
2. for each number of associations (`--associations`, default 1 and 4) and each receiver
   (`--receivers`, default node, orthanc and storescp), starts the receiver fresh on free ports
   with empty storage, pushes the whole series to it with DCMTK `storescu` (one process per
   association, each over its share of the files, `TCP_NODELAY=1` in its environment), and
   measures the wall time from starting the first storescu to the last one exiting, while sampling
   the receiver's memory (VmRSS over its process tree, and VmHWM of each process);
3. checks that the receiver stored every instance: our node's `Instance` rows in PostgreSQL,
   Orthanc's `/statistics`, the files storescp wrote;
4. with `--memory-check`, also pushes a series twice as long to our node and compares its peak
   memory with the one for the normal series: it must not grow with the size of the study;
5. prints a markdown table (instances/s, MB/s, ratio to Orthanc, peak RSS) with the targets of
   issue 3 and PASS/FAIL, and appends it with a description of the machine to `docs/benchmarks.md`
   for full-size runs (all three receivers, 300 slices or more, never with `--no-record`).

The receivers:

- node: `python manage.py dicom_scp` (or `serve`, `--node-command`) with `BTT_DICOM_PROCESSES`
  one per core (`--node-processes`), on a scratch PostgreSQL database migrated once into a template
  and copied fresh for each measurement, `BTT_DATA_DIR` in the temporary directory: storage and
  index as in production;
- orthanc: `Orthanc <config.json>` with its defaults (SQLite index, fsync of every file) except
  its ports, storage directory, `DicomAlwaysAllowStore: true` and `DicomCheckCalledAet: false`;
- storescp: DCMTK `storescp` in its default single-process mode (`--storescp-fork` forks one
  process per association), bit-preserving (`+B`), no fsync: the ceiling.

Run from the repository root with the project's virtualenv:

    .venv/bin/python benchmarks/dicom_ingest_benchmark.py                         # full size
    .venv/bin/python benchmarks/dicom_ingest_benchmark.py --slices 20 --no-record   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from fhir_benchmark import (
    admin_connection,
    database_url,
    drop_database,
    free_port,
    launch,
    load_average,
    log_tail,
    machine_description,
    manage,
    meminfo_kib,
    record,
    stop_group,
    targets_passed,
    wait_ready,
)
from make_ct_series import Series, SeriesSpec, ensure_series
from psycopg2 import sql

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE_PY = REPO_ROOT / "manage.py"
RESULTS_FILE = REPO_ROOT / "docs" / "benchmarks.md"
NODE_COMMAND_FILE = REPO_ROOT / "integrations" / "dicom" / "management" / "commands" / "dicom_scp.py"
ADD_PEER_COMMAND_FILE = REPO_ROOT / "integrations" / "dicom" / "management" / "commands" / "add_dicom_peer.py"
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"

FULL_SLICES = 300
ALL_RECEIVERS = ("node", "orthanc", "storescp")
RECEIVER_LABELS = {
    "node": "our node (PostgreSQL)",
    "orthanc": "Orthanc",
    "storescp": "DCMTK storescp",
}
CALLING_AET = "BENCHSCU"
NODE_AET = "BTTBENCH"
ORTHANC_AET = "ORTHANC"
STORESCP_AET = "STORESCP"

# Peak memory of our node counts as bounded when the series twice as long raises it by at most
# this much (the larger of the two): holding the study, or a share of it, would show as hundreds of MB.
MEMORY_GROWTH_MIB = 32.0
MEMORY_GROWTH_SHARE = 0.15
# Orthanc defaults reported with the results (read from `Orthanc --config=` of the installed version).
ORTHANC_DEFAULTS_SHOWN = (
    "StorageCompression",
    "SyncStorageArea",
    "MaximumStorageCacheSize",
    "DicomThreadsCount",
    "OverwriteInstances",
    "MaximumPduLength",
)


# --- Memory and CPU of a process tree -----------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """`root` and its descendants."""
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (not of its children: those are sampled on their own)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    # utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeSampler:
    """Samples the memory and CPU time of a process tree in a thread until stopped.

    Peak RSS is the largest of: the sum of VmRSS over the tree at any sample, and any one process's
    VmHWM (exact for a single-process receiver, between samples included).
    """

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_tree_kib = 0
        self.hwm_kib: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.cpu_start: dict[int, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tree: list[int] = [root]
        self._tree_at = 0.0

    def __enter__(self) -> TreeSampler:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self, *, first: bool = False) -> None:
        now = time.monotonic()
        if first or now - self._tree_at > 0.25:  # new children (storescp --fork) show up here
            self._tree = process_tree(self.root)
            self._tree_at = now
        total = 0
        for pid in self._tree:
            rss, hwm = _status_kib(pid)
            total += rss
            if hwm:
                self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), hwm)
            cpu = _cpu_seconds(pid)
            if first:
                self.cpu_start[pid] = cpu
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu)
        self.peak_tree_kib = max(self.peak_tree_kib, total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def peak_mib(self) -> float:
        return max([self.peak_tree_kib, *self.hwm_kib.values()]) / 1024

    @property
    def cpu_seconds(self) -> float:
        """CPU time the tree used while sampled (processes that appeared later count from zero)."""
        return sum(self.cpu[pid] - self.cpu_start.get(pid, 0.0) for pid in self.cpu)


# --- Receivers ------------------------------------------------------------------------------------


def base_env(nodelay: bool = True) -> dict[str, str]:
    """This environment without the server's settings, with TCP_NODELAY=1 for DCMTK (see the README)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BTT_", "DJANGO_", "CELERY_")) and name not in ("DATABASE_URL", "TCP_NODELAY")
    }
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def echo(port: int, aet: str, timeout: float = 5.0) -> bool:
    """One C-ECHO with DCMTK echoscu: does the receiver answer DICOM yet?"""
    try:
        completed = subprocess.run(
            [
                "echoscu",
                "-q",
                "-to",
                "5",
                "-ta",
                "5",
                "-aet",
                CALLING_AET,
                "-aec",
                aet,
                "127.0.0.1",
                str(port),
            ],
            capture_output=True,
            timeout=timeout,
            env=base_env(),
        )
    except subprocess.TimeoutExpired:
        return False
    return completed.returncode == 0


class Receiver:
    """A C-STORE SCP started fresh for one measurement, stopped and cleaned up after it."""

    name = ""
    aet = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}.log"
        # TCP_NODELAY=1 in its environment (DCMTK-based receivers read it for accepted sockets).
        self.nodelay = True

    @property
    def label(self) -> str:
        return RECEIVER_LABELS[self.name]

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Make empty storage (and whatever else a fresh start needs)."""

    def count(self) -> int:
        """Instances the receiver has stored."""
        raise NotImplementedError

    def ready(self) -> bool:
        return echo(self.port, self.aet)

    def start(self, timeout: float = 180.0) -> None:
        self.port = free_port()
        self.prepare()
        argv, env = self.command()
        self.process = launch(argv, env, self.log_path)
        wait_ready(self.process, self.ready, f"{self.name} (C-ECHO)", self.log_path, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL to its process group (children of storescp --fork go too)."""
        stop_group(self.process, timeout)
        self.process = None

    def cleanup(self, reserve_bytes: int = 0) -> None:
        """Set aside what the measurement stored (`retire`)."""

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def notes(self) -> str:
        return ""


class StorescpReceiver(Receiver):
    name = "storescp"
    aet = STORESCP_AET

    def __init__(self, workdir: Path, fork: bool) -> None:
        super().__init__(workdir)
        self.fork = fork
        self.out = workdir / "storescp-out"

    def prepare(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv = ["storescp", "-aet", self.aet, "-od", str(self.out), "+B", "-dhl"]
        argv.append("--fork" if self.fork else "--single-process")
        return [*argv, str(self.port)], base_env(self.nodelay)

    def count(self) -> int:
        return sum(1 for p in self.out.iterdir() if p.is_file() and p.stat().st_size > 0)

    def cleanup(self, reserve_bytes: int = 0) -> None:
        retire(self.out, self.workdir, reserve_bytes)

    def notes(self) -> str:
        mode = (
            "`--fork`, one process per association"
            if self.fork
            else "single process (its default): concurrent associations are served one after another"
        )
        return f"DCMTK storescp: {mode}; `+B` (bit-preserving), no fsync, no index: the ceiling."


def orthanc_defaults() -> dict[str, str]:
    """Default values of some Orthanc options, from the installed version's `--config=` output."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "default.json"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([ORTHANC, f"--config={path}"], capture_output=True, timeout=30, check=False)
        try:
            text = path.read_text()
        except OSError:
            return {}
    values = {}
    for key in ORTHANC_DEFAULTS_SHOWN:
        match = re.search(rf'^\s*"{key}"\s*:\s*([^,\n]+)', text, re.MULTILINE)
        if match:
            values[key] = match.group(1).strip()
    return values


class OrthancReceiver(Receiver):
    name = "orthanc"
    aet = ORTHANC_AET

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.root = workdir / "orthanc"
        self.http_port = 0

    def prepare(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "storage").mkdir(parents=True)
        self.http_port = free_port()
        config = {
            "Name": "BTT benchmark Orthanc",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "Plugins": [],
        }
        (self.root / "config.json").write_text(json.dumps(config, indent=2))

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [ORTHANC, str(self.root / "config.json")], base_env(self.nodelay)

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def ready(self) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if self._get("/system")[0] == 200:
                return echo(self.port, self.aet)
        return False

    def count(self) -> int:
        status, body = self._get("/statistics")
        if status != 200:
            raise RuntimeError(f"Orthanc /statistics: HTTP {status}")
        return int(json.loads(body)["CountInstances"])

    def cleanup(self, reserve_bytes: int = 0) -> None:
        retire(self.root, self.workdir, reserve_bytes)

    def notes(self) -> str:
        defaults = orthanc_defaults()
        shown = ", ".join(f"`{k}` {v}" for k, v in defaults.items()) or "unknown"
        return (
            "Orthanc: its defaults, SQLite index in its storage directory; only ports, storage "
            f"directory, `DicomAlwaysAllowStore: true`, `DicomCheckCalledAet: false` set. Defaults: {shown}."
        )


class NodeReceiver(Receiver):
    name = "node"
    aet = NODE_AET

    def __init__(self, workdir: Path, db: ScratchDatabase, command_name: str, processes: int) -> None:
        super().__init__(workdir)
        self.db = db
        self.command_name = command_name
        self.processes = processes
        self.data_dir = workdir / "node-data"

    def prepare(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        self.db.fresh_copy()

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = node_env(self.db.url, self.data_dir, self.port, self.nodelay)
        env["BTT_DICOM_PROCESSES"] = str(self.processes)
        return [sys.executable, str(MANAGE_PY), self.command_name], env

    def count(self) -> int:
        with contextlib.closing(psycopg2.connect(self.db.url)) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM dicom_instance")
            return cursor.fetchone()[0]

    def cleanup(self, reserve_bytes: int = 0) -> None:
        retire(self.data_dir, self.workdir, reserve_bytes)

    def notes(self) -> str:
        worker = ", with its Celery worker" if self.command_name == "serve" else ""
        return (
            f"Our node: `python manage.py {self.command_name}`{worker} with `BTT_DICOM_PROCESSES={self.processes}` "
            "(SCP processes sharing the port), PostgreSQL on the same machine "
            "(a fresh copy of a migrated database for each measurement), `BTT_DATA_DIR` on the same disk."
        )


def node_env(db_url: str, data_dir: Path, dicom_port: int, nodelay: bool = True) -> dict[str, str]:
    """Our node's environment: the benchmark's, plus its database, data dir, ports and AE title."""
    env = base_env(nodelay)
    env.update(
        {
            "DATABASE_URL": db_url,
            "BTT_DATA_DIR": str(data_dir),
            "BTT_DICOM_PORT": str(dicom_port),
            "BTT_DICOM_AET": NODE_AET,
            "BTT_DICOM_HOST": "127.0.0.1",
            "BTT_LOG_LEVEL": "WARNING",
            # Listeners `serve` runs besides DICOM get free ports, away from a dev stack's.
            "BTT_HTTP_HOST": "127.0.0.1",
            "BTT_HTTP_PORT": str(free_port()),
            "BTT_MLLP_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class ScratchDatabase:
    """A template database migrated once, and a fresh copy of it for each measurement."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url = admin_url
        self.name = name
        self.template = f"{name}_template"
        self.url = database_url(admin_url, name)
        self.version = ""

    def create_template(self, workdir: Path) -> None:
        """Create and migrate the template; register the benchmark's calling AE if the node has peers."""
        with admin_connection(self.admin_url) as conn, conn.cursor() as cursor:
            for name in (self.name, self.template):
                cursor.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
            cursor.execute("SHOW server_version")
            self.version = cursor.fetchone()[0]
        env = node_env(database_url(self.admin_url, self.template), workdir / "template-data", free_port())
        began = time.perf_counter()
        manage(env, "migrate", "--no-input", "-v", "0")
        if ADD_PEER_COMMAND_FILE.exists():
            # In allow-list mode the node rejects unknown calling AEs; the senders call as BENCHSCU.
            manage(env, "add_dicom_peer", CALLING_AET, "127.0.0.1", "11112", "--allow", "store")
        print(f"migrated the template database in {time.perf_counter() - began:.1f} s", flush=True)
        shutil.rmtree(workdir / "template-data", ignore_errors=True)

    def fresh_copy(self) -> None:
        with admin_connection(self.admin_url) as conn, conn.cursor() as cursor:
            cursor.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )
            cursor.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(self.name), sql.Identifier(self.template)
                )
            )

    def drop(self) -> None:
        for name in (self.name, self.template):
            with contextlib.suppress(psycopg2.Error):
                drop_database(self.admin_url, name)


# --- One measurement --------------------------------------------------------------------------------


@dataclass
class Measurement:
    receiver: str
    associations: int
    sent: int
    stored: int
    seconds: float
    total_bytes: int
    peak_rss_mib: float
    cpu_seconds: float
    sender_failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.total_bytes / 1e6 / self.seconds if self.seconds else 0.0

    @property
    def complete(self) -> bool:
        return self.stored == self.sent and not self.sender_failures


def retire(path: Path, workdir: Path, reserve_bytes: int) -> None:
    """Set a measurement's storage aside (renamed into the work dir's `retired/`, removed with the
    work dir at the end) instead of deleting it now, unless the disk keeps less than
    `reserve_bytes` free.

    ext4 does not reuse an inode for a minute or more after it was freed (`recently_deleted`):
    every file created meanwhile in the same block group scans past the freed ones. Deleting the
    300 files of one measurement just before the next receiver writes its own made our node's
    inode allocation (the staging file of each instance) ~15% of its CPU in one measured run, and
    the more the later a receiver came in the run. Production stores do not delete a series
    just before receiving the next."""
    if not path.exists():
        return
    if shutil.disk_usage(workdir).free < reserve_bytes:
        shutil.rmtree(path, ignore_errors=True)
        return
    retired = workdir / "retired"
    retired.mkdir(exist_ok=True)
    path.rename(retired / f"{path.name}-{time.monotonic_ns()}")


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """`files` in `parts` contiguous runs of (nearly) equal length, as a modality's batches would be."""
    size, extra = divmod(len(files), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(list(files[start:end]))
        start = end
    return [c for c in chunks if c]


WARM_MEMORY_MIB = 1024


def warm_free_memory(mib: int = WARM_MEMORY_MIB) -> None:
    """Touch `mib` MiB in a short-lived child process and release it, right before a push.

    Virtual machines like this benchmark's hand free memory back to their host (virtio-balloon
    free page reporting, DAMON reclaim), and the first touch of such a page costs a fault on the
    host: writing 150 MB of files into the page cache took about three times as long on that
    memory as on memory freed a moment before. Without this, whichever receiver started right
    after a large process exited got backed memory for its page cache and the others did not
    (Orthanc, measured right after our node freed ~450 MiB, ran ~25% faster than after
    storescp). Releasing the same backed memory before every push gives each receiver what a
    bare-metal host always has."""
    available_mib = meminfo_kib("MemAvailable") // 1024
    mib = min(mib, available_mib // 4)  # never press a small machine for memory
    touch = f"import mmap\nm = mmap.mmap(-1, {mib} << 20)\nfor i in range(0, len(m), 4096): m[i] = 1"
    subprocess.run([sys.executable, "-c", touch], check=True)


def push(receiver: Receiver, series: Series, associations: int, logdir: Path) -> tuple[float, list[str]]:
    """storescu processes, one per association, each over its share of the files: (seconds, failures)."""
    env = base_env()
    processes = []
    logs = []
    began = time.perf_counter()
    for index, chunk in enumerate(split(series.files, associations)):
        argv = [
            "storescu",
            "-aet",
            CALLING_AET,
            "-aec",
            receiver.aet,
            "-R",  # propose only the presentation contexts the files need, as a modality does
            "-nh",  # go on after a failed C-STORE, so the count shows how many got through
            "127.0.0.1",
            str(receiver.port),
            *map(str, chunk),
        ]
        log_path = logdir / f"storescu-{receiver.name}-{associations}-{index}.log"
        logs.append(log_path)
        with log_path.open("wb") as log:
            processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    for process in processes:
        process.wait()
    seconds = time.perf_counter() - began
    failures = []
    for process, log_path in zip(processes, logs, strict=True):
        output = log_path.read_text(errors="replace")
        bad = [line for line in output.splitlines() if line.startswith(("E:", "F:")) or "Failed" in line]
        if process.returncode != 0 or bad:
            failures.append(f"storescu exit {process.returncode}: " + " / ".join(bad[:3]))
    return seconds, failures


def measure(receiver: Receiver, series: Series, associations: int, logdir: Path) -> Measurement:
    """Start the receiver fresh, push the series, count what it stored, stop it."""
    os.sync()  # the previous measurement's dirty pages are not written back during this one
    receiver.start()
    try:
        assert receiver.process is not None
        warm_free_memory()
        with TreeSampler(receiver.process.pid) as sampler:
            seconds, failures = push(receiver, series, associations, logdir)
        stored = receiver.count()
    finally:
        receiver.stop()
    receiver.cleanup(reserve_bytes=4 * series.total_bytes)
    result = Measurement(
        receiver=receiver.name,
        associations=associations,
        sent=series.count,
        stored=stored,
        seconds=seconds,
        total_bytes=series.total_bytes,
        peak_rss_mib=sampler.peak_mib,
        cpu_seconds=sampler.cpu_seconds,
        sender_failures=failures,
    )
    print(
        f"  {receiver.label}, {associations} association{'s' if associations > 1 else ''}: "
        f"{result.rate:,.1f} instances/s ({result.mb_per_s:,.1f} MB/s), {stored}/{series.count} stored "
        f"in {seconds:.2f} s, peak RSS {result.peak_rss_mib:,.0f} MiB, receiver CPU {result.cpu_seconds:.1f} s"
        + (f"; {len(failures)} senders reported failures: {failures[0]}" if failures else ""),
        flush=True,
    )
    return result


def median_of(runs: list[Measurement]) -> Measurement:
    """The run with the median rate (the lower middle one for an even count); peak memory is the max."""
    ordered = sorted(runs, key=lambda m: m.rate)
    chosen = ordered[(len(ordered) - 1) // 2]
    return dataclasses.replace(chosen, peak_rss_mib=max(m.peak_rss_mib for m in runs))


# --- Report ------------------------------------------------------------------------------------------


def tool_version(argv: list[str], pattern: str) -> str:
    """The version `argv` prints, the first match of `pattern`'s group 1 (or its first line)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        match = re.search(pattern, out)
        if match:
            return match.group(1)
        return out.strip().splitlines()[0] if out.strip() else "unknown"
    return "not installed"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    args: argparse.Namespace,
    series: Series,
    results: dict[tuple[str, int], Measurement],
    memory: tuple[Measurement, Measurement, Series] | None,
    notes: list[str],
    problems: list[str],
) -> str:
    """The markdown tables: summary per receiver, every measurement, the targets."""
    modes = args.associations

    def rate(name: str, n: int) -> float | None:
        m = results.get((name, n))
        return m.rate if m else None

    def fmt_rate(value: float | None) -> str:
        return "—" if value is None else f"{value:,.1f}"

    def ratio(name: str, n: int) -> str:
        mine, orthanc = rate(name, n), rate("orthanc", n)
        return "—" if mine is None or not orthanc else f"{mine / orthanc:.2f}"

    def mode_label(n: int) -> str:
        return f"{n} association{'s' if n > 1 else ''}"

    head = ["receiver", *(f"{mode_label(n)} inst/s" for n in modes)]
    head += [f"ratio to Orthanc ({' / '.join(str(n) for n in modes)})", "peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in args.receivers:
        peaks = [results[(name, n)].peak_rss_mib for n in modes if (name, n) in results]
        row = [RECEIVER_LABELS[name], *(fmt_rate(rate(name, n)) for n in modes)]
        row.append(" / ".join(ratio(name, n) for n in modes))
        row.append(" / ".join(f"{p:,.0f} MiB" for p in peaks) if peaks else "—")
        lines.append("| " + " | ".join(row) + " |")

    lines += [
        "",
        "| receiver | associations | stored / sent | seconds | inst/s | MB/s | peak RSS | receiver CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in modes:
        for name in args.receivers:
            m = results.get((name, n))
            if m is None:
                continue
            lines.append(
                f"| {RECEIVER_LABELS[name]} | {n} | {m.stored} / {m.sent} | {m.seconds:.2f} | {m.rate:,.1f} "
                f"| {m.mb_per_s:,.1f} | {m.peak_rss_mib:,.0f} MiB | {m.cpu_seconds:.1f} s |"
            )
    if memory:
        small, large, large_series = memory
        lines.append(
            f"| {RECEIVER_LABELS['node']}, {large_series.count}-slice series (memory check) "
            f"| {large.associations} | {large.stored} / {large.sent} | {large.seconds:.2f} | {large.rate:,.1f} "
            f"| {large.mb_per_s:,.1f} | {large.peak_rss_mib:,.0f} MiB | {large.cpu_seconds:.1f} s |"
        )

    lines += ["", "| target (issue 3) | result | verdict |", "| --- | --- | --- |"]
    if "node" in args.receivers and "orthanc" in args.receivers:
        for n in modes:
            node, orthanc = results.get(("node", n)), results.get(("orthanc", n))
            if node is None or orthanc is None:
                continue
            ok = node.complete and orthanc.complete and node.rate >= orthanc.rate
            lines.append(
                f"| our node ≥ Orthanc, {mode_label(n)} | {node.rate:,.1f} vs {orthanc.rate:,.1f} inst/s "
                f"({node.rate / orthanc.rate if orthanc.rate else 0:.2f}x)"
                f"{'' if node.complete else '; not every instance stored'} | {verdict(ok)} |"
            )
    else:
        lines.append("| our node ≥ Orthanc | not measured (needs `--receivers` with node and orthanc) | — |")
    if memory:
        small, large, large_series = memory
        allowed = max(MEMORY_GROWTH_MIB, MEMORY_GROWTH_SHARE * small.peak_rss_mib)
        growth = large.peak_rss_mib - small.peak_rss_mib
        ok = growth <= allowed and large.complete
        lines.append(
            f"| our node's peak memory bounded (not growing with the study) | {small.peak_rss_mib:,.0f} MiB "
            f"for {series.count} slices, {large.peak_rss_mib:,.0f} MiB for {large_series.count} "
            f"({large.associations} associations; growth {growth:+,.0f} MiB, allowed "
            f"{allowed:,.0f} MiB) | {verdict(ok)} |"
        )
    else:
        lines.append("| our node's peak memory bounded | not measured (pass `--memory-check`) | — |")

    lines.append("")
    lines.append(
        f"- Series: {series.count} slices of CT Image Storage, {args.rows}x{args.columns} 16-bit, explicit "
        f"VR little endian, {series.total_bytes / 1e6:,.1f} MB in all (synthetic phantom, seed {args.seed}); "
        f"{args.repeat} run{'s' if args.repeat > 1 else ''} per measurement"
        f"{', the median shown (peak RSS: the largest)' if args.repeat > 1 else ''}."
    )
    lines.append(
        "- Senders: DCMTK storescu, one process per association over a contiguous share of the files, "
        "`-R` (only the presentation contexts needed), `TCP_NODELAY=1` in its environment; time from "
        "starting the first storescu to the last one exiting, after the receiver answered C-ECHO. "
        "Senders and receivers share the machine."
    )
    lines.append(
        "- Order: the receivers take turns, in a rotated order each round; before each push a child "
        f"process touches and releases {WARM_MEMORY_MIB} MiB, so that every receiver finds free memory "
        "the host backs (on VMs that return freed memory to their host the first touch of a page "
        "faults on the host: page-cache writes ran ~3x slower on such memory, and whoever followed "
        "a large process's exit was favoured)."
    )
    lines.append(
        "- Receivers: `TCP_NODELAY=1` in their environment too (DCMTK's storescp and Orthanc read it for "
        "the sockets they accept and otherwise stall about 40 ms per instance on Nagle's algorithm; "
        "pynetdicom ignores it)."
        if args.receiver_nodelay
        else "- Receivers: **without** `TCP_NODELAY` in their environment (`--no-receiver-nodelay`)."
    )
    lines += [f"- {note}" for note in notes]
    lines.append(
        "- Peak RSS: the largest of the receiver's process-tree VmRSS sampled every 50 ms and any of its "
        "processes' VmHWM; receiver CPU: user + system time of its processes during the push."
    )
    if problems:
        lines.append("- **The run had errors; its numbers are not valid:** " + "; ".join(problems))
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=FULL_SLICES, help="slices in the CT series")
    parser.add_argument("--rows", type=int, default=512, help="rows of each slice")
    parser.add_argument("--columns", type=int, default=512, help="columns of each slice")
    parser.add_argument("--seed", type=int, default=SeriesSpec.seed, help="seed of the synthetic series")
    parser.add_argument(
        "--receivers",
        default=",".join(ALL_RECEIVERS),
        help=f"comma-separated receivers to measure, of {', '.join(ALL_RECEIVERS)}",
    )
    parser.add_argument(
        "--associations", default="1,4", help="comma-separated numbers of concurrent associations"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (the median is shown)")
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help="also push a series of twice --slices to our node and compare its peak memory",
    )
    parser.add_argument(
        "--node-command",
        choices=("dicom_scp", "serve"),
        default="dicom_scp",
        help="how our node runs: the DICOM listener alone, or the whole stack (with its worker)",
    )
    parser.add_argument(
        "--node-processes",
        type=int,
        default=os.cpu_count() or 1,
        help="BTT_DICOM_PROCESSES of our node: SCP processes sharing its port (one per core, as the "
        "README advises for PostgreSQL)",
    )
    parser.add_argument(
        "--storescp-fork",
        action="store_true",
        help="run storescp with --fork (one process per association) instead of its single-process default",
    )
    parser.add_argument(
        "--receiver-nodelay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TCP_NODELAY=1 in the receivers' environment too: DCMTK's storescp and Orthanc otherwise "
        "stall about 40 ms per instance on Nagle's algorithm",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL of a role that may create databases (env BENCH_PG_URL)",
    )
    parser.add_argument("--db-name", default="btt_dicom_bench", help="scratch database, dropped at the end")
    parser.add_argument(
        "--series-cache",
        type=Path,
        default=None,
        help="where generated series are cached (default: btt-dicom-bench-series in the temp dir)",
    )
    parser.add_argument("--regenerate", action="store_true", help="generate the series even when cached")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not append to docs/benchmarks.md (runs smaller than full size never do)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and the database")
    args = parser.parse_args(argv)
    args.command_line = [
        "python",
        "benchmarks/dicom_ingest_benchmark.py",
        *(sys.argv[1:] if argv is None else argv),
    ]
    args.receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    unknown = [r for r in args.receivers if r not in ALL_RECEIVERS]
    if unknown or not args.receivers:
        parser.error(f"--receivers: unknown {unknown}; choose from {', '.join(ALL_RECEIVERS)}")
    args.receivers = [r for r in ALL_RECEIVERS if r in args.receivers]
    try:
        args.associations = sorted({int(n) for n in args.associations.split(",") if n.strip()})
    except ValueError:
        parser.error("--associations: comma-separated integers")
    if not args.associations or min(args.associations) < 1:
        parser.error("--associations: at least one number, each at least 1")
    if args.slices < max(args.associations):
        parser.error("--slices must be at least the largest number of associations")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.memory_check and "node" not in args.receivers:
        parser.error("--memory-check measures our node: include node in --receivers")
    missing = [tool for tool in ("storescu", "echoscu") if not shutil.which(tool)]
    if "storescp" in args.receivers and not shutil.which("storescp"):
        missing.append("storescp")
    if missing:
        parser.error(f"DCMTK is not installed ({', '.join(missing)} missing): apt-get install -y dcmtk")
    if "orthanc" in args.receivers and not os.access(ORTHANC, os.X_OK):
        parser.error("Orthanc is not installed: apt-get install -y orthanc")
    if "node" in args.receivers and not NODE_COMMAND_FILE.exists():
        parser.error(
            f"our node's dicom_scp command is missing ({NODE_COMMAND_FILE.relative_to(REPO_ROOT)}); "
            "measure the others with --receivers orthanc,storescp"
        )
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def make_receiver(name: str, args: argparse.Namespace, workdir: Path, db: ScratchDatabase | None) -> Receiver:
    receiver: Receiver
    if name == "node":
        assert db is not None
        receiver = NodeReceiver(workdir, db, args.node_command, args.node_processes)
    elif name == "orthanc":
        receiver = OrthancReceiver(workdir)
    else:
        receiver = StorescpReceiver(workdir, args.storescp_fork)
    receiver.nodelay = args.receiver_nodelay
    return receiver


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every target passed, 1 when one failed, 2 on errors."""
    args = parse_args(argv)
    full_size = (
        args.slices >= FULL_SLICES
        and args.rows >= 512
        and args.columns >= 512
        and set(args.receivers) == set(ALL_RECEIVERS)
        and {1, 4} <= set(args.associations)
    )
    will_record = full_size and not args.no_record
    signal.signal(signal.SIGTERM, _interrupt)

    load_before = load_average()
    workdir = Path(tempfile.mkdtemp(prefix="btt-dicom-bench-"))
    db = ScratchDatabase(args.pg_url, args.db_name) if "node" in args.receivers else None
    receivers: list[Receiver] = []
    print(f"work dir {workdir}", flush=True)
    try:
        spec = SeriesSpec(slices=args.slices, rows=args.rows, columns=args.columns, seed=args.seed)
        began = time.perf_counter()
        series = ensure_series(spec, args.series_cache, regenerate=args.regenerate)
        print(
            f"series: {series.count} slices, {series.total_bytes / 1e6:,.1f} MB in {series.directory} "
            f"({time.perf_counter() - began:.1f} s)",
            flush=True,
        )
        large_series = None
        if args.memory_check:
            large_spec = SeriesSpec(
                slices=2 * args.slices, rows=args.rows, columns=args.columns, seed=args.seed
            )
            large_series = ensure_series(large_spec, args.series_cache, regenerate=args.regenerate)
            print(f"memory-check series: {large_series.count} slices in {large_series.directory}", flush=True)
        for path in series.files:  # into the page cache, so no sender waits on the disk
            path.read_bytes()

        if db is not None:
            db.create_template(workdir)
            print(f"PostgreSQL {db.version}: scratch databases {db.template}, {db.name}", flush=True)
        receivers = [make_receiver(name, args, workdir, db) for name in args.receivers]

        results: dict[tuple[str, int], Measurement] = {}
        runs: dict[tuple[str, int], list[Measurement]] = {}
        for round_ in range(args.repeat):
            # The receivers take turns, so drift in load hits them alike, each round in an order
            # rotated by one (each is measured first, second and third of a round in turn).
            order = receivers[round_ % len(receivers) :] + receivers[: round_ % len(receivers)]
            for n in args.associations:
                for receiver in order:
                    runs.setdefault((receiver.name, n), []).append(measure(receiver, series, n, workdir))
        results = {key: median_of(value) for key, value in runs.items()}

        memory = None
        if large_series is not None:
            n = max(args.associations)
            node = next(r for r in receivers if r.name == "node")
            for path in large_series.files:
                path.read_bytes()
            print(f"memory check: {large_series.count} slices to our node over {n} associations", flush=True)
            large = measure(node, large_series, n, workdir)
            memory = (results[("node", n)], large, large_series)

        problems = [
            f"{RECEIVER_LABELS[m.receiver]}, {m.associations} associations: {m.stored} of {m.sent} stored"
            + (f" ({m.sender_failures[0]})" if m.sender_failures else "")
            for ms in runs.values()
            for m in ms
            if not m.complete
        ]
        if memory and not memory[1].complete:
            problems.append(f"memory check: {memory[1].stored} of {memory[1].sent} stored")
        for problem in problems:
            print(f"  ! {problem}", flush=True)

        notes = [r.notes() for r in receivers]
        table = report(args, series, results, memory, notes, problems)
        machine = machine_description(db.version if db else "not used (our node not measured)", load_before)
        machine["DCMTK"] = tool_version(["storescu", "--version"], r"storescu (v[\w.]+ [\d-]+)")
        machine["Orthanc"] = tool_version([ORTHANC, "--version"], r"Orthanc ([\w.+~-]+)")
        print()
        print("\n".join(f"- {k}: {v}" for k, v in machine.items()))
        print()
        print(table)
        print()
        if will_record:
            record(table, machine, args, "DICOM node: C-STORE ingest against Orthanc and storescp")
            print(f"appended to {RESULTS_FILE.relative_to(REPO_ROOT)}")
        elif not full_size:
            print(
                f"not recorded: not a full run (all of {', '.join(ALL_RECEIVERS)}, at least {FULL_SLICES} "
                "slices of 512x512, 1 and 4 associations)"
            )
        else:
            print("not recorded (--no-record)")
        return 0 if targets_passed(table) and not problems else 1
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        for receiver in receivers:
            tail = receiver.log_tail(20)
            if tail:
                print(f"--- end of {receiver.name}'s log ---\n{tail}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for receiver in receivers:
            with contextlib.suppress(Exception):
                receiver.stop()
        if args.keep:
            print(f"kept {workdir}" + (f" and database {db.name}" if db else ""), file=sys.stderr)
        else:
            if db is not None:
                db.drop()
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
