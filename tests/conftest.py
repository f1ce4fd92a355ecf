"""Shared fixtures: API tokens and clients, and real processes (Celery workers, the whole stack).

The suite runs against real parts: `scripts/test.sh` exports a PostgreSQL `DATABASE_URL` and a
Redis `CELERY_BROKER_URL` before pytest. pytest-django creates the test database `test_<name>`;
every subprocess started here (a worker, `manage.py serve`) is pointed at that test database and at
the same broker, so what a test commits is what the subprocess sees.

How the database and the subprocesses get along:

- The subprocess fixtures are session-scoped and depend on `django_db_setup`, so the test
  database exists (migrated) before they start and they stop before pytest-django drops it.
- A subprocess only sees committed rows. Tests that share data with one (through the ORM in the
  test process) use `transactional_db` / `@pytest.mark.django_db(transaction=True)`; such tests
  flush every table when they end, so no data leaks into the next test. Tests under `tests/e2e/`
  get that marker automatically (see tests/e2e/conftest.py).
- Tests using the plain `db` fixture run inside a transaction that is rolled back: a subprocess
  never sees their rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

from tests.processes import (
    WORKER_READY,
    ManagedProcess,
    ProcessLauncher,
    Stack,
    child_env,
    free_port,
    stack_broker_url,
    start_stack,
    worker_argv,
)

# --- Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def process_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessLauncher]:
    """Starts subprocesses with their output logged under pytest's temp folder.

    `process_launcher.start(name, argv, env)` returns a `ManagedProcess` (`wait_for_log`,
    `wait_for_http`, `stop`, `log`); `process_launcher.manage(*args, env=...)` runs a management
    command to completion. Whatever is still running at the end of the session is stopped.
    """
    launcher = ProcessLauncher(tmp_path_factory.mktemp("processes"))
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="session")
def test_database_env(django_db_setup: None) -> dict[str, str]:
    """Environment for a subprocess that must use the test database, broker and data dir.

    A copy of this process's environment with `DATABASE_URL` pointing at pytest-django's test
    database (`test_<name>`), and `BTT_DATA_DIR` set to the data dir this process uses, so that
    the embedded broker (when `CELERY_BROKER_URL` is unset) is shared too. Needs a database other
    processes can open: PostgreSQL (what scripts/test.sh uses) or an SQLite file.
    """
    db = connections["default"].settings_dict
    if connections["default"].vendor == "postgresql":
        credentials = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = db.get("HOST") or ""
        port = f":{db['PORT']}" if db.get("PORT") else ""
        url = f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"
    elif connections["default"].vendor == "sqlite" and not connections["default"].is_in_memory_db():
        url = f"sqlite:///{Path(db['NAME']).resolve()}"
    else:
        pytest.fail(
            "tests that start subprocesses need a database other processes can open: set DATABASE_URL to "
            "PostgreSQL (scripts/test.sh exports postgres://postgres@127.0.0.1:5432/btt_health)"
        )
    return child_env(
        os.environ,
        {
            "DATABASE_URL": url,
            "BTT_TEST_DATABASE_NAME": None,
            "BTT_DATA_DIR": str(settings.BTT_DATA_DIR),
            "DJANGO_SETTINGS_MODULE": "btt_health.settings",
            "PYTHONUNBUFFERED": "1",
        },
    )


@pytest.fixture(scope="session")
def celery_worker_process(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[ManagedProcess]:
    """A real `celery -A btt_health worker` process on the test database and broker.

    It consumes the configured queues (default, inference, ledger) with concurrency 1 and is
    ready (connected, consuming) when the fixture returns. Queue work as the code does, e.g.
    `transaction.on_commit(lambda: task.delay(...))` inside a test marked
    `@pytest.mark.django_db(transaction=True)`, so the worker sees the rows. The value is a
    `ManagedProcess`: `celery_worker_process.log()` holds the worker's log (task ids, results).
    """
    worker = process_launcher.start(
        "celery-worker", worker_argv(list(settings.CELERY_WORKER_QUEUES)), test_database_env
    )
    worker.wait_for_log(WORKER_READY)
    yield worker
    worker.stop()


def _start_serve(
    launcher: ProcessLauncher, base_env: Mapping[str, str], overrides: Mapping[str, str | None], name: str
) -> Stack:
    env = child_env(
        base_env,
        {
            "CELERY_BROKER_URL": stack_broker_url(base_env.get("CELERY_BROKER_URL")),
            "BTT_HTTP_HOST": "127.0.0.1",
            "BTT_HTTP_PORT": str(free_port()),
            # serve's DICOM node (its `dicom` child) gets a free port too, so stacks never collide.
            "BTT_DICOM_HOST": "127.0.0.1",
            "BTT_DICOM_PORT": str(free_port()),
            # and so does its MLLP listener (its `mllp` child).
            "BTT_MLLP_HOST": "127.0.0.1",
            "BTT_MLLP_PORT": str(free_port()),
            "BTT_MLLP_TLS_PORT": str(free_port()),
            "BTT_HTTP_WORKERS": "1",
            "BTT_WORKER_CONCURRENCY": "1",
            **overrides,
        },
    )
    return start_stack(launcher, name, env)


@pytest.fixture(scope="session")
def live_stack(process_launcher: ProcessLauncher, test_database_env: dict[str, str]) -> Iterator[str]:
    """The whole stack (`python manage.py serve`: HTTP and a worker) on a free port; its base URL.

    Runs on the test database and broker; ready (/readyz answered 200, worker consuming) when
    the fixture returns. Give it data over HTTP, or through the ORM in a test that commits
    (`transactional_db`): rows of a `db` test stay invisible to it.
    """
    stack = _start_serve(process_launcher, test_database_env, {}, "live-stack")
    yield stack.base_url
    stack.process.stop()


@pytest.fixture
def start_serve(
    process_launcher: ProcessLauncher, test_database_env: dict[str, str]
) -> Iterator[Callable[..., Stack]]:
    """A factory: `start_serve(**env)` starts `manage.py serve` on the test database, ready, and returns a `Stack`.

    Keyword arguments are environment variables for it (None removes one). The stack listens on
    a free port of 127.0.0.1 with one HTTP worker and worker concurrency 1; stacks still running
    when the test ends are stopped.
    """
    stacks: list[Stack] = []

    def start(**overrides: str | None) -> Stack:
        stack = _start_serve(process_launcher, test_database_env, overrides, "serve")
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.process.stop()


@pytest.fixture
def api_token(db: None) -> str:
    """The bearer token of a fresh API client `pytest-admin` with role admin (made with
    `btt_health.api_auth.services.create_api_client`). Committed only if the test is transactional."""
    from btt_health.api_auth.services import create_api_client

    _, token = create_api_client("pytest-admin", "admin")
    return token


class BearerClient(Client):
    """Django's test `Client` that sends `Authorization: Bearer <token>` with every request.

    Pass `headers={"Authorization": ...}` to a request to send another value, or
    `HTTP_AUTHORIZATION=""` to send none.
    """

    def __init__(self, token: str, **kwargs) -> None:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        super().__init__(headers=headers, **kwargs)
        self.token = token


@pytest.fixture
def api_client(api_token: str) -> BearerClient:
    """An in-process Django test client authenticated as the admin API client of `api_token`."""
    return BearerClient(api_token)


@pytest.hookimpl(trylast=True)  # after tests/e2e/conftest.py has marked its tests transactional
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-django creates the test database only when some test asks for database access: a
    # test whose subprocesses use it (through `test_database_env`) asks for it.
    for item in items:
        if "test_database_env" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "django_db"
        ):
            item.add_marker(pytest.mark.django_db)


def pytest_configure(config: pytest.Config) -> None:
    # collectstatic (which `serve` runs) makes this folder; whitenoise warns on every request
    # made in this process when it is missing.
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)
