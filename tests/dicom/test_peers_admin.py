"""The admin console: remote AEs are edited there (same checks as add_dicom_peer), the index is read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations.dicom import services
from integrations.dicom.models import Instance, RemoteAE
from tests.dicom.store_support import make_ct, write_part10

pytestmark = pytest.mark.django_db


def _peer_form(**values) -> dict:
    form = {"ae_title": "PACS1", "host": "pacs.example.org", "port": "104", "description": ""}
    form.update(values)
    return form


def test_a_remote_ae_is_added_in_the_admin(admin_client) -> None:
    response = admin_client.post(
        "/admin/dicom/remoteae/add/", _peer_form(allow_store="on", allow_find="on", use_tls="on")
    )
    assert response.status_code == 302, response.content[:2000]
    peer = RemoteAE.objects.get(ae_title="PACS1")
    assert (peer.allow_store, peer.allow_find, peer.allow_move, peer.allow_get, peer.use_tls) == (
        True,
        True,
        False,
        False,
        True,
    )
    listing = admin_client.get("/admin/dicom/remoteae/")
    assert b"PACS1" in listing.content


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ae_title": "BAD\\TITLE"}, b"no backslash"),
        ({"port": "70000"}, b"port must be between 1 and 65535"),
    ],
)
def test_bad_remote_ae_values_are_refused(admin_client, values: dict, message: bytes) -> None:
    response = admin_client.post("/admin/dicom/remoteae/add/", _peer_form(**values))
    assert response.status_code == 200
    assert message in response.content
    assert not RemoteAE.objects.exists()


def test_the_index_is_listed_and_read_only(admin_client, settings, tmp_path: Path) -> None:
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "store"
    result = services.store_instance(path=write_part10(make_ct(patient_id="ADMIN-1"), tmp_path / "ct.dcm"))
    instance = Instance.objects.select_related("series__study__patient").get(pk=result.instance.pk)
    pages = {
        "dicompatient": instance.series.study.patient,
        "study": instance.series.study,
        "series": instance.series,
        "instance": instance,
    }
    for model, row in pages.items():
        listing = admin_client.get(f"/admin/dicom/{model}/")
        assert listing.status_code == 200, model
        assert admin_client.get(f"/admin/dicom/{model}/add/").status_code == 403, model
        detail = admin_client.get(f"/admin/dicom/{model}/{row.pk}/change/")
        assert detail.status_code == 200, model
        assert b'name="_save"' not in detail.content, f"{model} should not be editable"
    assert b"ADMIN-1" in admin_client.get("/admin/dicom/dicompatient/").content
