"""Fixtures of the console tests: a headless Chromium (Playwright driving Debian's /usr/bin/chromium,
never a downloaded browser), pages at 1366x768, screenshots saved as test artifacts.

Screenshots go to `BTT_TEST_SCREENSHOT_DIR` (default: `btt-screenshots` under the system's
temporary folder), one PNG per page and step, named after the test.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ai_pipeline import runtime

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1366, "height": 768}


@pytest.fixture(autouse=True)
def _one_onnx_thread(settings):
    """In-process inference uses one thread (the machine is shared) and fresh sessions."""
    settings.BTT_ONNX_THREADS = 1
    settings.BTT_ONNX_PROVIDERS = ["CPUExecutionProvider"]
    runtime.clear_runners()
    yield
    runtime.clear_runners()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    folder = Path(
        os.environ.get("BTT_TEST_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "btt-screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Chromium for one test module. Not for the whole session: Playwright's sync API keeps an
    asyncio loop running in the test thread until it stops, which would break later tests that
    run their own loop (fhirpy's async client)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)")
    # Playwright's sync API keeps an asyncio loop running in this thread, which makes Django refuse
    # ORM calls from the test ("async context"); they are plain synchronous calls here, so allow them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root in a container, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def new_page(browser, request) -> Iterator[Callable[..., object]]:
    """`new_page()`: a page in a fresh browser context (own cookies) at 1366x768; JavaScript errors
    on the page fail the test."""
    contexts = []
    errors: list[str] = []

    def make(**kwargs):
        context = browser.new_context(viewport=VIEWPORT, **kwargs)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(15000)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot(screenshot_dir: Path, request) -> Callable[[object, str], Path]:
    """`screenshot(page, step)`: save the page as <test name>-<nn>-<step>.png in the screenshot folder."""
    counter = {"n": 0}
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def take(page, step: str) -> Path:
        counter["n"] += 1
        path = screenshot_dir / f"{base}-{counter['n']:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', step)}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def login(page, base_url: str, username: str, password: str) -> None:
    """Log in through the login form (as a user would: type, press Enter)."""
    page.goto(f"{base_url}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(re.compile(r".*/(\?.*)?$"))
