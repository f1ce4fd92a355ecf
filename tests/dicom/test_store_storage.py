"""The instance storage (`storage.py`): layout, durable moves that never overwrite, the interface."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from integrations.dicom import storage as storage_module
from integrations.dicom.storage import FileSystemStorage, StorageError, get_instance_storage


@pytest.fixture
def store(tmp_path: Path) -> FileSystemStorage:
    return FileSystemStorage(tmp_path / "dicom")


def _staged(store: FileSystemStorage, content: bytes) -> Path:
    path = store.staging_dir() / f"in-{hashlib.md5(content).hexdigest()}.dcm"
    path.write_bytes(content)
    return path


def test_layout_and_round_trip(store: FileSystemStorage) -> None:
    uid = "1.2.840.113619.2.55.3.1234"
    digest = hashlib.sha256(uid.encode()).hexdigest()
    staged = _staged(store, b"first")
    key = store.put_file(staged, uid)
    assert key == f"{digest[:2]}/{digest}.dcm"
    assert not staged.exists(), "the staged file is moved, not copied"
    assert store.exists(key)
    assert store.path(key) == store.root / digest[:2] / f"{digest}.dcm"
    with store.open(key) as handle:
        assert handle.read() == b"first"
    assert store.size(key) == 5
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # a missing file is not an error


def test_a_taken_key_is_never_overwritten(store: FileSystemStorage) -> None:
    uid = "1.2.3.4"
    first = store.put_file(_staged(store, b"first"), uid)
    second = store.put_file(_staged(store, b"second"), uid)
    assert second != first
    assert second.startswith(first[:-4] + ".")
    assert store.open(first).read() == b"first"
    assert store.open(second).read() == b"second"


def test_keys_cannot_leave_the_storage(store: FileSystemStorage) -> None:
    for key in ("../../etc/passwd", "ab/../cd.dcm", "/etc/passwd", "ab/cd", "ab\\cd/ef.dcm"):
        with pytest.raises(ValueError, match="not an instance storage key"):
            store.path(key)


def test_begin_put_returns_the_key_at_once_and_waits_on_demand(store: FileSystemStorage) -> None:
    pending = store.begin_put(_staged(store, b"data"), "1.2.3.5")
    assert store.exists(pending.key)
    assert pending.wait() == pending.key


def _recording_fsync(calls: list[str], fail: bool = False):
    def durable() -> None:
        calls.append(threading.current_thread().name)
        if fail:
            raise StorageError("storing 1.2.3 failed: I/O error")

    return durable


def test_wait_runs_the_fsync_in_the_caller_once() -> None:
    calls: list[str] = []
    pending = storage_module.PendingPut("ab/key.dcm", _recording_fsync(calls))
    assert pending.wait() == "ab/key.dcm"
    assert pending.wait() == "ab/key.dcm"
    assert calls == [threading.current_thread().name]


def test_start_runs_the_fsync_in_the_background_and_wait_waits_for_it() -> None:
    calls: list[str] = []
    pending = storage_module.PendingPut("ab/key.dcm", _recording_fsync(calls))
    pending.start()
    pending.start()  # idempotent
    assert pending.wait() == "ab/key.dcm"
    assert len(calls) == 1
    assert calls[0].startswith("dicom-fsync")


@pytest.mark.parametrize("background", [False, True])
def test_a_failed_fsync_fails_every_wait(background: bool) -> None:
    calls: list[str] = []
    pending = storage_module.PendingPut("ab/key.dcm", _recording_fsync(calls, fail=True))
    if background:
        pending.start()
    for _ in range(2):
        with pytest.raises(StorageError, match="I/O error"):
            pending.wait()
    assert len(calls) == 1


def test_settle_never_fsyncs_a_file_about_to_be_deleted() -> None:
    calls: list[str] = []
    pending = storage_module.PendingPut("ab/key.dcm", _recording_fsync(calls))
    pending.settle()
    assert calls == []
    started = storage_module.PendingPut("ab/key.dcm", _recording_fsync(calls, fail=True))
    started.start()
    started.settle()  # waits for the running fsync, its failure left to the caller's cleanup
    assert len(calls) == 1


def test_across_file_systems_it_copies(store: FileSystemStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: os.link fails with EXDEV as between two file systems; the file is copied, then removed."""
    real_link = os.link
    calls = []

    def cross_device(source, target):
        if str(source).startswith(str(store.root / "incoming")):
            calls.append(source)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(source, target)

    monkeypatch.setattr(storage_module.os, "link", cross_device)
    staged = _staged(store, b"copied")
    key = store.put_file(staged, "1.2.3.6")
    assert calls
    assert store.open(key).read() == b"copied"
    assert not staged.exists()
    assert not [p for p in store.path(key).parent.iterdir() if p.name.endswith(".partial")]


def test_an_io_error_is_a_storage_error(store: FileSystemStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: fsync fails with EIO."""

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage_module.os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        store.put_file(_staged(store, b"x"), "1.2.3.7")


def test_get_instance_storage_follows_the_settings(settings, tmp_path: Path) -> None:
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "a"
    first = get_instance_storage()
    assert isinstance(first, FileSystemStorage)
    assert first.root == tmp_path / "a"
    assert get_instance_storage() is first
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "b"
    assert get_instance_storage().root == tmp_path / "b"


def test_all_folders_of_the_layout_are_made_before_the_first_file(store: FileSystemStorage) -> None:
    """So that no instance pays for a new folder (and its parent's fsync) while a sender waits."""
    assert not store.root.exists()
    store.put_file(_staged(store, b"first"), "1.2.3.8")
    folders = {p.name for p in store.root.iterdir() if p.is_dir()}
    assert folders == {f"{n:02x}" for n in range(256)} | {"incoming"}
    assert (store.root / storage_module._FOLDERS_MADE).exists()


def test_a_folder_removed_by_hand_is_made_again(store: FileSystemStorage) -> None:
    uid = "1.2.3.9"
    folder = store.root / FileSystemStorage.key_for(uid).split("/")[0]
    store.put_file(_staged(store, b"other"), "1.2.3.10")
    folder.rmdir()
    key = store.put_file(_staged(store, b"again"), uid)
    assert store.open(key).read() == b"again"


def test_keys_of_the_two_level_layout_stay_readable(store: FileSystemStorage) -> None:
    """Instances stored before the layout became one level (`ab/cd/<sha256>.dcm`)."""
    digest = hashlib.sha256(b"1.2.3.11").hexdigest()
    old_key = f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"
    (store.root / digest[:2] / digest[2:4]).mkdir(parents=True)
    (store.root / digest[:2] / digest[2:4] / f"{digest}.dcm").write_bytes(b"old")
    new_key = store.put_file(_staged(store, b"new"), "1.2.3.12")
    assert store.exists(old_key)
    assert store.open(old_key).read() == b"old"
    assert store.size(old_key) == 3
    assert {key for key, _ in store.iter_keys()} == {old_key, new_key}
    store.delete(old_key)
    assert not store.exists(old_key)
