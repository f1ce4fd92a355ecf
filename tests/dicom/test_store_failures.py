"""Storage and database failures answer 0xA700 (out of resources) with a comment, never success,
and leave nothing indexed and no file behind.

The first tests break the real node process for real: a storage folder that cannot be created,
a database that refuses the insert (a PostgreSQL trigger). The in-process tests that follow call
`services.store_instance` directly and *mock* one failure each with monkeypatch (said in each
docstring), for the cases a live process cannot be pushed into on demand.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DatabaseError, connection

from integrations.dicom import services
from integrations.dicom.models import DicomPatient, Instance, Series, Study
from integrations.dicom.storage import FileSystemStorage, StorageError
from tests.dicom.conftest import DicomNode
from tests.dicom.store_support import make_ct, new_uid, send_file_raw, storage_files, write_part10

pytestmark = pytest.mark.django_db(transaction=True)


def _index_is_empty() -> bool:
    return not (
        Instance.objects.exists()
        or Series.objects.exists()
        or Study.objects.exists()
        or DicomPatient.objects.exists()
    )


def _root() -> Path:
    return Path(settings.BTT_DICOM_STORAGE_DIR)


def test_storage_failure_in_the_node_answers_out_of_resources(dicom_node: DicomNode, tmp_path: Path) -> None:
    """The folder the instance's file belongs in cannot be made (a file is in the way)."""
    root = _root()
    before = storage_files(root)
    sop = new_uid()
    key = FileSystemStorage.key_for(sop)
    blocker = root / key.rsplit("/", 1)[0]
    moved = blocker.with_name(blocker.name + ".moved-by-test")
    if blocker.exists():
        blocker.rename(moved)  # (other tests' files: put back afterwards)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    try:
        status = send_file_raw(
            dicom_node.host,
            dicom_node.port,
            write_part10(make_ct(sop_uid=sop), tmp_path / "a.dcm"),
            called_ae=dicom_node.aet,
        )
    finally:
        blocker.unlink()
        if moved.exists():
            moved.rename(blocker)
    assert status.Status == 0xA700  # Refused: out of resources
    assert status.ErrorComment == "out of resources: storage write failed"
    assert storage_files(root) == before, "nothing stored, nothing left behind"
    assert not list((root / "incoming").glob("*"))
    assert _index_is_empty()
    assert "storage failed" in dicom_node.log()


@pytest.fixture
def failing_instance_insert():
    """A PostgreSQL trigger that makes every INSERT into the instance table fail (committed, so the
    node's own connections hit it), dropped afterwards."""
    if connection.vendor != "postgresql":
        pytest.fail("needs PostgreSQL triggers: run the suite as scripts/test.sh does")
    table = Instance._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION btt_test_refuse_instance() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'test: instance inserts refused'; END; $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            f"CREATE TRIGGER btt_test_refuse_instance BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION btt_test_refuse_instance()"
        )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS btt_test_refuse_instance ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS btt_test_refuse_instance()")


def test_database_failure_in_the_node_answers_out_of_resources(
    dicom_node: DicomNode, failing_instance_insert: None, tmp_path: Path
) -> None:
    sop = new_uid()
    before = storage_files(_root())
    status = send_file_raw(
        dicom_node.host,
        dicom_node.port,
        write_part10(make_ct(sop_uid=sop), tmp_path / "a.dcm"),
        called_ae=dicom_node.aet,
    )
    assert status.Status == 0xA700
    assert status.ErrorComment == "out of resources: database write failed"
    assert storage_files(_root()) == before, "the file placed before the failed insert is removed"
    assert _index_is_empty(), "patient, study and series rows roll back with the instance"
    assert "test: instance inserts refused" in dicom_node.log()


def test_the_node_recovers_after_the_database_does(dicom_node: DicomNode, tmp_path: Path) -> None:
    status = send_file_raw(
        dicom_node.host,
        dicom_node.port,
        write_part10(make_ct(), tmp_path / "a.dcm"),
        called_ae=dicom_node.aet,
    )
    assert status.Status == 0x0000
    assert Instance.objects.count() == 1


