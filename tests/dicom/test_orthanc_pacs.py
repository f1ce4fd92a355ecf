"""Orthanc as a real PACS next to the node: pushes to it, is pulled from, is sent to, queries it.

Orthanc runs as its own process (tests/dicom/orthanc.py: own config, ports, storage; our node is
one of its DICOM modalities); the node is the session's `dicom_node` process, and Orthanc is a
RemoteAE in our database. The SCU calls (`integrations.dicom.scu`) run in this process, as the
`dicom_pull` / `dicom_send` commands and the Celery task run them. The study used holds one
instance per transfer syntax (pydicom's test files) and two plain CT images, so each direction
is checked for every encoding: what arrives is the data set that was sent (same bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from integrations.dicom import scu
from integrations.dicom.models import Instance, RemoteAE, Study
from tests.dicom.conftest import DicomNode
from tests.dicom.orthanc import Orthanc, start_orthanc
from tests.dicom.qr_support import (
    assert_same_instance,
    make_image,
    store,
    transfer_syntax_samples,
    uid,
    write,
)
from tests.processes import ProcessLauncher

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def orthanc(process_launcher: ProcessLauncher, dicom_node: DicomNode, tmp_path_factory) -> Iterator[Orthanc]:
    started = start_orthanc(
        process_launcher,
        tmp_path_factory.mktemp("orthanc"),
        modalities={"btt": (dicom_node.aet, dicom_node.host, dicom_node.port)},
    )
    yield started
    started.stop()


@pytest.fixture
def pacs(orthanc: Orthanc) -> Iterator[RemoteAE]:
    """Orthanc, empty, configured here as the remote AE ORTHANC (every operation allowed)."""
    orthanc.clear()
    remote = RemoteAE.objects.create(ae_title=orthanc.aet, host=orthanc.host, port=orthanc.dicom_port)
    yield remote
    orthanc.clear()


@pytest.fixture
def quiet(settings) -> None:
    """Stores made in this process queue their study-complete tasks where no worker runs them."""
    from tests.dicom.qr_support_db import QR_TEST_TASK_QUEUE

    settings.BTT_DICOM_TASK_QUEUE = QR_TEST_TASK_QUEUE


def study_files(study: str, folder: Path, patient_id: str) -> dict[str, Path]:
    """The test study as files: label -> path."""
    files = {label: write(ds, folder) for label, ds in transfer_syntax_samples(study, patient_id).items()}
    for number in (1, 2):
        ct = make_image(
            patient_id=patient_id, patient_name="Orthanc^Test", study=study, series="ct", instance=number
        )
        files[f"ct-{number}"] = write(ct, folder)
    return files


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def stored_file(instance: Instance) -> Path:
    from integrations.dicom import services

    return services.instance_file(instance.sop_instance_uid).path


def orthanc_instance_ids(orthanc: Orthanc, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> Orthanc id of the instances Orthanc holds for the study."""
    found = orthanc.find("Instance", {"StudyInstanceUID": study_uid})
    return {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in found}


def upload_study(orthanc: Orthanc, files: dict[str, Path]) -> str:
    """Upload the files into Orthanc (REST); returns the Orthanc id of their study."""
    studies = {orthanc.upload(path)["ParentStudy"] for path in files.values()}
    (study_id,) = studies
    return study_id


# --- (a) Orthanc pushes a study to the node with its own C-STORE -------------------------------------


def test_orthanc_pushes_a_study_to_the_node(
    orthanc: Orthanc, pacs: RemoteAE, dicom_node: DicomNode, tmp_path: Path
) -> None:
    files = study_files("orthanc-push", tmp_path, "ORTH-PUSH")
    orthanc_study = upload_study(orthanc, files)

    job = orthanc.store_to("btt", [orthanc_study])

    assert job["FailedInstancesCount"] == 0, job
    assert job["InstancesCount"] == len(files)
    study = Study.objects.get(study_instance_uid=uid("orthanc-push"))
    assert study.number_of_instances == len(files)
    for label, path in files.items():
        instance = Instance.objects.get(sop_instance_uid=sop_uid(path))
        assert instance.calling_ae == "ORTHANC"
        assert (
            instance.transfer_syntax_uid == dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        )
        # What Orthanc was given arrived: Orthanc (DCMTK) re-encodes it for sending (trailing
        # padding goes), the node stores what it received.
        assert_same_instance(stored_file(instance), path, label)


# --- (b) the node pulls a study out of Orthanc: C-FIND, then C-MOVE to itself ------------------------


def test_node_finds_and_moves_a_study_out_of_orthanc(
    orthanc: Orthanc, pacs: RemoteAE, dicom_node: DicomNode, tmp_path: Path
) -> None:
    files = study_files("orthanc-pull", tmp_path, "ORTH-PULL")
    upload_study(orthanc, files)

    assert scu.echo(pacs) == 0x0000
    studies = scu.find(
        pacs,
        "STUDY",
        {"PatientID": "ORTH-P*", "StudyInstanceUID": "", "PatientName": "", "ModalitiesInStudy": ""},
    )
    assert [str(ds.StudyInstanceUID) for ds in studies] == [uid("orthanc-pull")]
    series = scu.find(
        pacs, "SERIES", {"StudyInstanceUID": uid("orthanc-pull"), "SeriesInstanceUID": "", "Modality": ""}
    )
    assert len(series) == len(files) - 1  # the two CT images share a series
    patients = scu.find(pacs, "PATIENT", {"PatientID": "ORTH-PULL", "PatientName": ""})
    assert [str(ds.PatientName) for ds in patients] == ["Syntax^Samples"]

    result = scu.move(pacs, uid("orthanc-pull"))

    assert result.ok, result
    assert (result.completed, result.failed) == (len(files), 0)
    for label, path in files.items():
        instance = Instance.objects.get(sop_instance_uid=sop_uid(path))
        assert instance.calling_ae == "ORTHANC"
        assert_same_instance(stored_file(instance), path, label)


