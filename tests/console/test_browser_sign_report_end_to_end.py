"""The clinician's whole path in a real browser, on a real stack: `manage.py serve` (HTTP, DICOM
node, Celery worker; PostgreSQL test database, the test broker), `manage.py load_demo` sends the
demo CT by C-STORE to the node, the worker completes the study and runs the demo model; then
headless Chromium logs in as the demo clinician, finds the study on the worklist with its AI
report, scrolls the slices with the keyboard, changes the window (preset and drag), edits the
conclusion and signs; the FHIR API (bearer token) then has the DiagnosticReport `final`, signed by
the clinician's Practitioner, with a Provenance of the signature. Screenshots of each page are saved.
"""

from __future__ import annotations

import re

import pytest
import requests

from tests.console.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)

CLINICIAN_PASSWORD = "Demo-clinician-pw-1"
ADMIN_PASSWORD = "Demo-admin-pw-1"


@pytest.fixture
def demo_stack(start_serve, process_launcher):
    stack = start_serve(
        BTT_DICOM_STUDY_QUIET_SECONDS="1.5",
        BTT_ONNX_THREADS="1",
        BTT_ONNX_PROVIDERS="cpu",
        BTT_CONSOLE_POLL_SECONDS="1",
        BTT_MODEL_DIR=None,
        BTT_EVENT_SUBSCRIBERS=None,
    )
    result = process_launcher.manage(
        "load_demo",
        "--port", stack.env["BTT_DICOM_PORT"],
        "--clinician-password", CLINICIAN_PASSWORD,
        "--admin-password", ADMIN_PASSWORD,
        "--wait", "120",
        env=stack.env,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{stack.process.log_tail()}"
    assert f"clinician login: demo.clinician / {CLINICIAN_PASSWORD}" in result.stdout
    assert f"admin login: demo.admin / {ADMIN_PASSWORD}" in result.stdout
    assert "AI report ready: DiagnosticReport/" in result.stdout
    return stack


def test_clinician_signs_the_ai_report_of_a_study_received_by_c_store(
    demo_stack, new_page, screenshot, api_token
) -> None:
    base = demo_stack.base_url
    page = new_page()
    page.goto(f"{base}/")
    assert "/login" in page.url  # the viewer needs a login
    screenshot(page, "login")
    login(page, base, "demo.clinician", CLINICIAN_PASSWORD)

    # Worklist: the demo study with its order's priority, AI status and trust score.
    row = page.locator("#worklist-rows tr", has_text="Demo, Alice")
    row.wait_for()
    assert row.locator(".badge.ai-done").inner_text() == "done"
    assert row.locator(".priority").inner_text() == "urgent"
    assert re.fullmatch(r"\d+ %", row.locator("td").nth(8).inner_text().strip())
    assert row.locator(".badge.report-preliminary").inner_text() == "to sign"
    assert "DEMO-ACC-0001" in row.inner_text()
    screenshot(page, "worklist")

    # Study page: the viewer shows a slice; the report panel the AI findings and trust score.
    row.get_by_role("link").click()
    page.wait_for_url(re.compile(r".*/studies/[0-9.]+$"))
    viewport = page.locator("#viewport")
    page.wait_for_function("document.getElementById('viewport').dataset.loaded")
    assert page.get_by_test_id("patient-name").inner_text() == "Demo, Alice"
    assert page.get_by_test_id("report-status").inner_text() == "preliminary"
    assert re.fullmatch(r"\d+ %", page.get_by_test_id("trust-score").inner_text())
    assert page.locator(".trust-factors li").count() == 5
    assert page.locator(".findings tbody tr").count() >= 1
    start = int(viewport.get_attribute("data-slice"))
    screenshot(page, "study")

    # Slices from the keyboard: arrows step one, Page Up jumps ten (clamped at the first image).
    viewport.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert int(viewport.get_attribute("data-slice")) == start + 2
    page.keyboard.press("ArrowUp")
    assert int(viewport.get_attribute("data-slice")) == start + 1
    page.keyboard.press("PageUp")
    assert int(viewport.get_attribute("data-slice")) == max(1, start + 1 - 10)
    page.keyboard.press("End")
    assert int(viewport.get_attribute("data-slice")) == 24
    page.keyboard.press("Home")
    assert viewport.get_attribute("data-slice") == "1"
    page.mouse.move(*_centre(viewport))
    page.mouse.wheel(0, 120)
    page.wait_for_function("document.getElementById('viewport').dataset.slice === '2'")
    page.wait_for_function("document.getElementById('viewport').dataset.loaded.endsWith('|40,400')")
    screenshot(page, "study-scrolled")

    # Window: the lung preset (key 2), then a drag; each ends in an image rendered with that window.
    page.keyboard.press("2")
    page.wait_for_function("document.getElementById('viewport').dataset.loaded.endsWith('|-600,1500')")
    assert "window=-600%2C1500" in page.locator("#slice-image").get_attribute("src")
    x, y = _centre(viewport)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 30, steps=5)
    page.mouse.up()
    dragged = viewport.get_attribute("data-window")
    assert dragged != "-600,1500"
    page.wait_for_function(f"document.getElementById('viewport').dataset.loaded.endsWith('|{dragged}')")
    assert page.locator("#wl-readout").inner_text().startswith("W ")
    screenshot(page, "study-windowed")

    # Edit the conclusion and sign.
    report_id = page.locator("article.report").get_attribute("data-report")
    conclusion = page.locator("textarea[name=conclusion]")
    conclusion.fill("Hyperdense lesion confirmed on the AI-marked slices. Follow-up in 3 months.")
    page.get_by_test_id("sign").click()
    page.wait_for_url(re.compile(r".*/studies/[0-9.]+#report$"))
    assert page.get_by_test_id("report-status").inner_text() == "final"
    assert "Report signed" in page.locator(".messages").inner_text()
    assert "Signed by Dana Demo (clinician)" in page.locator("article.report").inner_text()
    screenshot(page, "study-signed")

    # The FHIR API (an API client's bearer token) sees the signed report.
    headers = {"Authorization": f"Bearer {api_token}", "Accept": "application/fhir+json"}
    report = requests.get(f"{base}/fhir/DiagnosticReport/{report_id}", headers=headers, timeout=30).json()
    assert report["status"] == "final"
    assert (
        report["conclusion"] == "Hyperdense lesion confirmed on the AI-marked slices. Follow-up in 3 months."
    )
    assert report["meta"]["versionId"] == "2"
    (interpreter,) = report["resultsInterpreter"]
    practitioner = requests.get(f"{base}/fhir/{interpreter['reference']}", headers=headers, timeout=30).json()
    assert practitioner["identifier"] == [{"system": "urn:btt-health:user", "value": "demo.clinician"}]
    bundle = requests.get(
        f"{base}/fhir/Provenance",
        params={"target": f"DiagnosticReport/{report_id}"},
        headers=headers,
        timeout=30,
    ).json()
    signatures = [
        e["resource"]
        for e in bundle.get("entry", [])
        if e["resource"].get("activity", {}).get("text") == "sign"
    ]
    assert len(signatures) == 1
    assert signatures[0]["agent"][0]["who"]["reference"] == interpreter["reference"]
    assert signatures[0]["target"] == [{"reference": f"DiagnosticReport/{report_id}/_history/2"}]

    # Back on the worklist the study shows as signed.
    page.goto(f"{base}/")
    assert (
        page.locator("#worklist-rows tr", has_text="Demo, Alice").locator(".badge.report-final").count() == 1
    )
    screenshot(page, "worklist-after-sign")


def _centre(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
