"""A SOP Instance UID that is stored already: `BTT_DICOM_DUPLICATE_POLICY` keep (default) or
replace, both idempotent, also when the copies arrive at the same moment."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.conf import settings
from pydicom import dcmread

from integrations.dicom import services
from integrations.dicom.models import Instance, Series, Study
from integrations.dicom.storage import FileSystemStorage
from tests.dicom.conftest import DicomNode
from tests.dicom.store_support import (
    dataset_bytes,
    make_ct,
    new_uid,
    send_file_raw,
    storage_files,
    write_part10,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _files_of(uid: str) -> set[str]:
    """The storage files named after `uid` (its preferred key, and suffixed variants)."""
    stem = FileSystemStorage.key_for(uid)[:-4]
    return {name for name in storage_files(Path(settings.BTT_DICOM_STORAGE_DIR)) if name.startswith(stem)}


def _two_versions(tmp_path: Path, **second_changes) -> tuple[Path, Path, str]:
    sop, study, series = new_uid(), new_uid(), new_uid()
    first = write_part10(
        make_ct(sop_uid=sop, study_uid=study, series_uid=series, description="first"), tmp_path / "1.dcm"
    )
    changes = {"study_uid": study, "series_uid": series, "description": "second", **second_changes}
    second = write_part10(make_ct(sop_uid=sop, **changes), tmp_path / "2.dcm")
    return first, second, sop


def _send(node: DicomNode, path: Path) -> int:
    return send_file_raw(node.host, node.port, path, called_ae=node.aet).Status


def test_keep_answers_success_and_keeps_the_first(dicom_node: DicomNode, tmp_path: Path) -> None:
    first, second, sop = _two_versions(tmp_path)
    assert _send(dicom_node, first) == 0x0000
    stored = services.instance_file(sop)
    assert _files_of(sop) == {stored.storage_key}
    mtime = stored.path.stat().st_mtime_ns

    assert _send(dicom_node, first) == 0x0000  # the same again
    assert _send(dicom_node, second) == 0x0000  # other content, same SOP Instance UID
    again = services.instance_file(sop)
    assert again.storage_key == stored.storage_key
    assert dataset_bytes(again.path) == dataset_bytes(first)
    assert again.path.stat().st_mtime_ns == mtime
    assert _files_of(sop) == {stored.storage_key}
    assert Instance.objects.count() == 1
    assert Study.objects.get().number_of_instances == 1


def test_replace_stores_the_new_copy_and_removes_the_old(start_dicom_node, tmp_path: Path) -> None:
    node = start_dicom_node(BTT_DICOM_DUPLICATE_POLICY="replace")
    first, second, sop = _two_versions(tmp_path)
    assert _send(node, first) == 0x0000
    old_key = services.instance_file(sop).storage_key

    assert _send(node, second) == 0x0000
    replaced = services.instance_file(sop)
    assert replaced.storage_key != old_key
    assert dataset_bytes(replaced.path) == dataset_bytes(second)
    assert _files_of(sop) == {replaced.storage_key}, "the replaced file is removed"
    assert Instance.objects.count() == 1
    assert (Series.objects.get().number_of_instances, Study.objects.get().number_of_instances) == (1, 1)

    # Idempotent: the same copy again leaves one instance, one file, the same content.
    assert _send(node, second) == 0x0000
    final = services.instance_file(sop)
    assert dataset_bytes(final.path) == dataset_bytes(second)
    assert len(_files_of(sop)) == 1
    assert Instance.objects.count() == 1


def test_replace_moves_the_instance_to_its_new_series(start_dicom_node, tmp_path: Path) -> None:
    node = start_dicom_node(BTT_DICOM_DUPLICATE_POLICY="replace")
    new_series = new_uid()
    first, second, sop = _two_versions(tmp_path, series_uid=new_series)
    assert _send(node, first) == 0x0000
    assert _send(node, second) == 0x0000
    instance = Instance.objects.select_related("series__study").get(sop_instance_uid=sop)
    assert instance.series.series_instance_uid == new_series
    assert list(Series.objects.values_list("series_instance_uid", flat=True)) == [
        new_series
    ]  # the empty one is gone
    study = instance.series.study
    assert (study.number_of_series, study.number_of_instances) == (1, 1)


@pytest.mark.parametrize("policy", ["keep", "replace"])
def test_the_same_instance_from_several_senders_at_once(
    start_dicom_node, tmp_path: Path, policy: str
) -> None:
    node = start_dicom_node(BTT_DICOM_DUPLICATE_POLICY=policy)
    path = write_part10(make_ct(), tmp_path / "same.dcm")
    sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(_send(node, path))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [0x0000] * 6
    assert Instance.objects.filter(sop_instance_uid=sop).count() == 1
    stored = services.instance_file(sop)
    assert dataset_bytes(stored.path) == dataset_bytes(path)
    assert _files_of(sop) == {stored.storage_key}, "copies that lost the race are removed"
    assert Study.objects.get().number_of_instances == 1
