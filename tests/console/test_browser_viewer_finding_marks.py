"""The viewer marks every image an AI finding rests on, not only its best one: the job records the
SOP Instance UIDs of all images at or above the threshold and of their longest run
(`InferenceJob.findings`), the study page hands them to its script, and headless Chromium
(`live_stack`) shows a mark per image on the slice bar and outlines each of them when it is shown.
The report is the demo model's, run in this process on a synthetic CT with a lesion."""

from __future__ import annotations

import json
import re

import pytest

from btt_health.console import accounts
from tests.console.conftest import login
from tests.console.support import PASSWORD, make_user, processed_study

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_positive_image_of_a_finding_is_marked_and_outlined(live_stack, new_page, screenshot) -> None:
    north = accounts.create_organization("Marks Hospital", ae_titles="MARKS-CT")
    made = processed_study(north, patient_id="PAT-MARKS-1", accession="ACC-MARKS-1", slices=16)
    make_user("mia.marks", "clinician", north)
    (finding,) = [f for f in made.job.findings if f["positive"]]
    run, positive, best = finding["run_images"], finding["positive_images"], finding["best_image"]
    assert len(run) == finding["longest_run"] >= 2  # the lesion spans several slices
    assert len(positive) == finding["supporting_images"]
    assert set(run) <= set(positive)
    assert best in run

    page = new_page()
    login(page, live_stack, "mia.marks", PASSWORD)
    page.goto(f"{live_stack}/studies/{made.study_instance_uid}")
    page.wait_for_function("document.getElementById('viewport').dataset.loaded")
    data = json.loads(page.locator("#viewer-data").text_content())
    (shown,) = [f for f in data["findings"] if f["positive"]]
    assert (shown["positive_images"], shown["run_images"]) == (positive, run)

    marks = page.locator("#finding-marks .mark")
    assert marks.count() == len(set(positive) | {best})
    assert page.locator("#finding-marks .mark.run").count() == len(run)
    assert page.locator("#finding-marks .mark.best").count() == 1
    assert sorted(marks.evaluate_all("els => els.map(e => e.dataset.sop)")) == sorted(set(positive) | {best})
    screenshot(page, "marks")

    # Each image of the run is outlined when shown, not only the best one.
    (series,) = [s for s in data["series"] if s["series_instance_uid"] == finding["series"]]
    order = [image["sop_instance_uid"] for image in series["images"]]
    viewport = page.locator("#viewport")
    overlay = page.locator("#finding-overlay")
    page.keyboard.press("Home")
    for index, sop in enumerate(order):
        if index:
            page.keyboard.press("ArrowDown")
        page.wait_for_function(f"document.getElementById('viewport').dataset.slice === '{index + 1}'")
        if sop == best:
            assert overlay.get_attribute("data-kind") == "best"
            assert "highest on this image" in overlay.inner_text()
        elif sop in run:
            assert overlay.is_visible()
            assert overlay.get_attribute("data-kind") == "run"
            assert re.search(rf"\({len(run)} adjacent images\)", overlay.inner_text())
            assert "positive" in (overlay.get_attribute("class") or "")
        elif sop in positive:
            assert overlay.get_attribute("data-kind") == "positive"
        else:
            assert overlay.is_hidden()
    assert viewport.get_attribute("data-slice") == str(len(order))
    screenshot(page, "last-slice")
