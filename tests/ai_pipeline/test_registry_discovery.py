"""Model discovery: folders under BTT_MODEL_DIR become AIModel rows; bad folders are refused, not fatal."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from ai_pipeline.models import AIModel
from ai_pipeline.registry import (
    ModelUnavailableError,
    file_sha256,
    find_model_folders,
    get_runnable_model,
    sync_registry,
)
from tests.ai_pipeline.support import copy_demo_model

pytestmark = pytest.mark.django_db


def with_version(folder, version: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_default_model_dirs_hold_the_demo_model():
    from django.conf import settings

    folders = find_model_folders(settings.BTT_MODEL_DIR)
    assert any(folder.name == "ct-lesion-demo" for folder in folders)


def test_a_model_folder_is_registered_available_and_enabled(model_root):
    folder = copy_demo_model(model_root)
    result = sync_registry()
    assert result.ok
    row = AIModel.objects.get()
    assert (row.name, row.version) == ("ct-lesion-demo", "1.0.0")
    assert row.status == AIModel.Status.AVAILABLE
    assert row.enabled
    assert row.sha256 == file_sha256(folder / "model.onnx")
    assert row.path == str(folder)
    assert row.manifest["intended_use"].startswith("Demonstration")
    assert row.clinical_use is False
    assert row.specialty == "radiology"
    assert row.verified_at is not None
    assert result.registered == [row]


def test_name_and_version_folders_are_found_one_level_deeper(model_root):
    copy_demo_model(model_root, "ct-lesion-demo/1.0.0")
    second = copy_demo_model(model_root, "ct-lesion-demo/1.1.0")
    with_version(second, "1.1.0")
    sync_registry()
    assert sorted(AIModel.objects.values_list("version", flat=True)) == ["1.0.0", "1.1.0"]
    assert get_runnable_model("ct-lesion-demo").version == "1.1.0"  # the newest enabled version
    assert get_runnable_model("ct-lesion-demo", "1.0.0").version == "1.0.0"


def test_a_rescan_updates_rows_and_keeps_the_admins_switch(model_root, settings):
    copy_demo_model(model_root)
    sync_registry()
    AIModel.objects.update(enabled=False)
    result = sync_registry()
    assert result.ok
    assert AIModel.objects.count() == 1
    assert AIModel.objects.get().enabled is False
    with pytest.raises(ModelUnavailableError, match=r"no enabled, available version \(1\.0\.0: disabled\)"):
        get_runnable_model("ct-lesion-demo")


def test_new_models_can_start_disabled(model_root, settings):
    settings.BTT_MODELS_ENABLED_BY_DEFAULT = False
    copy_demo_model(model_root)
    sync_registry()
    assert AIModel.objects.get().enabled is False


def test_an_invalid_manifest_is_refused_and_the_other_models_still_register(model_root):
    copy_demo_model(model_root, "good")
    bad = copy_demo_model(model_root, "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["name"] = "other-model"
    del manifest["intended_use"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result = sync_registry()
    assert [row.name for row in result.registered] == ["ct-lesion-demo"]
    ((folder, reason),) = result.refused
    assert folder == str(bad)
    assert "intended_use: Field required" in reason
    assert "refused" in reason


def test_the_same_model_twice_is_refused_once(model_root):
    copy_demo_model(model_root, "a")
    copy_demo_model(model_root, "b")
    result = sync_registry()
    assert len(result.registered) == 1
    assert "is also in" in result.refused[0][1]


def test_a_vanished_folder_marks_the_model_missing(model_root):
    import shutil

    folder = copy_demo_model(model_root)
    sync_registry()
    shutil.rmtree(folder)
    result = sync_registry()
    row = AIModel.objects.get()
    assert row.status == AIModel.Status.MISSING
    assert result.missing == [row]
    with pytest.raises(ModelUnavailableError, match="folder missing"):
        get_runnable_model("ct-lesion-demo")


def test_unknown_models_are_unavailable(db):
    with pytest.raises(ModelUnavailableError, match="no model named 'nope' is registered"):
        get_runnable_model("nope")


def test_the_sync_models_command_reports_and_fails_on_refusals(model_root, capsys):
    copy_demo_model(model_root)
    call_command("sync_models")
    out = capsys.readouterr().out
    assert "available  ct-lesion-demo 1.0.0 (enabled)" in out
    assert "1 available, 0 refused, 0 missing" in out
    broken = copy_demo_model(model_root, "broken")
    with_version(broken, "2.0.0")
    (broken / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(CommandError, match=r"1 model folder\(s\) refused"):
        call_command("sync_models")
    assert "sha256 mismatch" in capsys.readouterr().err
