"""WADO-RS rendered images: .../instances/{sop}/rendered and .../frames/{n}/rendered as PNG or
JPEG, with the Modality LUT (rescale) and VOI (window) applied, `window` and `viewport`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from tests.dicom.test_dicomweb_support import (  # noqa: F401
    TRANSFER_SYNTAX_FILES,
    dicomweb_storage,
    make_instance,
    new_uid,
    sample_bytes,
    sample_file,
    stow,
    with_new_uids,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("dicomweb_storage")]


def store(client, data: bytes):
    assert stow(client, [data]).status_code == 200
    ds = dcmread(io.BytesIO(data))
    return (
        ds,
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
    )


def render(client, path: str, accept: str = "image/png", query: str = "") -> Image.Image:
    response = client.get(f"{path}/rendered{'?' + query if query else ''}", headers={"Accept": accept})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == accept
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


@pytest.mark.parametrize(("syntax", "name"), sorted(TRANSFER_SYNTAX_FILES.items()))
def test_every_stored_transfer_syntax_renders_as_png(api_client, syntax, name):
    ds, path = store(api_client, sample_bytes(name))
    image = render(api_client, path)
    assert image.format == "PNG"
    assert image.size == (ds.Columns, ds.Rows)
    assert image.mode == ("L" if ds.SamplesPerPixel == 1 else "RGB")
    pixels = np.asarray(image)
    assert pixels.min() < pixels.max()  # not a blank image


def test_jpeg_is_the_default_and_png_on_request(api_client):
    _, path = store(api_client, sample_bytes("MR_small.dcm"))
    response = api_client.get(f"{path}/rendered")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    assert render(api_client, path, query="accept=image/png").format == "PNG"
    assert render(api_client, path, "image/jpeg", "quality=20").format == "JPEG"


def test_window_parameter_changes_the_pixels(api_client):
    _, path = store(api_client, sample_bytes("MR_small.dcm"))
    default = np.asarray(render(api_client, path))
    narrow = np.asarray(render(api_client, path, query="window=600,100,linear"))
    wide = np.asarray(render(api_client, path, query="window=1000,3000,linear"))
    assert not np.array_equal(default, narrow)
    assert not np.array_equal(narrow, wide)
    assert (narrow == 0).sum() + (narrow == 255).sum() > (wide == 0).sum() + (wide == 255).sum()
    sigmoid = np.asarray(render(api_client, path, query="window=600,1600,sigmoid"))
    assert not np.array_equal(default, sigmoid)


def test_default_window_comes_from_the_data_set(api_client):
    ds, path = store(api_client, sample_bytes("MR_small.dcm"))  # Window Center 600, Width 1600
    explicit = np.asarray(render(api_client, path, query=f"window={ds.WindowCenter},{ds.WindowWidth},linear"))
    assert np.array_equal(np.asarray(render(api_client, path)), explicit)


def test_rescale_and_window_give_the_exact_values(api_client):
    # Stored 0..15, slope 10, intercept -50: modality values -50..100. Window 25 +/- 75 (linear-exact)
    # maps value v to (v - 25) / 150 + 0.5, times 255.
    data = make_instance(study_uid=new_uid(), series_uid=new_uid(), rescale=(10, -50))
    _, path = store(api_client, data)
    image = np.asarray(render(api_client, path, query="window=25,150,linear-exact"))
    modality = np.arange(16).reshape(4, 4) * 10.0 - 50
    expected = np.clip(np.rint(((modality - 25) / 150 + 0.5) * 255), 0, 255)
    assert np.array_equal(image, expected.astype(np.uint8))


def test_without_a_window_the_min_max_range_is_used(api_client):
    data = make_instance(
        study_uid=new_uid(), series_uid=new_uid(), pixel_values=[100 + 10 * i for i in range(16)]
    )
    _, path = store(api_client, data)
    image = np.asarray(render(api_client, path))
    assert image.min() == 0
    assert image.max() == 255
    assert (np.diff(image.ravel().astype(int)) > 0).all()


def test_monochrome1_is_inverted(api_client):
    values = list(range(0, 1600, 100))
    mono2 = np.asarray(
        render(
            api_client,
            store(api_client, make_instance(study_uid=new_uid(), series_uid=new_uid(), pixel_values=values))[
                1
            ],
        )
    )
    mono1 = np.asarray(
        render(
            api_client,
            store(
                api_client,
                make_instance(
                    study_uid=new_uid(), series_uid=new_uid(), pixel_values=values, photometric="MONOCHROME1"
                ),
            )[1],
        )
    )
    assert np.array_equal(mono1, 255 - mono2)


def test_viewport_scales_preserving_the_aspect_ratio(api_client):
    _, path = store(api_client, sample_bytes("JPEG2000.dcm"))  # 256 columns x 1024 rows
    assert render(api_client, path, query="viewport=128,128").size == (32, 128)
    assert render(api_client, path, query="viewport=64,1024").size == (64, 256)
    # A source region (sx, sy, sw, sh) crops first: 128x128 from the top-left, shown at 64x64.
    assert render(api_client, path, query="viewport=64,64,0,0,128,128").size == (64, 64)


def test_color_images_render_in_color(api_client):
    _, path = store(api_client, sample_bytes("SC_rgb_jpeg_dcmtk.dcm"))
    image = render(api_client, path)
    assert image.mode == "RGB"
    red, green, blue = (int(v) for v in np.asarray(image)[5, 5])  # the test image starts with a red band
    assert red > 200
    assert max(green, blue) < 50


def test_palette_color_is_applied(api_client):
    ds, path = store(api_client, sample_bytes("examples_palette.dcm"))
    image = render(api_client, path)
    assert image.mode == "RGB"
    assert image.size == (ds.Columns, ds.Rows)


def test_frames_of_a_multi_frame_instance_render_separately(api_client):
    _, path = store(api_client, with_new_uids(sample_file("rtdose.dcm")))
    first = np.asarray(render(api_client, f"{path}/frames/1", query="window=1000000,600000,linear"))
    last = np.asarray(render(api_client, f"{path}/frames/15", query="window=1000000,600000,linear"))
    instance = np.asarray(render(api_client, path, query="window=1000000,600000,linear"))
    assert np.array_equal(instance, first)
    assert not np.array_equal(first, last)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("window=abc", "window"),
        ("window=40,0,linear", "window"),
        ("window=40,400,cubic", "cubic"),
        ("viewport=0,10", "viewport"),
        ("viewport=10", "viewport"),
        ("quality=101", "quality"),
        ("colour=red", "'colour'"),
    ],
)
def test_bad_parameters_are_400_naming_them(api_client, query, named):
    _, path = store(api_client, sample_bytes("MR_small.dcm"))
    response = api_client.get(f"{path}/rendered?{query}", headers={"Accept": "image/png"})
    assert response.status_code == 400
    assert named in response.json()["message"]


def test_unsupported_media_type_is_406_and_frame_lists_400(api_client):
    _, path = store(api_client, sample_bytes("MR_small.dcm"))
    assert api_client.get(f"{path}/rendered", headers={"Accept": "image/gif"}).status_code == 406
    response = api_client.get(f"{path}/frames/1,2/rendered")
    assert response.status_code == 400
    assert api_client.get(f"{path}/frames/2/rendered").status_code == 404
