"""AI results as DICOM: a Comprehensive 3D SR (TID 1500) per report, stored in the node and sent to
the PACS. The SR is read back with highdicom and pydicom; the PACS is a real Orthanc
(tests/dicom/orthanc.py) receiving it from the session's real Celery worker
(`celery_worker_process`: inference, then the SR, then the C-STORE task `dicom.store_to_remote`)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pytest
import redis
from django.conf import settings as django_settings
from django.db import transaction
from pydicom import dcmread

from ai_pipeline import dicom_results
from ai_pipeline.models import AIModel, InferenceJob, RoutingRule
from ai_pipeline.registry import sync_registry
from ai_pipeline.services import create_job, run_inference_for_study
from ai_pipeline.tasks import queue_inference
from integrations.dicom.models import Instance, RemoteAE
from integrations.dicom.services import instance_file
from tests.ai_pipeline.support import ct_series, index_study
from tests.dicom.orthanc import Orthanc, start_orthanc
from tests.processes import ProcessLauncher, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def model() -> AIModel:
    result = sync_registry()
    assert result.ok, result.refused
    return AIModel.objects.get(name="ct-lesion-demo")


@pytest.fixture
def void_queues(settings) -> Iterator[None]:
    """Tasks this process queues (the SR export, study-complete checks) go where no worker reads,
    so the test drives the steps itself; the queues are removed afterwards."""
    names = [f"pytest-ai-void-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    settings.BTT_INFERENCE_QUEUE, settings.BTT_DICOM_TASK_QUEUE = names
    yield
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.delete(*names, *[f"{name}\x06\x16{step}" for name in names for step in (3, 6, 9)])


def _groups(sr) -> list:
    return list(sr.ContentSequence[-1].ContentSequence)  # Imaging Measurements → measurement groups


def test_a_report_becomes_a_tid1500_sr_stored_in_the_node_once(model: AIModel, void_queues: None) -> None:
    rule = RoutingRule.objects.create(name="ct-sr", model_name="ct-lesion-demo", dicom_sr=True)
    datasets = ct_series(slices=10, lesion=True, patient_id="PAT-SR-1", accession="ACC-SR-1")
    uid = index_study(datasets)
    with transaction.atomic():
        create_job(uid, model, routing_rule=rule)
    job = run_inference_for_study(uid, "ct-lesion-demo", worker="celery@sr-test:1", routing_rule=rule)
    assert job.state == InferenceJob.State.SUCCEEDED, job.reason
    finding = job.findings[0]
    assert finding["positive"] is True

    done = dicom_results.export_dicom_results(job.pk)

    series_uid, sop_uid = dicom_results.sr_uids(job)
    assert done == {"job": job.pk, "sr": sop_uid, "stored": "stored", "sent_to": []}
    instance = Instance.objects.get(sop_instance_uid=sop_uid)
    assert instance.sop_class_uid == COMPREHENSIVE_3D_SR
    assert instance.series.series_instance_uid == series_uid
    assert instance.series.study.study_instance_uid == uid  # in the original study
    assert instance.series.modality == "SR"
    stored = dcmread(instance_file(sop_uid).path)
    assert stored.PatientID == "PAT-SR-1"
    assert stored.AccessionNumber == "ACC-SR-1"
    assert stored.CompletionFlag == "PARTIAL"
    assert stored.VerificationFlag == "UNVERIFIED"
    assert stored.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = stored.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert len(evidence.ReferencedSOPSequence) == len(datasets)

    sr = hd.sr.Comprehensive3DSR.from_dataset(stored)
    (group,) = _groups(sr)
    items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
    assert items["synthetic-lesion"].ConceptCodeSequence[0].CodeValue == "52101004"  # Present
    probability = items["probability"].MeasuredValueSequence[0].NumericValue
    assert float(probability) == pytest.approx(100 * finding["probability"], abs=0.01)
    assert float(items["trust-score"].MeasuredValueSequence[0].NumericValue) == pytest.approx(job.trust_score)
    source = items["121112"]  # DCM Source of Measurement: the image with the highest probability
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == finding["best_image"]
    assert finding["best_image"] in {str(ds.SOPInstanceUID) for ds in datasets}

    again = dicom_results.export_dicom_results(job.pk)
    assert again["stored"] == "existed"
    assert Instance.objects.filter(sop_instance_uid=sop_uid).count() == 1
    assert InferenceJob.objects.get(pk=job.pk).dicom_results["sr_sop_instance_uid"] == sop_uid


@pytest.fixture(scope="module")
def orthanc(process_launcher: ProcessLauncher, tmp_path_factory) -> Iterator[Orthanc]:
    started = start_orthanc(process_launcher, tmp_path_factory.mktemp("orthanc-ai"))
    yield started
    started.stop()


def test_the_sr_reaches_the_pacs_by_c_store(
    model: AIModel, orthanc: Orthanc, celery_worker_process, tmp_path: Path
) -> None:
    """The worker runs the job, writes the SR, stores it in the node and sends it to Orthanc."""
    orthanc.clear()
    RemoteAE.objects.create(ae_title=orthanc.aet, host=orthanc.host, port=orthanc.dicom_port)
    rule = RoutingRule.objects.create(
        name="ct-sr-to-pacs", model_name="ct-lesion-demo", dicom_sr=True, result_destinations=orthanc.aet
    )
    datasets = ct_series(slices=8, lesion=False, patient_id="PAT-SR-PACS", accession="ACC-SR-PACS")
    uid = index_study(datasets)
    with transaction.atomic():
        job, _ = create_job(uid, model, routing_rule=rule)
        transaction.on_commit(lambda: queue_inference(job.pk))
    _, sop_uid = dicom_results.sr_uids(job)

    def arrived() -> list:
        return orthanc.find("Instance", {"SOPInstanceUID": sop_uid})

    found = wait_until(arrived, 120, f"the SR in Orthanc (worker log: {celery_worker_process.log_path})", 0.5)
    received = dcmread(io.BytesIO(orthanc.instance_file(found[0]["ID"])))
    assert received.SOPClassUID == COMPREHENSIVE_3D_SR
    assert received.StudyInstanceUID == uid
    assert received.PatientID == "PAT-SR-PACS"
    sr = hd.sr.Comprehensive3DSR.from_dataset(received)
    (group,) = _groups(sr)
    items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
    assert items["synthetic-lesion"].ConceptCodeSequence[0].CodeValue == "2667000"  # Absent
    job = InferenceJob.objects.get(pk=job.pk)
    assert job.dicom_results["sent_to"] == [orthanc.aet]
    assert job.dicom_results["sr_sop_instance_uid"] == sop_uid
