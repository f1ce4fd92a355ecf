"""`dicom_scp` with BTT_DICOM_PROCESSES=2: one port, whose connections the parent hands to two SCP
processes in turn; concurrent associations are all stored and indexed, two by each process, a
signal stops every process cleanly, and a process that dies takes the node down with a non-zero
exit (so `serve` notices)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from integrations.dicom.models import Instance
from tests.dicom.conftest import DicomNode, run_dcmtk
from tests.dicom.store_support import make_ct, new_uid, write_part10

pytestmark = pytest.mark.django_db(transaction=True)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def _two_process_node(start_dicom_node) -> DicomNode:
    node = start_dicom_node(BTT_DICOM_PROCESSES="2")
    node.process.wait_for_log(r"dicom_scp\[1\]: serving: DICOM ")
    node.process.wait_for_log(r"dicom_scp\[2\]: serving: DICOM ")
    return node


def test_two_processes_store_concurrent_associations_on_one_port(start_dicom_node, tmp_path: Path) -> None:
    node = _two_process_node(start_dicom_node)
    assert re.search(r"dicom_scp: listening: DICOM \S+ on 127\.0\.0\.1:\d+ \(2 processes\)", node.log())
    study_uid = new_uid()
    batches = []
    for association in range(4):
        folder = tmp_path / f"a{association}"
        folder.mkdir()
        series_uid = new_uid()
        for number in range(1, 6):
            ct = make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=number)
            write_part10(ct, folder / f"{number}.dcm")
        batches.append(folder)

    def push(folder: Path) -> subprocess.CompletedProcess:
        return run_dcmtk(
            "storescu", "-aec", node.aet, "-aet", "MODALITY", node.host, str(node.port), "+sd", str(folder)
        )

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(push, batches))
    for result in results:
        assert result.returncode == 0, result.stderr
    assert Instance.objects.filter(series__study__study_instance_uid=study_uid).count() == 20
    # The parent hands the connections to the processes in turn: two associations each.
    served_by = Counter(re.findall(r" (\d+) association from MODALITY \S+ released: 5 instance", node.log()))
    children = Counter({str(pid): 2 for pid in _children(node.process.pid)})
    assert served_by == children, node.log()


def test_sigterm_stops_every_process(start_dicom_node) -> None:
    node = _two_process_node(start_dicom_node)
    children = _children(node.process.pid)
    assert len(children) == 2
    assert node.process.stop(signal.SIGTERM) == 0
    log = node.log()
    assert "dicom_scp[1]: stopped" in log
    assert "dicom_scp[2]: stopped" in log
    assert log.rstrip().endswith("dicom_scp: stopped")
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


def test_a_process_that_dies_stops_the_node_with_an_error(start_dicom_node) -> None:
    node = _two_process_node(start_dicom_node)
    first, second = _children(node.process.pid)
    os.kill(first, signal.SIGKILL)
    code = node.process.wait()
    assert code != 0
    assert f"dicom_scp: process {first} exited with code -9" in node.log()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{second}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{second}").exists(), "the other process was left running"
