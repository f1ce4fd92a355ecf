"""The worklist in headless Chromium on a stack with 3 studies per page and a 1-second refresh:
paging, filters (modality, AI status, patient, dates), sorting, and new studies and finished AI jobs
appearing without a reload."""

from __future__ import annotations

import re

import pytest

from ai_pipeline.models import InferenceJob
from btt_health.console import accounts
from tests.console.conftest import login
from tests.console.support import PASSWORD, add_job, indexed_study, make_user

pytestmark = pytest.mark.django_db(transaction=True)

PEOPLE = [  # family, modality, study date, AI job state
    ("Alpha", "CT", "20240110", None),
    ("Bravo", "MR", "20240210", None),
    ("Charlie", "CT", "20240310", "failed"),
    ("Delta", "CT", "20240410", "succeeded"),
    ("Echo", "CT", "20240510", "running"),
]


def _names(page) -> list[str]:
    return [
        text.split(",")[0] for text in page.locator("#worklist-rows tr td:first-child a").all_inner_texts()
    ]


def test_worklist_filters_sorting_paging_and_live_updates(start_serve, new_page, screenshot) -> None:
    stack = start_serve(
        BTT_CONSOLE_PAGE_SIZE="3", BTT_CONSOLE_POLL_SECONDS="1", BTT_RUN_WORKER="false", BTT_RUN_DICOM="false",
        BTT_RUN_MLLP="false",
    )  # fmt: skip
    base = stack.base_url
    hospital = accounts.create_organization("List Hospital")
    other = accounts.create_organization("Elsewhere")
    jobs = {}
    for index, (family, modality, date, state) in enumerate(PEOPLE):
        made = indexed_study(hospital, patient_id=f"WL-{index}", accession=f"ACC-WL-{index}", family=family,
                             given="Test", modality=modality, study_date=date, slices=2, size=64, seed=index)  # fmt: skip
        if state:
            jobs[family] = add_job(made.study_instance_uid, state, trust_score=72.5 if state == "succeeded" else None,
                                   reason="model file unreadable" if state == "failed" else "")  # fmt: skip
    indexed_study(other, patient_id="WL-X", accession="ACC-WL-X", family="Xray", slices=2, size=64, seed=9)
    make_user("wanda.list", "clinician", hospital)

    page = new_page()
    login(page, base, "wanda.list", PASSWORD)
    # Newest received first, three per page.
    assert _names(page) == ["Echo", "Delta", "Charlie"]
    assert page.locator("#page-info").inner_text() == "Page 1 of 2 · 5 studies"
    screenshot(page, "worklist-page-1")
    page.get_by_role("link", name="Next →").click()
    assert _names(page) == ["Bravo", "Alpha"]
    assert page.locator("#page-info").inner_text() == "Page 2 of 2 · 5 studies"
    screenshot(page, "worklist-page-2")

    # Sorting by patient: ascending, then descending on the second click.
    page.goto(f"{base}/")
    page.locator("thead").get_by_role("link", name=re.compile(r"^patient", re.IGNORECASE)).click()
    assert _names(page) == ["Alpha", "Bravo", "Charlie"]
    assert page.locator("th[aria-sort=ascending]").inner_text() == "PATIENT"
    page.locator("thead").get_by_role("link", name=re.compile(r"^patient", re.IGNORECASE)).click()
    assert _names(page) == ["Echo", "Delta", "Charlie"]

    # Filters, from the form.
    page.goto(f"{base}/")
    page.get_by_label("Modality").fill("MR")
    page.get_by_role("button", name="Filter").click()
    assert _names(page) == ["Bravo"]
    page.get_by_label("Modality").fill("")
    page.get_by_label("AI status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    assert _names(page) == ["Charlie"]
    assert page.locator("#worklist-rows .badge.ai-failed").get_attribute("title") == "model file unreadable"
    page.get_by_label("AI status").select_option("done")
    page.get_by_role("button", name="Filter").click()
    assert _names(page) == ["Delta"]
    assert "73 %" in page.locator("#worklist-rows tr").inner_text()
    page.get_by_label("AI status").select_option("")
    page.get_by_label("Patient").fill("delt")
    page.get_by_role("button", name="Filter").click()
    assert _names(page) == ["Delta"]
    page.get_by_label("Patient").fill("")
    page.get_by_label("From").fill("2024-02-01")
    page.get_by_label("To").fill("2024-03-31")
    page.get_by_role("button", name="Filter").click()
    assert sorted(_names(page)) == ["Bravo", "Charlie"]
    screenshot(page, "worklist-filtered")
    page.goto(f"{base}/?date_from=yesterday")
    assert "date_from must be a date" in page.locator(".messages").inner_text()

    # Live: a finished AI job and a new study show up without reloading the page.
    page.goto(f"{base}/")
    page.evaluate("window.__notReloaded = true")
    echo = jobs["Echo"]
    InferenceJob.objects.filter(pk=echo.pk).update(state="succeeded", trust_score=81.0)
    page.locator("#worklist-rows tr", has_text="Echo").locator(".badge.ai-done").wait_for(timeout=10000)
    indexed_study(
        hospital, patient_id="WL-NEW", accession="ACC-WL-NEW", family="Foxtrot", slices=2, size=64, seed=11
    )
    page.wait_for_function(
        "document.querySelector('#worklist-rows tr a').textContent.startsWith('Foxtrot')", timeout=10000
    )
    assert page.evaluate("window.__notReloaded") is True
    assert re.match(r"6 studies · updated", page.locator("#live").inner_text())
    screenshot(page, "worklist-live-update")
