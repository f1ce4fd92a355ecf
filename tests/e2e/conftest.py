"""End-to-end fixtures: a running stack driven over HTTP only.

Every test in this folder is marked `e2e` and runs twice in `scripts/test.sh`:

1. in the main pytest run, against `live_stack` (`manage.py serve` on pytest-django's PostgreSQL
   test database and the test broker); each test is transactional there, so what it created is
   flushed when it ends;
2. again with `BTT_E2E_README_STACK=1`, against the stack started exactly as the README's run
   command starts it: `python manage.py serve` with none of the server's variables set (no
   DATABASE_URL, no CELERY_BROKER_URL: the embedded SQLite database and broker) except a fresh
   temporary `BTT_DATA_DIR` and a free `BTT_HTTP_PORT`; the token then comes from
   `python manage.py create_api_client e2e --role admin`, as an operator would make it.

So tests here talk to the server only through `e2e_base_url` and `e2e_token` (plus any HTTP
client, e.g. `requests` or fhirpy), never through the ORM.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ProcessLauncher, Stack, free_port, start_stack

E2E_DIR = Path(__file__).resolve().parent
README_STACK = os.environ.get("BTT_E2E_README_STACK", "").lower() in ("1", "true", "yes", "on")
# Variables the server reads (see the README's configuration table) all start with these.
_SERVER_ENV_PREFIXES = ("BTT_", "DJANGO_", "CELERY_")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(E2E_DIR):
            continue
        item.add_marker(pytest.mark.e2e)
        if not README_STACK:
            item.add_marker(pytest.mark.django_db(transaction=True), append=False)


def readme_env(data_dir: Path, port: int) -> dict[str, str]:
    """The environment of the README's run command: nothing of the server's set but the data dir and port."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_SERVER_ENV_PREFIXES) and name != "DATABASE_URL"
    }
    env.update({"BTT_DATA_DIR": str(data_dir), "BTT_HTTP_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    return env


@pytest.fixture(scope="session")
def readme_stack(
    process_launcher: ProcessLauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """`python manage.py serve` started as the README does, on a fresh data dir (see the module doc),
    and the admin token `create_api_client e2e --role admin` printed for it."""
    env = readme_env(tmp_path_factory.mktemp("readme-data"), free_port())
    stack = start_stack(process_launcher, "readme-stack", env)
    result = process_launcher.manage("create_api_client", "e2e", "--role", "admin", env=env)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        pytest.fail(f"create_api_client failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    token = lines[-1].strip()
    yield stack, token
    stack.process.stop()


@pytest.fixture
def e2e_base_url(request: pytest.FixtureRequest) -> str:
    """Base URL (no trailing slash) of the stack under test: the README stack or `live_stack`."""
    if README_STACK:
        stack, _ = request.getfixturevalue("readme_stack")
        return stack.base_url
    return request.getfixturevalue("live_stack")


@pytest.fixture
def e2e_token(request: pytest.FixtureRequest, e2e_base_url: str) -> str:
    """A bearer token with role admin that the stack under test accepts."""
    if README_STACK:
        _, token = request.getfixturevalue("readme_stack")
        return token
    # The test is transactional here (see pytest_collection_modifyitems): the row is committed,
    # so the stack sees it, and flushed when the test ends.
    from btt_health.api_auth.services import create_api_client

    _, token = create_api_client("e2e", "admin")
    return token
