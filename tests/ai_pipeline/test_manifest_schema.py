"""The model manifest: the demo model's validates, and each kind of mistake is named with its path."""

from __future__ import annotations

import copy
import json

import pytest

from ai_pipeline.manifest import Applicability, ManifestError, load_manifest, parse_manifest
from tests.ai_pipeline.support import DEMO_MODEL


def demo() -> dict:
    return json.loads((DEMO_MODEL / "manifest.json").read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    return caught.value.problems


def test_the_demo_manifest_is_valid_and_honestly_labelled():
    manifest = load_manifest(DEMO_MODEL)
    assert (manifest.name, manifest.version) == ("ct-lesion-demo", "1.0.0")
    assert len(manifest.sha256) == 64
    assert manifest.clinical_use is False
    assert "NOT for clinical use" in manifest.intended_use
    assert "synthetic" in manifest.training_data.lower()
    assert manifest.applicability.modalities == ["CT"]
    assert manifest.input.kind == "slice"
    assert manifest.input.size == [128, 128]
    assert manifest.input.windows[0].center == 40
    assert manifest.input.windows[0].width == 400
    assert [label.name for label in manifest.output.findings] == ["synthetic-lesion"]
    assert manifest.output.findings[0].threshold == 0.5
    assert manifest.licence
    assert manifest.report.code.code
    assert manifest.evaluation["per_slice"]["n"] > 0


def test_missing_required_fields_are_each_named():
    data = demo()
    for key in ("sha256", "intended_use", "licence", "input"):
        del data[key]
    found = problems(data)
    for key in ("sha256", "intended_use", "licence", "input"):
        assert any(problem.startswith(f"{key}:") for problem in found), found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(sha256="abc"), "sha256: must be the 64 hex digits"),
        (lambda d: d.update(name="CT Lesion"), "name: must be 1-64 of a-z"),
        (lambda d: d.update(version="1 0"), "version: must be 1-32"),
        (lambda d: d.update(schema_version=2), "schema_version: must be 1"),
        (lambda d: d["input"].update(size=[128, 128, 128]), "a slice model takes size [height, width]"),
        (
            lambda d: d["input"].update(normalisation={"method": "minmax"}),
            "exactly one of windowing or normalisation",
        ),
        (lambda d: d["input"].pop("windowing"), "exactly one of windowing or normalisation"),
        (
            lambda d: d["input"].update(channels=3, windowing=[{"center": 0, "width": 10}] * 2),
            "2 windows for 3 channel",
        ),
        (lambda d: d["input"].update(tta=["flip_lr"]), "tta must start with 'identity'"),
        (lambda d: d["output"]["labels"][1].pop("threshold"), "a finding label needs a threshold"),
        (lambda d: d["output"]["labels"][1].update(index=5), "label indexes must be 0..1"),
        (lambda d: d["output"]["labels"][1].update(background=True), "at least one label must be a finding"),
        (lambda d: d["applicability"].update(sop_classes=["CT Image"]), "is not a UID"),
        (lambda d: d.update(unexpected=1), "unexpected: Extra inputs are not permitted"),
        (lambda d: d["quality"].update(pixel_spacing_mm=[2, 1]), "pixel_spacing_mm must be [min, max]"),
    ],
)
def test_each_mistake_is_reported_with_its_path(change, expected):
    data = copy.deepcopy(demo())
    change(data)
    found = problems(data)
    assert any(expected in problem for problem in found), found


def test_a_volume_model_takes_depth_height_width():
    data = demo()
    data["input"].update(kind="volume", size=[32, 64, 64])
    manifest = parse_manifest(data)
    assert (manifest.input.height, manifest.input.width) == (64, 64)


def test_unreadable_manifests_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(ManifestError, match=r"no manifest\.json in the model folder"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"name": "x",\n oops}')
    with pytest.raises(ManifestError, match=r"not valid JSON: .* line 2") as caught:
        load_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(caught.value)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        load_manifest(tmp_path)


def test_applicability_matching():
    rule = Applicability(modalities=["ct"], body_parts=["chest"], sop_classes=["1.2.840.10008.5.1.4.1.1.2"])
    assert rule.modalities == ["CT"]
    assert rule.body_parts == ["CHEST"]
    assert rule.matches(modality="CT", body_part="CHEST", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    assert rule.matches(
        modality="ct", body_part="", sop_class_uid="1.2.840.10008.5.1.4.1.1.2"
    )  # no body part: not excluded
    assert not rule.matches(modality="MR", body_part="CHEST", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    assert not rule.matches(modality="CT", body_part="HEAD", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    assert not rule.matches(modality="CT", body_part="CHEST", sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    assert Applicability().matches(modality="US", body_part="", sop_class_uid="1.2.3")
