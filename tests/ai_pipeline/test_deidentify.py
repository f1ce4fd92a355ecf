"""De-identification for workers outside the hospital (PS3.15 basic profile) and re-identification.

Real DICOM files (synthetic CT slices written with pydicom, filled with identifying attributes,
private tags, overlays and nested sequences) are stored in the node's instance storage and
indexed; the copy is read back from disk and checked attribute by attribute against Table E.1-1
and byte by byte for the original identifying values.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from ai_pipeline import deidentify, preprocessing, services
from ai_pipeline.models import DeidentifiedStudy, InferenceJob, RoutingRule
from ai_pipeline.services import create_job, run_inference_for_study
from ai_pipeline.subscribers import on_study_received
from integrations.fhir import store
from tests.ai_pipeline.support import ct_series, index_study

pytestmark = pytest.mark.django_db

PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-7731-PHI",
    "PatientBirthDate": "19610214",
    "PatientAddress": "12 Harbour Road, Kingston",
    "OtherPatientIDs": "ALT-99812",
    "PatientTelephoneNumbers": "+1-555-0100",
    "AccessionNumber": "ACC-PHI-4411",
    "InstitutionName": "Saint Example Hospital",
    "InstitutionAddress": "1 Hospital Way",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Tech^Tina",
    "PerformingPhysicianName": "Wilson^James",
    "StudyID": "STUDY-PHI-17",
    "StationName": "CT-ROOM-3",
    "DeviceSerialNumber": "SN-PHI-00042",
    "StudyDescription": "CT abdomen for Jane Doe",
}


def phi_series(slices: int = 4) -> list[Dataset]:
    datasets = ct_series(slices=slices, patient_id=PHI["PatientID"], accession=PHI["AccessionNumber"])
    for index, ds in enumerate(datasets):
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL-PACS"
        ds.BurnedInAnnotation = "NO"
        block = ds.private_block(0x0009, "ACME CT", create=True)
        block.add_new(0x01, "LO", "private note: Jane Doe, bed 12")
        ds.add_new(0x60003000, "OW", b"\x01\x00" * 64)  # Overlay Data
        ds.add_new(0x60004000, "LT", "overlay comment: Jane")  # Overlay Comments
        request = Dataset()
        request.RequestedProcedureID = "RP-PHI-1"
        request.ScheduledProcedureStepID = "SPS-PHI-1"
        request.RequestingPhysician = "Cuddy^Lisa"
        ds.RequestAttributesSequence = [request]
        if index:
            reference = Dataset()
            reference.ReferencedSOPClassUID = datasets[0].SOPClassUID
            reference.ReferencedSOPInstanceUID = datasets[0].SOPInstanceUID
            ds.ReferencedImageSequence = [reference]
    return datasets


def _walk(ds: Dataset):
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def test_no_attribute_of_the_basic_profile_survives_and_uids_are_remapped(dicom_storage, settings, tmp_path):
    settings.BTT_DEID_DIR = tmp_path / "deid"
    datasets = phi_series()
    uid = index_study(datasets)
    originals = {str(ds.SOPInstanceUID): ds for ds in datasets}
    from ai_pipeline.study_source import study_images

    copy = deidentify.deidentify_study(study_images(uid))
    record = DeidentifiedStudy.objects.get(study_instance_uid=uid)
    assert len(copy.files) == len(datasets)
    original_uids = {
        uid,
        str(datasets[0].SeriesInstanceUID),
        str(datasets[0].FrameOfReferenceUID),
        *originals,
    }

    for sop, path in copy.files.items():
        raw = path.read_bytes()
        for value in [
            *PHI.values(),
            "HOSPITAL-PACS",
            "Jane",
            "RP-PHI-1",
            "SPS-PHI-1",
            "Cuddy",
            *original_uids,
        ]:
            assert value.encode() not in raw, f"{value!r} survived in {path.name}"
        ds = dcmread(path)
        original = originals[record.original_uid(sop)]
        for element in _walk(ds):
            action = deidentify.action_of(element.tag)
            assert not element.tag.is_private, element
            assert action != "X", f"{element} should have been removed"
            if action == "Z":
                assert element.is_empty, element
            if action == "U":
                assert str(element.value) not in original_uids, element
        assert "SourceApplicationEntityTitle" not in ds.file_meta
        assert 0x60003000 not in ds  # Overlay Data
        assert 0x60004000 not in ds  # Overlay Comments
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.PatientID == record.patient_pseudonym
        assert ds.PatientName == ""
        # Consistent within the study: one study, series and frame of reference; references follow.
        assert ds.StudyInstanceUID == record.deidentified_study_uid == copy.images.study_instance_uid
        assert ds.SeriesInstanceUID == deidentify.stand_in_uid(str(original.SeriesInstanceUID))
        assert ds.FrameOfReferenceUID == deidentify.stand_in_uid(str(original.FrameOfReferenceUID))
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == sop
        if "ReferencedImageSequence" in ds:
            referenced = ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert referenced in copy.files  # the stand-in of the first slice
            assert record.original_uid(referenced) == str(datasets[0].SOPInstanceUID)
        # The images are what the model needs: pixels and geometry unchanged.
        assert np.array_equal(ds.pixel_array, original.pixel_array)
        assert list(ds.ImagePositionPatient) == list(original.ImagePositionPatient)
        assert ds.Modality == "CT"
        assert ds.SOPClassUID == original.SOPClassUID

    # The mapping round-trips, is stored, and a second copy is the same copy.
    for original_uid in original_uids:
        assert record.original_uid(record.uid_map[original_uid]) == original_uid
    again = deidentify.deidentify_study(study_images(uid))
    assert sorted(again.files) == sorted(copy.files)
    assert DeidentifiedStudy.objects.count() == 1
    copy.remove()
    again.remove()
    assert not copy.folder.exists()


def test_an_instance_with_burned_in_annotations_is_not_sent_outside(dicom_storage, settings, tmp_path):
    settings.BTT_DEID_DIR = tmp_path / "deid"
    datasets = phi_series(slices=2)
    datasets[1].BurnedInAnnotation = "YES"
    uid = index_study(datasets)
    from ai_pipeline.study_source import study_images

    with pytest.raises(deidentify.DeidentificationError, match="burned-in annotations"):
        deidentify.deidentify_study(study_images(uid))
    assert list((tmp_path / "deid").rglob("*.dcm")) == []


def test_an_outside_job_sees_only_the_copy_and_its_report_is_reidentified(
    demo_model, dicom_storage, settings, tmp_path, monkeypatch
):
    """The model step of an outside job decodes only de-identified data sets (a spy wraps the real
    `decode_frames` to record what it is given; it changes nothing), and the DiagnosticReport,
    its Observations and the job refer to the original study, series, instance and patient."""
    settings.BTT_DEID_DIR = tmp_path / "deid"
    datasets = phi_series(slices=10)
    uid = index_study(datasets)
    patient = store.create_resource(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:btt-health:patient-id", "value": PHI["PatientID"]}],
        }
    ).stored.logical_id
    seen: list[Dataset] = []

    def spy(ds, **kwargs):
        seen.append(ds)
        return preprocessing.decode_frames(ds, **kwargs)

    monkeypatch.setattr(services, "decode_frames", spy)
    job, _ = create_job(uid, demo_model, outside=True)
    job = run_inference_for_study(
        uid, "ct-lesion-demo", worker="celery@outside:1", event={"fhir_patient_id": patient}
    )

    assert job.state == InferenceJob.State.SUCCEEDED, job.reason
    record = DeidentifiedStudy.objects.get(study_instance_uid=uid)
    assert len(seen) == len(datasets)
    original_sops = {str(ds.SOPInstanceUID) for ds in datasets}
    for ds in seen:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == record.patient_pseudonym
        assert ds.StudyInstanceUID == record.deidentified_study_uid
        assert str(ds.SOPInstanceUID) not in original_sops
        assert "AccessionNumber" not in ds or ds.AccessionNumber == ""
    assert list((tmp_path / "deid").rglob("*.dcm")) == []  # the copy is gone after the run

    series_uid = str(datasets[0].SeriesInstanceUID)
    assert job.findings[0]["series"] == series_uid
    assert list(job.quality) == [series_uid]
    assert job.trust["details"]["series"] == series_uid
    report = store.read_resource("DiagnosticReport", job.diagnostic_report_id).as_dict()
    assert report["identifier"][0]["value"] == f"{uid}:ct-lesion-demo:1.0.0"
    assert report["subject"] == {"reference": f"Patient/{patient}"}
    finding = store.read_resource("Observation", report["result"][0]["reference"].split("/")[1]).as_dict()
    components = {c["code"]["coding"][0]["code"]: c for c in finding["component"]}
    assert components["series"]["valueString"] == series_uid
    assert components["best-image"]["valueString"] in original_sops


def test_a_rule_can_send_a_model_outside_and_make_it_stat(demo_model):
    RoutingRule.objects.create(name="ct-outside", model_name="ct-lesion-demo", outside=True, priority="stat")
    payload = {
        "event_id": "study_received:1.2.3.4:1",
        "study_instance_uid": "1.2.3.4",
        "accession_number": "ACC-1",
        "modalities": ["CT"],
        "body_parts": [],
        "sop_class_uids": ["1.2.840.10008.5.1.4.1.1.2"],
        "calling_ae": "CT",
        "fhir_service_request_ids": [],
    }
    (job,) = on_study_received(payload)
    assert job.outside is True
    assert job.priority == "stat"
