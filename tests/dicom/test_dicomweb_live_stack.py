"""DICOMweb over real HTTP: the whole stack (`manage.py serve`, gunicorn) driven with `requests`:
a chunked (streamed) STOW-RS upload, QIDO-RS, WADO-RS retrieval streamed back byte for byte,
a rendered PNG."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image
from pydicom import dcmread

from btt_health.api_auth.services import create_api_client
from tests.dicom.test_dicomweb_support import (
    BOUNDARY,
    make_instance,
    multipart_body,
    new_uid,
    sample_bytes,
    stow_content_type,
    value,
)

pytestmark = pytest.mark.django_db(transaction=True)


def read_parts(response: requests.Response) -> list[bytes]:
    boundary = response.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    pieces = response.content.split(b"\r\n--" + boundary)
    pieces[0] = pieces[0][len(b"--" + boundary) :]
    return [piece[2:].partition(b"\r\n\r\n")[2] for piece in pieces if not piece.startswith(b"--")]


def test_stow_qido_wado_rendered_over_http(live_stack):
    _, token = create_api_client("dicomweb-live", "hospital_it")
    auth = {"Authorization": f"Bearer {token}"}
    base = f"{live_stack}/dicomweb"
    study, series = new_uid(), new_uid()
    files = [
        make_instance(study_uid=study, series_uid=series, instance_number=n, rows=64, columns=64)
        for n in (1, 2)
    ]
    mr = sample_bytes("MR_small_jp2klossless.dcm")
    body = multipart_body([*files, mr])

    def chunks(size: int = 7000):  # no Content-Length: sent with chunked transfer encoding
        for start in range(0, len(body), size):
            yield body[start : start + size]

    response = requests.post(
        f"{base}/studies",
        data=chunks(),
        headers={**auth, "Content-Type": stow_content_type(BOUNDARY), "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 3

    response = requests.get(f"{base}/studies", params={"StudyInstanceUID": study}, headers=auth, timeout=30)
    assert response.status_code == 200
    (item,) = response.json()
    assert value(item, "00201208") == 2
    assert value(item, "00081190") == f"{base}/studies/{study}"

    response = requests.get(
        f"{base}/studies/{study}",
        headers={**auth, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
        stream=True,
    )
    assert response.status_code == 200
    assert sorted(read_parts(response)) == sorted(files)

    ds = dcmread(io.BytesIO(mr), stop_before_pixels=True)
    instance = (
        f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    response = requests.get(
        f"{instance}/rendered",
        params={"window": "600,1600"},
        headers={**auth, "Accept": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)

    assert requests.get(f"{base}/studies", timeout=30).status_code == 401
