"""`manage.py dicom_storage_check`: files a crash left unindexed are found (and removed on request,
only when old enough not to be in the middle of a C-STORE), and indexed instances whose file is
gone are reported with a non-zero exit."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from integrations.dicom import services
from integrations.dicom.storage import get_instance_storage
from tests.dicom.store_support import make_ct, new_uid, write_part10

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_storage(settings, tmp_path: Path) -> Path:
    """A storage of this test's own (the session's is shared with other tests' files)."""
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "dicom"
    return settings.BTT_DICOM_STORAGE_DIR


def _placed_without_index(uid: str, age_seconds: float) -> str:
    """A file placed in the storage as the ingest path does, its index row never committed."""
    storage = get_instance_storage()
    staged = storage.staging_dir() / f"crash-{uid}.dcm"
    staged.write_bytes(b"\0" * 128 + b"DICM")
    key = storage.put_file(staged, uid)
    old = time.time() - age_seconds
    os.utime(storage.path(key), (old, old))
    return key


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("dicom_storage_check", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code), out.getvalue()
    return 0, out.getvalue()


def test_old_unindexed_files_are_reported_and_removed_on_request(own_storage: Path, tmp_path: Path) -> None:
    kept = services.store_instance(path=write_part10(make_ct(), tmp_path / "ct.dcm")).instance
    old_orphan = _placed_without_index(new_uid(), age_seconds=7200)
    in_flight = _placed_without_index(new_uid(), age_seconds=5)  # a C-STORE may be committing it

    code, output = _run()
    assert code == 0
    assert f"orphan file: {old_orphan}" in output
    assert in_flight not in output
    assert "3 file(s) checked: 1 orphan(s), 0 indexed instance(s) without a file" in output
    assert get_instance_storage().exists(old_orphan), "only reported without --remove-orphans"

    code, output = _run("--remove-orphans")
    assert code == 0
    assert f"orphan file: {old_orphan} (removed)" in output
    storage = get_instance_storage()
    assert not storage.exists(old_orphan)
    assert storage.exists(in_flight)
    assert storage.exists(kept.storage_key)


def test_an_indexed_instance_without_its_file_fails_the_check(own_storage: Path, tmp_path: Path) -> None:
    instance = services.store_instance(path=write_part10(make_ct(), tmp_path / "ct.dcm")).instance
    get_instance_storage().delete(instance.storage_key)
    code, output = _run("--remove-orphans")
    assert code == 1
    assert f"missing file: instance {instance.sop_instance_uid}" in output
    assert "1 indexed instance(s) without a file" in output
