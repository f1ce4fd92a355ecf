"""End-to-end fixtures: a running stack driven over HTTP only.

Every test in this folder is marked `e2e` and runs twice in `scripts/test.sh`:

1. in the main pytest run, against `live_stack` (`manage.py serve` on pytest-django's PostgreSQL
   test database and the test broker); each test is transactional there, so what it created is
   flushed when it ends;
2. again with `BTT_E2E_README_STACK=1`, against the stack started exactly as the README's run
   command starts it: `python manage.py serve` with none of the server's variables set (no
   DATABASE_URL, no CELERY_BROKER_URL: the embedded SQLite database and broker) except a fresh
   temporary `BTT_DATA_DIR` and a free `BTT_HTTP_PORT` (and `BTT_DICOM_PORT`); the token then comes from
   `python manage.py create_api_client e2e --role admin`, as an operator would make it.

So tests here talk to the server only through `e2e_base_url` and `e2e_token` (plus any HTTP
client, e.g. `requests` or fhirpy), never through the ORM. For fhirpy there are shared fixtures built
on those two: `fhir_base_url`, `fhir_client` (with the `responses` it received) and
`make_fhir_client` for tests that need more clients than one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from fhirpy import SyncFHIRClient

from tests.processes import ProcessLauncher, Stack, free_port, start_stack

E2E_DIR = Path(__file__).resolve().parent
README_STACK = os.environ.get("BTT_E2E_README_STACK", "").lower() in ("1", "true", "yes", "on")
# Variables the server reads (see the README's configuration table) all start with these.
_SERVER_ENV_PREFIXES = ("BTT_", "DJANGO_", "CELERY_")
# Seconds a fhirpy client waits for each request, unless a module overrides `fhir_timeout_s`.
FHIR_TIMEOUT_S = 30


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
    # The DICOM node `serve` runs listens on a free port too (11112 may be taken on a shared machine).
    env["BTT_DICOM_PORT"] = str(free_port())
    env["BTT_MLLP_PORT"] = str(free_port())  # and so does its MLLP listener (2575)
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


@pytest.fixture
def fhir_base_url(e2e_base_url: str) -> str:
    """The FHIR base URL of the stack under test (no trailing slash): `e2e_base_url` + "/fhir",
    unless `e2e_base_url` names the FHIR base already."""
    base = e2e_base_url.rstrip("/")
    return base if base.endswith("/fhir") else f"{base}/fhir"


@pytest.fixture
def fhir_timeout_s() -> float:
    """Seconds the fhirpy clients of `fhir_client` and `make_fhir_client` wait for each request;
    a test module that needs longer overrides this fixture."""
    return FHIR_TIMEOUT_S


@pytest.fixture
def make_fhir_client(
    fhir_base_url: str, e2e_token: str, fhir_timeout_s: float
) -> Callable[..., SyncFHIRClient]:
    """Makes further fhirpy clients of the stack under test, authenticated with `e2e_token`, for
    tests that need more than `fhir_client` (e.g. two clients racing each other).

    `make_fhir_client(if_match='W/"1"', sink=recorded)`: with `if_match` every request carries
    that If-Match header; with `sink` every response the client receives is appended to that list.
    The factory makes no request itself, so it may be called from any thread.
    """

    def make(*, if_match: str | None = None, sink: list[requests.Response] | None = None) -> SyncFHIRClient:
        config: dict = {"timeout": fhir_timeout_s}
        if sink is not None:
            record: Callable[..., None] = lambda response, *args, **kwargs: sink.append(response)  # noqa: E731
            config["hooks"] = {"response": [record]}
        return SyncFHIRClient(
            fhir_base_url,
            authorization=f"Bearer {e2e_token}",
            extra_headers={"If-Match": if_match} if if_match else None,
            requests_config=config,
        )

    return make


@pytest.fixture
def responses() -> list[requests.Response]:
    """Every HTTP response the `fhir_client` fixture received in this test, oldest first
    (`responses[-1]` is the last one), for the status codes and headers fhirpy does not expose."""
    return []


@pytest.fixture
def fhir_client(
    make_fhir_client: Callable[..., SyncFHIRClient], responses: list[requests.Response]
) -> SyncFHIRClient:
    """A fhirpy `SyncFHIRClient` of the stack under test, authenticated with `e2e_token` (role
    admin), waiting `fhir_timeout_s` per request, and recording each response it receives in
    `responses`."""
    return make_fhir_client(sink=responses)