def test_node_gets_a_study_out_of_orthanc(
    orthanc: Orthanc, pacs: RemoteAE, quiet: None, tmp_path: Path
) -> None:
    files = study_files("orthanc-get", tmp_path, "ORTH-GET")
    upload_study(orthanc, files)

    result = scu.get(pacs, uid("orthanc-get"))

    assert result.ok, result
    assert result.completed == len(files)
    for label, path in files.items():
        instance = Instance.objects.get(sop_instance_uid=sop_uid(path))
        assert_same_instance(stored_file(instance), path, label)


def test_find_errors_from_orthanc_and_unreachable_peers(pacs: RemoteAE) -> None:
    with pytest.raises(scu.OperationFailed) as caught:
        scu.find(pacs, "FRAME", {"StudyInstanceUID": ""})
    assert caught.value.status >= 0xA000
    down = RemoteAE.objects.create(ae_title="DOWN", host="127.0.0.1", port=9)
    with pytest.raises(scu.AssociationFailed) as failed:
        scu.echo(down)
    assert failed.value.transient
    with pytest.raises(RemoteAE.DoesNotExist):
        scu.echo("NOT-CONFIGURED")


# --- (c) the node stores objects back into Orthanc ------------------------------------------------------


def test_node_stores_a_study_into_orthanc(
    orthanc: Orthanc, pacs: RemoteAE, quiet: None, tmp_path: Path
) -> None:
    files = study_files("orthanc-send", tmp_path, "ORTH-SEND")
    for path in files.values():
        store(dcmread(path), tmp_path / "node")

    result = scu.store(pacs, study_uid=uid("orthanc-send"))

    assert result.ok, result.as_dict()
    assert len(result.sent) == len(files)
    arrived = orthanc_instance_ids(orthanc, uid("orthanc-send"))
    assert set(arrived) == {sop_uid(path) for path in files.values()}
    (study,) = orthanc.find("Study", {"StudyInstanceUID": uid("orthanc-send")})
    assert study["PatientMainDicomTags"]["PatientID"] == "ORTH-SEND"
    for label, path in files.items():
        content = orthanc.instance_file(arrived[sop_uid(path)])
        copy = tmp_path / f"from-orthanc-{label}.dcm"
        copy.write_bytes(content)
        assert_same_instance(copy, path, label)  # intact (Orthanc re-deflates what it stores)
        assert orthanc.metadata(arrived[sop_uid(path)], "RemoteAET") == "BTTHEALTH"


def test_store_selected_instances_and_resend_is_harmless(
    orthanc: Orthanc, pacs: RemoteAE, quiet: None, tmp_path: Path
) -> None:
    files = study_files("orthanc-some", tmp_path, "ORTH-SOME")
    for path in files.values():
        store(dcmread(path), tmp_path / "node")
    chosen = [sop_uid(files["ct-1"]), sop_uid(files["rle"])]

    first = scu.store(pacs, sop_uids=[*chosen, "1.2.3.404"])
    again = scu.store(pacs.ae_title, sop_uids=chosen)

    assert sorted(first.sent) == sorted(chosen)
    assert first.failed == {"1.2.3.404": (None, "not stored on this node")}
    assert sorted(again.sent) == sorted(chosen)
    assert set(orthanc_instance_ids(orthanc, uid("orthanc-some"))) == set(chosen)


def test_send_task_runs_the_store(orthanc: Orthanc, pacs: RemoteAE, quiet: None, tmp_path: Path) -> None:
    from integrations.dicom.tasks_scu import store_to_remote

    files = study_files("orthanc-task", tmp_path, "ORTH-TASK")
    for path in files.values():
        store(dcmread(path), tmp_path / "node")

    outcome = store_to_remote.apply(args=[pacs.ae_title], kwargs={"study_instance_uid": uid("orthanc-task")})

    assert outcome.successful(), outcome.traceback
    assert outcome.result["sent"] == len(files)
    assert len(orthanc_instance_ids(orthanc, uid("orthanc-task"))) == len(files)


# --- Orthanc as the SCU: it queries the node and retrieves from it ------------------------------------


def test_orthanc_queries_and_retrieves_from_the_node(
    orthanc: Orthanc, pacs: RemoteAE, quiet: None, tmp_path: Path
) -> None:
    files = study_files("orthanc-qr", tmp_path, "ORTH-QR")
    for path in files.values():
        store(dcmread(path), tmp_path / "node")

    query = orthanc.post(
        "/modalities/btt/query", {"Level": "Study", "Query": {"PatientID": "ORTH-Q*", "StudyDescription": ""}}
    )
    answers = orthanc.get(f"/queries/{query['ID']}/answers")
    assert len(answers) == 1
    content = orthanc.get(f"/queries/{query['ID']}/answers/0/content", params={"simplify": ""})
    assert content["StudyInstanceUID"] == uid("orthanc-qr")
    assert content["RetrieveAETitle"] == "BTTHEALTH"

    # Orthanc asks the node to C-MOVE the study to Orthanc itself (a RemoteAE with allow_move).
    orthanc.post(
        f"/queries/{query['ID']}/answers/0/retrieve", {"TargetAet": orthanc.aet, "Synchronous": True}
    )

    arrived = orthanc_instance_ids(orthanc, uid("orthanc-qr"))
    assert set(arrived) == {sop_uid(path) for path in files.values()}
    copy = tmp_path / "rle-from-orthanc.dcm"
    copy.write_bytes(orthanc.instance_file(arrived[sop_uid(files["rle"])]))
    assert_same_instance(copy, files["rle"])
