"""The admin console in headless Chromium against `live_stack` (whose Celery worker writes
heartbeats): the status page with ingest, queues, workers and recent errors; hospital IT's access."""

from __future__ import annotations

import re
import time

import pytest

from btt_health.console import accounts
from tests.console.support import PASSWORD, add_job, indexed_study, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _admin_login(page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/admin/$"))


def test_status_page_shows_ingest_queues_workers_and_errors(live_stack, new_page, screenshot) -> None:
    hospital = accounts.create_organization("Status Hospital", ae_titles="STATUS-CT")
    made = indexed_study(hospital, patient_id="ST-1", accession="ACC-ST-1", slices=4, size=64)
    add_job(made.study_instance_uid, "failed", reason="pixel data cannot be decoded: test transfer syntax")
    make_user("adam.admin", "admin")

    page = new_page()
    _admin_login(page, live_stack, "adam.admin")
    screenshot(page, "admin-index")
    page.get_by_role("link", name="System status").click()
    page.wait_for_url(re.compile(r".*/admin/status$"))
    # The live stack's worker writes its heartbeat every BTT_WORKER_HEARTBEAT_SECONDS (15 s); the
    # tables are flushed between tests, so its row may take that long to come back.
    deadline = time.monotonic() + 45
    while page.locator("#workers td.state-alive").count() == 0:
        assert time.monotonic() < deadline, page.locator("#workers").inner_text()
        time.sleep(2)
        page.reload()
    assert re.search(r"\d+ s ago", page.locator("#workers").inner_text())
    ingest = page.locator("#ingest")
    assert "4 instances, 1 studies in the last hour" in ingest.inner_text()
    assert ingest.locator("svg.chart rect").count() >= 1
    queues = page.locator("#queues").inner_text()
    for queue in ("default", "inference", "ledger"):
        assert queue in queues
    assert page.locator("#queues td.big").first.inner_text() != "?"  # read from the broker
    assert "failed: 1" in page.locator("#ai-jobs").inner_text()
    errors = page.locator("#errors").inner_text()
    assert "pixel data cannot be decoded" in errors
    screenshot(page, "admin-status")


def test_hospital_it_runs_the_console_but_cannot_grant_superuser(live_stack, new_page, screenshot) -> None:
    hospital = accounts.create_organization("IT Hospital")
    make_user("ivy.it", "hospital_it", hospital)
    page = new_page()
    _admin_login(page, live_stack, "ivy.it")
    for name in (
        "Remote AEs",
        "AI models",
        "Routing rules",
        "Inference jobs",
        "API clients",
        "Users",
        "Organizations",
    ):
        assert page.get_by_role("link", name=name, exact=True).count() >= 1, name
    screenshot(page, "admin-index-hospital-it")
    assert page.goto(f"{live_stack}/admin/status").status == 200
    page.goto(f"{live_stack}/admin/auth/user/")
    page.get_by_role("link", name="ivy.it").click()
    assert page.locator("input[name=is_superuser]").count() == 0  # read-only for non-superusers
    screenshot(page, "admin-user-hospital-it")
