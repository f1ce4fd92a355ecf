"""`manage.py dicom_pull` and `manage.py dicom_send` as operators run them, against Orthanc.

Each command runs as its own process on the test database and data dir; Orthanc is a real PACS
process (tests/dicom/orthanc.py) that knows the session's `dicom_node` as a modality, so a C-MOVE
pull lands in the node. Orthanc's REST API shows what arrived on its side.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from integrations.dicom.models import Instance, RemoteAE
from tests.dicom.conftest import DicomNode
from tests.dicom.orthanc import Orthanc, start_orthanc
from tests.dicom.qr_support import make_image, store, uid, write
from tests.processes import ProcessLauncher, child_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def orthanc(process_launcher: ProcessLauncher, dicom_node: DicomNode, tmp_path_factory) -> Iterator[Orthanc]:
    started = start_orthanc(
        process_launcher,
        tmp_path_factory.mktemp("orthanc-commands"),
        modalities={"btt": (dicom_node.aet, dicom_node.host, dicom_node.port)},
    )
    yield started
    started.stop()


@pytest.fixture
def pacs(orthanc: Orthanc) -> Iterator[RemoteAE]:
    orthanc.clear()
    yield RemoteAE.objects.create(ae_title=orthanc.aet, host=orthanc.host, port=orthanc.dicom_port)
    orthanc.clear()


@pytest.fixture
def manage(process_launcher: ProcessLauncher, test_database_env: dict[str, str]):
    """Run a management command in its own process; returns (exit code, stdout, stderr)."""
    from tests.dicom.qr_support_db import QR_TEST_TASK_QUEUE

    env = child_env(test_database_env, {"BTT_DICOM_TASK_QUEUE": QR_TEST_TASK_QUEUE})

    def run(*args: str) -> tuple[int, str, str]:
        result = process_launcher.manage(*args, env=env)
        return result.returncode, result.stdout, result.stderr

    return run


def images(study: str, patient_id: str, count: int = 3) -> list:
    return [
        make_image(
            patient_id=patient_id,
            patient_name="Command^Test",
            study=study,
            series="s1",
            instance=n,
            accession=f"A-{study}",
        )
        for n in range(1, count + 1)
    ]


def test_echo_find_and_pull_with_move(orthanc: Orthanc, pacs: RemoteAE, manage, tmp_path: Path) -> None:
    for ds in images("cmd-pull", "CMD-PULL"):
        orthanc.upload(write(ds, tmp_path))

    code, out, err = manage("dicom_pull", "ORTHANC", "--echo")
    assert (code, out.strip()) == (0, f"C-ECHO {pacs}: success"), err

    code, out, err = manage(
        "dicom_pull", "ORTHANC", "--find", "-k", "PatientID=CMD-*", "-k", "StudyDate=2020-"
    )
    assert code == 0, err
    assert f"StudyInstanceUID={uid('cmd-pull')}" in out
    assert "PatientName=Command^Test" in out
    assert "1 match(es) at STUDY level" in out

    code, out, err = manage(
        "dicom_pull", "ORTHANC", "--find", "--level", "SERIES", "-k", f"StudyInstanceUID={uid('cmd-pull')}"
    )
    assert code == 0, err
    assert "NumberOfSeriesRelatedInstances=3" in out

    code, out, err = manage("dicom_pull", "ORTHANC", "--study", uid("cmd-pull"))
    assert code == 0, err
    assert "3 completed, 0 failed" in out
    assert Instance.objects.filter(series__study__study_instance_uid=uid("cmd-pull")).count() == 3


def test_pull_with_get(orthanc: Orthanc, pacs: RemoteAE, manage, tmp_path: Path) -> None:
    for ds in images("cmd-get", "CMD-GET", count=2):
        orthanc.upload(write(ds, tmp_path))

    code, out, err = manage("dicom_pull", "ORTHANC", "--study", uid("cmd-get"), "--method", "get")

    assert code == 0, err
    assert "C-GET study" in out
    assert "2 completed, 0 failed" in out
    assert set(
        Instance.objects.filter(series__study__study_instance_uid=uid("cmd-get")).values_list(
            "calling_ae", flat=True
        )
    ) == {"ORTHANC"}


def test_send_study_and_instances(orthanc: Orthanc, pacs: RemoteAE, manage, settings, tmp_path: Path) -> None:
    from tests.dicom.qr_support_db import QR_TEST_TASK_QUEUE

    settings.BTT_DICOM_TASK_QUEUE = QR_TEST_TASK_QUEUE
    sent = images("cmd-send", "CMD-SEND")
    for ds in sent:
        store(ds, tmp_path)

    code, out, err = manage("dicom_send", "ORTHANC", "--study", uid("cmd-send"))
    assert code == 0, err
    assert "Sent 3 instance(s)" in out
    found = orthanc.find("Instance", {"StudyInstanceUID": uid("cmd-send")})
    assert {item["MainDicomTags"]["SOPInstanceUID"] for item in found} == {
        str(ds.SOPInstanceUID) for ds in sent
    }
    one = found[0]["ID"]
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(orthanc.instance_file(one))
    assert dcmread(copy).PixelData == sent[0].PixelData

    code, out, err = manage(
        "dicom_send", "ORTHANC", "--instance", str(sent[0].SOPInstanceUID), "--instance", "1.2.3.9"
    )
    assert code == 1
    assert "Sent 1 instance(s)" in out
    assert "1.2.3.9: not sent not stored on this node" in err


def test_unknown_remote_and_missing_arguments(manage) -> None:
    code, _, err = manage("dicom_send", "NOBODY", "--study", "1.2.3")
    assert code == 1
    assert "no remote AE 'NOBODY': add it with add_dicom_peer" in err
    code, _, err = manage("dicom_send", "NOBODY")
    assert code == 1
    assert "name what to send" in err
    code, _, err = manage("dicom_pull", "NOBODY", "--echo")
    assert code == 1
    assert "no remote AE 'NOBODY'" in err
