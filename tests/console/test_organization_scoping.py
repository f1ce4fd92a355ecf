"""Which studies a web user sees (btt_health/console/access.py), checked through the service layer
and the viewer's session-authenticated JSON and image endpoints (Django test client, PostgreSQL)."""

from __future__ import annotations

import pytest
from django.test import Client

from btt_health.console import accounts, worklist
from btt_health.console.models import Role
from tests.console.support import PASSWORD, indexed_study, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(settings, tmp_path):
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "dicom"
    north = accounts.create_organization("North Hospital", ae_titles="NORTH-CT")
    south = accounts.create_organization("South Hospital", ae_titles="SOUTH-CT")
    managed_north = indexed_study(north, patient_id="N-1", accession="ACC-N-1", calling_ae="SOUTH-CT")
    # A patient known only from DICOM (no managing organization): the sending AE decides.
    dicom_only_south = indexed_study(
        None, patient_id="S-DICOM-1", accession="ACC-S-1", calling_ae="SOUTH-CT", seed=3
    )
    return north, south, managed_north, dicom_only_south


def _uids(user) -> set[str]:
    page = worklist.worklist(user, worklist.WorklistQuery())
    return {row.study_instance_uid for row in page.rows}


def test_managing_organization_decides_else_the_sending_ae(setup):
    north, south, managed_north, dicom_only_south = setup
    north_clinician = make_user("nora.north", "clinician", north)
    south_clinician = make_user("sam.south", "clinician", south)
    admin = make_user("ada.admin", "admin")
    nobody = make_user("nick.norole", "clinician")
    nobody.profile.delete()

    # Sent by South's scanner, but the patient is managed by North: North's, not South's.
    assert _uids(north_clinician) == {managed_north.study_instance_uid}
    assert _uids(south_clinician) == {dicom_only_south.study_instance_uid}
    assert _uids(admin) == {managed_north.study_instance_uid, dicom_only_south.study_instance_uid}
    assert accounts.role_of(nobody) is None
    assert _uids(nobody) == set()
    assert accounts.role_of(admin) == Role.ADMIN
    assert admin.is_superuser


def test_json_and_image_endpoints_answer_404_for_another_organizations_study(setup):
    north, south, managed_north, _ = setup
    make_user("nora.north", "clinician", north)
    make_user("sam.south", "clinician", south)
    uid = managed_north.study_instance_uid
    series = managed_north_series(uid)

    anonymous = Client()
    assert anonymous.get(f"/viewer/api/studies/{uid}").status_code == 401
    assert anonymous.get("/viewer/api/worklist").status_code == 401
    response = anonymous.get(f"/studies/{uid}")
    assert response.status_code == 302
    assert response["Location"].startswith("/login")

    south_client = Client()
    assert south_client.login(username="sam.south", password=PASSWORD)
    assert south_client.get(f"/viewer/api/studies/{uid}").status_code == 404
    assert south_client.get(f"/studies/{uid}").status_code == 404
    assert south_client.get(_image_url(uid, *series)).status_code == 404
    listed = south_client.get("/viewer/api/worklist").json()
    assert uid not in {s["study_instance_uid"] for s in listed["studies"]}

    north_client = Client()
    assert north_client.login(username="nora.north", password=PASSWORD)
    detail = north_client.get(f"/viewer/api/studies/{uid}")
    assert detail.status_code == 200
    assert detail.json()["patient_id"] == "N-1"
    image = north_client.get(_image_url(uid, *series) + "?window=40,400")
    assert image.status_code == 200
    assert image["Content-Type"] == "image/jpeg"
    assert image.content[:2] == b"\xff\xd8"


def managed_north_series(uid: str) -> tuple[str, str]:
    from integrations.dicom.models import Instance

    instance = Instance.objects.filter(series__study__study_instance_uid=uid).select_related("series").first()
    return instance.series.series_instance_uid, instance.sop_instance_uid


def _image_url(study: str, series: str, sop: str) -> str:
    return f"/viewer/images/{study}/{series}/{sop}/frames/1/rendered"
