"""Fixtures for the DICOM node's tests: the node as a real process, DCMTK and pynetdicom as peers.

The node under test is what operators run: `python manage.py dicom_scp` as its own process, on
pytest-django's test database and the tests' data dir (so `services.instance_file(...)` and the
instance storage in this process see the files it wrote). It only sees committed rows and its rows
are committed: tests that talk to it use `@pytest.mark.django_db(transaction=True)` (the tables are
flushed after each such test).

- `dicom_node` (session): one node with the defaults (AE title BTTHEALTH, duplicate policy keep,
  unknown AEs allowed) on a free port of 127.0.0.1. Use `dicom_node.host`, `.port`, `.aet`;
  `.log()` is its log. Shared by every test that does not need other settings.
- `start_dicom_node(**env)` (per test): a node with more environment variables, e.g.
  `start_dicom_node(BTT_DICOM_DUPLICATE_POLICY="replace")`, `BTT_DICOM_ALLOW_UNKNOWN_AE="false"`,
  `BTT_DICOM_TIMEOUT="2"`, TLS certificates; stopped when the test ends. Returns a `DicomNode`.
- `dcmtk(tool, *args)`: runs a DCMTK tool (echoscu, storescu, ...) with TCP_NODELAY, returns the
  CompletedProcess (text output).
- `pydicom_file(name)`: path of one of pydicom's bundled test files.

Study-complete tasks the nodes queue go to a queue no worker consumes (purged at the end), so the
session's Celery workers never run checks for these tests' studies.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.processes import MANAGE_PY, ManagedProcess, ProcessLauncher, child_env, free_port

NODE_AET = "BTTHEALTH"
DISCARDED_TASK_QUEUE = "dicom-node-tests-discarded"


@dataclass
class DicomNode:
    """A running `manage.py dicom_scp` process and where it listens."""

    process: ManagedProcess
    host: str
    port: int
    aet: str
    env: dict[str, str] = field(repr=False)
    tls_port: int | None = None

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> int:
        return self.process.stop()


def start_node_process(
    launcher: ProcessLauncher, base_env: Mapping[str, str], name: str = "dicom-node", **overrides: str | None
) -> DicomNode:
    """Start `manage.py dicom_scp` on free ports of 127.0.0.1 with `base_env` plus `overrides`;
    return once it logged that it listens (on every listener)."""
    port = free_port()
    env = child_env(
        base_env,
        {
            "BTT_DICOM_HOST": "127.0.0.1",
            "BTT_DICOM_PORT": str(port),
            "BTT_DICOM_AET": NODE_AET,
            "BTT_DICOM_TASK_QUEUE": DISCARDED_TASK_QUEUE,
            "BTT_DICOM_TLS_PORT": str(free_port()),
            **overrides,
        },
    )
    process = launcher.start(name, [sys.executable, str(MANAGE_PY), "dicom_scp"], env)
    process.wait_for_log(r"dicom_scp: listening: DICOM \S+ on ")
    tls_port = None
    if env.get("BTT_DICOM_TLS_CERT"):
        process.wait_for_log(r"dicom_scp: listening: DICOM TLS ")
        tls_port = int(env["BTT_DICOM_TLS_PORT"])
    return DicomNode(process, "127.0.0.1", port, env["BTT_DICOM_AET"], env, tls_port)


def _purge_discarded_tasks() -> None:
    from btt_health.celery import app

    with contextlib.suppress(Exception), app.connection_for_write() as connection:
        connection.default_channel.queue_purge(DISCARDED_TASK_QUEUE)


@pytest.fixture(scope="session")
def dicom_node(process_launcher: ProcessLauncher, test_database_env: dict[str, str]) -> Iterator[DicomNode]:
    """The DICOM node (`manage.py dicom_scp`) with default settings, for the whole session."""
    node = start_node_process(process_launcher, test_database_env, name="dicom-node")
    yield node
    node.stop()
    _purge_discarded_tasks()


@pytest.fixture
def start_dicom_node(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[Callable[..., DicomNode]]:
    """A factory: `start_dicom_node(**env)` starts a node with those environment variables (None
    removes one) and returns it ready; nodes still running when the test ends are stopped."""
    nodes: list[DicomNode] = []

    def start(**overrides: str | None) -> DicomNode:
        node = start_node_process(process_launcher, test_database_env, name="dicom-node-custom", **overrides)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()
    _purge_discarded_tasks()


def run_dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a DCMTK tool; TCP_NODELAY=1 so DCMTK does not wait on Nagle's algorithm."""
    return subprocess.run(
        [tool, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


@pytest.fixture
def dcmtk() -> Callable[..., subprocess.CompletedProcess]:
    """`dcmtk("storescu", "-aet", "MODALITY", host, str(port), path)`: run a DCMTK tool."""
    return run_dcmtk


def pydicom_file(name: str) -> Path:
    """The path of one of pydicom's bundled test files."""
    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not available")
    return Path(path)


@pytest.fixture(scope="module")
def catalogue(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[None]:
    """The Query/Retrieve test catalogue (tests/dicom/qr_support.py), stored once per module through
    the real ingest path and committed; the index is cleared before and after."""
    from tests.dicom.qr_support import store_catalogue
    from tests.dicom.qr_support_db import clear_index, quiet_study_tasks

    with django_db_blocker.unblock():
        with quiet_study_tasks():
            clear_index()
            store_catalogue(tmp_path_factory.mktemp("catalogue"))
        yield
        clear_index()


@pytest.fixture
def cat(api_client):
    """The QIDO-RS test catalogue (three studies, several series and instances), stored by STOW-RS
    (tests/dicom/test_dicomweb_support.py `store_catalogue`)."""
    from tests.dicom.test_dicomweb_support import store_catalogue

    return store_catalogue(api_client)
