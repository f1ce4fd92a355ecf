"""A clinician of another organization does not see a study, in the browser and over the viewer's
JSON and image endpoints; the study's own organization does (headless Chromium, `live_stack`).
The study's AI report is the demo model's, run in this process on a synthetic CT."""

from __future__ import annotations

import pytest

from btt_health.console import accounts
from integrations.dicom.models import Instance
from tests.console.conftest import login
from tests.console.support import PASSWORD, make_user, processed_study

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_clinician_of_another_organization_does_not_see_the_study(live_stack, new_page, screenshot) -> None:
    north = accounts.create_organization("North Hospital", ae_titles="NORTH-CT")
    south = accounts.create_organization("South Hospital", ae_titles="SOUTH-CT")
    made = processed_study(
        north, patient_id="PAT-NORTH-1", accession="ACC-NORTH-1", family="Nordmann", given="Nina"
    )
    make_user("nora.north", "clinician", north)
    make_user("sven.south", "clinician", south)
    uid = made.study_instance_uid
    instance = Instance.objects.filter(series__study__study_instance_uid=uid).select_related("series").first()
    image_path = f"/viewer/images/{uid}/{instance.series.series_instance_uid}/{instance.sop_instance_uid}/frames/1/rendered"

    south_page = new_page()
    login(south_page, live_stack, "sven.south", PASSWORD)
    assert south_page.locator("#worklist-rows").inner_text().strip() == "No studies match."
    assert "Nordmann" not in south_page.content()
    screenshot(south_page, "other-organization-worklist")
    response = south_page.goto(f"{live_stack}/studies/{uid}")
    assert response.status == 404
    assert "Nordmann" not in south_page.content()
    screenshot(south_page, "other-organization-study-404")
    # The same session over the viewer's API: not found, exactly like a UID that does not exist.
    assert south_page.request.get(f"{live_stack}/viewer/api/studies/{uid}").status == 404
    assert south_page.request.get(f"{live_stack}/viewer/api/studies/1.2.3.4").status == 404
    assert south_page.request.get(f"{live_stack}{image_path}").status == 404
    listed = south_page.request.get(f"{live_stack}/viewer/api/worklist").json()
    assert listed["total"] == 0
    assert listed["studies"] == []
    assert (
        south_page.request.get(f"{live_stack}/viewer/api/worklist?patient=PAT-NORTH-1").json()["total"] == 0
    )

    north_page = new_page()
    login(north_page, live_stack, "nora.north", PASSWORD)
    north_page.locator("#worklist-rows tr", has_text="Nordmann, Nina").wait_for()
    assert (
        north_page.request.get(f"{live_stack}/viewer/api/studies/{uid}").json()["patient_id"] == "PAT-NORTH-1"
    )
    assert north_page.request.get(f"{live_stack}{image_path}").status == 200
    screenshot(north_page, "own-organization-worklist")