# --- In-process, with one failure mocked each --------------------------------------------------------


@pytest.fixture
def storage_root(settings, tmp_path: Path) -> Path:
    settings.BTT_DICOM_STORAGE_DIR = tmp_path / "store"
    return settings.BTT_DICOM_STORAGE_DIR


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    return write_part10(make_ct(), tmp_path / "ct.dcm")


def test_disk_full_is_out_of_resources(
    storage_root: Path, ct_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mocked: `FileSystemStorage.begin_put` raises StorageError as on a full disk."""

    def full(self, temp_path, name):
        raise StorageError("storing failed: No space left on device")

    monkeypatch.setattr(FileSystemStorage, "begin_put", full)
    with pytest.raises(services.StoreRejected) as rejected:
        services.store_instance(path=ct_file, calling_ae="TEST")
    assert (rejected.value.status, rejected.value.comment) == (
        0xA700,
        "out of resources: storage write failed",
    )
    assert "No space left on device" in rejected.value.detail
    assert _index_is_empty()
    assert ct_file.exists(), "the caller's file is left alone"


def test_database_error_inside_the_transaction(
    storage_root: Path, ct_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mocked: the study-complete hook (last write of the transaction) raises DatabaseError."""
    from integrations.dicom import study_complete

    def broken(instance):
        raise DatabaseError("could not serialize access")

    monkeypatch.setattr(study_complete, "instance_stored", broken)
    with pytest.raises(services.StoreRejected) as rejected:
        services.store_instance(path=ct_file, calling_ae="TEST")
    assert rejected.value.status == 0xA700
    assert rejected.value.comment == "out of resources: database write failed"
    assert _index_is_empty()
    assert storage_files(storage_root) == set(), "the placed file is removed again"


def test_a_failing_post_commit_hook_does_not_undo_the_store(
    storage_root: Path, ct_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Mocked: queueing the study-complete check (after the commit) fails as with the broker down.
    The instance is durable and indexed, so the answer is success and the file stays."""
    from integrations.dicom import tasks

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("broker unreachable")

    monkeypatch.setattr(tasks, "queue_check", broker_down)
    with caplog.at_level(logging.ERROR):
        result = services.store_instance(path=ct_file, calling_ae="TEST")
    assert result.outcome == "stored"
    assert services.instance_file(result.instance.sop_instance_uid).path.exists()
    assert Instance.objects.count() == 1
    # Logged by the store path, or by Django when the hook was registered as robust.
    assert "broker unreachable" in caplog.text


def test_store_instance_refuses_to_run_inside_a_transaction(storage_root: Path, ct_file: Path) -> None:
    """Success is only answered after the commit: a caller's open transaction would defer it."""
    from django.db import transaction

    with transaction.atomic(), pytest.raises(RuntimeError, match="must not run inside a transaction"):
        services.store_instance(path=ct_file)
    assert _index_is_empty()


def test_consume_moves_the_file_and_a_stream_is_staged(storage_root: Path, tmp_path: Path) -> None:
    """`consume=True` moves the caller's file into the storage; a stream (with separate File Meta)
    is written behind that File Meta and stored the same way."""
    moved = write_part10(make_ct(), tmp_path / "moved.dcm")
    result = services.store_instance(path=moved, consume=True)
    assert not moved.exists()
    assert services.instance_file(result.instance.sop_instance_uid).path.exists()

    ds = make_ct()
    source = write_part10(ds, tmp_path / "stream.dcm")
    from integrations.dicom.dataset_check import read_file_meta
    from tests.dicom.store_support import dataset_bytes

    with open(source, "rb") as handle:
        handle.seek(read_file_meta(source).dataset_offset)
        streamed = services.store_instance(fileobj=handle, file_meta=ds.file_meta, calling_ae="STOW")
    stored = services.instance_file(streamed.instance.sop_instance_uid)
    assert dataset_bytes(stored.path) == dataset_bytes(source)
    assert streamed.instance.calling_ae == "STOW"
    assert not list((storage_root / "incoming").glob("*"))
