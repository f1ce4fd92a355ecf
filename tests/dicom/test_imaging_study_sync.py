"""The FHIR ImagingStudy written from the DICOM index (integrations/dicom/imaging_study.py).

In-process, on PostgreSQL: index rows are written as the C-STORE path writes them, then
`sync_imaging_study` runs as the Celery tasks run it; the result is read back through the FHIR
store and the REST API.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from integrations.dicom import imaging_study
from integrations.dicom.imaging_study import imaging_study_id, sync_imaging_study, write_imaging_study
from integrations.dicom.models import DicomPatient, Study
from integrations.fhir import store
from integrations.fhir.search import find_matches
from tests.dicom.test_study_complete_support import MR_IMAGE_STORAGE, SeriesSpec, new_uid, store_instances

pytestmark = pytest.mark.django_db

ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}


def _read(logical_id: str) -> dict:
    return store.read_resource("ImagingStudy", logical_id).as_dict()


def _study(uid: str) -> Study:
    return Study.objects.get(study_instance_uid=uid)


def _patients(identifier: str) -> list[str]:
    return list(find_matches("Patient", [("identifier", identifier)]).values_list("logical_id", flat=True))


def test_imaging_study_reflects_the_index() -> None:
    uid = new_uid()
    chest = SeriesSpec(modality="CT", body_part="CHEST", count=3, number=2, description="Chest 1mm")
    other = SeriesSpec(
        modality="MR",
        body_part="ODD PART",
        count=2,
        number=1,
        sop_class_uid=MR_IMAGE_STORAGE,
        tags={"00200060": {"vr": "CS", "Value": ["L"]}},
    )
    store_instances(uid, [chest, other], accession="ACC-1", description="CT/MR study")

    logical_id = sync_imaging_study(_study(uid))

    assert logical_id == imaging_study_id(uid)
    assert _study(uid).fhir_imaging_study_id == logical_id
    resource = _read(logical_id)
    assert resource["status"] == "available"
    assert resource["identifier"] == [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
        {"type": ACSN, "value": "ACC-1"},
    ]
    assert resource["numberOfSeries"] == 2
    assert resource["numberOfInstances"] == 5
    assert [m["code"] for m in resource["modality"]] == ["CT", "MR"]
    assert resource["description"] == "CT/MR study"
    assert resource["started"] == "2024-03-05T10:15:00+00:00"
    assert resource["referrer"] == {"display": "Dr John Smith"}
    first, second = resource["series"]  # ordered by series number
    assert (first["uid"], first["number"], first["modality"]["code"]) == (other.uid, 1, "MR")
    assert first["bodySite"] == {"display": "ODD PART"}
    assert first["laterality"]["code"] == "7771000"
    assert first["numberOfInstances"] == 2
    assert second["uid"] == chest.uid
    assert second["bodySite"] == {"system": "http://snomed.info/sct", "code": "816094009", "display": "Chest"}
    assert second["description"] == "Chest 1mm"
    assert [i["number"] for i in second["instance"]] == [1, 2, 3]
    assert second["instance"][0]["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
    }
    assert first["instance"][0]["sopClass"]["code"] == f"urn:oid:{MR_IMAGE_STORAGE}"


def test_a_missing_patient_is_created_from_the_dicom_attributes() -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], patient_id="MRN-77", patient_name="Doe^Jane^Q^Ms", sex="F")

    resource = _read(sync_imaging_study(_study(uid)))

    patient_id = resource["subject"]["reference"].removeprefix("Patient/")
    patient = store.read_resource("Patient", patient_id).as_dict()
    assert patient["identifier"] == [{"system": "urn:btt-health:patient-id", "value": "MRN-77"}]
    assert patient["name"][0]["family"] == "Doe"
    assert patient["name"][0]["given"] == ["Jane", "Q"]
    assert patient["name"][0]["prefix"] == ["Ms"]
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1980-01-02"
    assert DicomPatient.objects.get(patient_id="MRN-77").fhir_patient_id == patient_id
    # A second study of the same patient links the same Patient.
    other = new_uid()
    store_instances(other, [SeriesSpec()], patient_id="MRN-77")
    assert _read(sync_imaging_study(_study(other)))["subject"] == resource["subject"]
    assert _patients("urn:btt-health:patient-id|MRN-77") == [patient_id]


def test_an_existing_patient_is_matched_by_identifier_with_the_issuer_as_oid() -> None:
    existing = store.create_resource(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.3.4.5", "value": "PAT-9"}],
            "name": [{"family": "FromTheEhr"}],
        }
    ).stored.logical_id
    # Same value under the default system: another patient, must not be chosen.
    store.create_resource(
        {"resourceType": "Patient", "identifier": [{"system": "urn:btt-health:patient-id", "value": "PAT-9"}]}
    )
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], patient_id="PAT-9", issuer="1.2.3.4.5")

    resource = _read(sync_imaging_study(_study(uid)))

    assert resource["subject"] == {"reference": f"Patient/{existing}"}
    assert _patients("urn:oid:1.2.3.4.5|PAT-9") == [existing]


def test_issuer_systems() -> None:
    patient = DicomPatient(patient_id="X", issuer="")
    assert imaging_study.patient_identifier_system(patient) == "urn:btt-health:patient-id"
    patient.issuer = "2.16.840.1.113883.3.1"
    assert imaging_study.patient_identifier_system(patient) == "urn:oid:2.16.840.1.113883.3.1"
    patient.issuer = "HOSPITAL B"
    assert imaging_study.patient_identifier_system(patient) == "urn:btt-health:issuer:HOSPITAL%20B"
    patient.issuer = "http://hospital.example/mrn"
    assert imaging_study.patient_identifier_system(patient) == "http://hospital.example/mrn"
    # The Issuer of Patient ID Qualifiers Sequence's Universal Entity ID (ISO) wins.
    patient.tags = {
        "00100024": {
            "vr": "SQ",
            "Value": [
                {"00400032": {"vr": "UT", "Value": ["1.2.3.9"]}, "00400033": {"vr": "CS", "Value": ["ISO"]}}
            ],
        }
    }
    assert imaging_study.patient_identifier_system(patient) == "urn:oid:1.2.3.9"


def test_patient_id_system_comes_from_settings(settings) -> None:
    settings.BTT_DICOM_PATIENT_ID_SYSTEM = "http://hospital.example/mrn"
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], patient_id="MRN-5")
    patient_id = _read(sync_imaging_study(_study(uid)))["subject"]["reference"].removeprefix("Patient/")
    assert _patients("http://hospital.example/mrn|MRN-5") == [patient_id]


def test_a_study_without_patient_id_gets_a_patient_of_its_own() -> None:
    first, second = new_uid(), new_uid()
    store_instances(first, [SeriesSpec()], patient_id="", patient_name="Anon^A")
    store_instances(second, [SeriesSpec()], patient_id="", patient_name="Anon^B")
    subject_1 = _read(sync_imaging_study(_study(first)))["subject"]
    subject_2 = _read(sync_imaging_study(_study(second)))["subject"]
    assert subject_1 != subject_2
    assert DicomPatient.objects.get(patient_id="").fhir_patient_id == ""


def _service_request(patient_id: str, accession: str, *, typed: bool = True) -> str:
    identifier = {"system": "urn:oid:1.2.3.99", "value": accession}
    if typed:
        identifier["type"] = ACSN
    return store.create_resource(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "identifier": [identifier],
            "subject": {"reference": f"Patient/{patient_id}"},
            "code": {"text": "CT chest"},
        }
    ).stored.logical_id


def test_based_on_the_service_request_with_the_accession_number() -> None:
    patient_id = store.create_resource(
        {"resourceType": "Patient", "identifier": [{"system": "urn:btt-health:patient-id", "value": "P-SR"}]}
    ).stored.logical_id
    order = _service_request(patient_id, "ACC-77")
    _service_request(patient_id, "ACC-78")
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], patient_id="P-SR", accession="ACC-77")

    sync = write_imaging_study(_study(uid))

    resource = _read(sync.imaging_study_id)
    assert resource["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]
    assert resource["subject"] == {"reference": f"Patient/{patient_id}"}
    assert sync.service_request_ids == (order,)
    found = find_matches("ImagingStudy", [("basedon", f"ServiceRequest/{order}")])
    assert list(found.values_list("logical_id", flat=True)) == [sync.imaging_study_id]


def test_an_order_of_the_study_patient_is_preferred_when_the_accession_is_ambiguous() -> None:
    mine = store.create_resource(
        {"resourceType": "Patient", "identifier": [{"system": "urn:btt-health:patient-id", "value": "P-A"}]}
    ).stored.logical_id
    someone_else = store.create_resource({"resourceType": "Patient"}).stored.logical_id
    order = _service_request(mine, "ACC-DUP")
    _service_request(someone_else, "ACC-DUP")
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], patient_id="P-A", accession="ACC-DUP")
    assert _read(sync_imaging_study(_study(uid)))["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]


def test_no_based_on_without_a_matching_order() -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], accession="ACC-NONE")
    resource = _read(sync_imaging_study(_study(uid)))
    assert "basedOn" not in resource
    assert {"type": ACSN, "value": "ACC-NONE"} in resource["identifier"]


def test_accession_system_from_settings(settings) -> None:
    settings.BTT_DICOM_ACCESSION_SYSTEM = "urn:oid:1.2.3.99"
    patient_id = store.create_resource({"resourceType": "Patient"}).stored.logical_id
    order = _service_request(patient_id, "ACC-S", typed=False)
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], accession="ACC-S")
    resource = _read(sync_imaging_study(_study(uid)))
    assert {"type": ACSN, "system": "urn:oid:1.2.3.99", "value": "ACC-S"} in resource["identifier"]
    assert resource["basedOn"] == [{"reference": f"ServiceRequest/{order}"}]


def test_resync_writes_no_version_when_nothing_changed_and_one_when_instances_arrive() -> None:
    uid = new_uid()
    spec = SeriesSpec(count=3)
    store_instances(uid, [spec])
    first = write_imaging_study(_study(uid))
    again = write_imaging_study(_study(uid))
    assert (first.written, first.version_id) == (True, 1)
    assert (again.written, again.version_id) == (False, 1)

    spec.count = 1
    store_instances(uid, [spec], first_number=4)
    grown = write_imaging_study(_study(uid))

    assert (grown.written, grown.version_id) == (True, 2)
    resource = _read(grown.imaging_study_id)
    assert resource["numberOfInstances"] == 4
    assert resource["series"][0]["numberOfInstances"] == 4


def test_an_imaging_study_made_elsewhere_with_the_study_uid_is_taken_over() -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec()])
    patient_id = store.create_resource({"resourceType": "Patient"}).stored.logical_id
    theirs = store.create_resource(
        {
            "resourceType": "ImagingStudy",
            "status": "registered",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
            "subject": {"reference": f"Patient/{patient_id}"},
        }
    ).stored.logical_id
    assert sync_imaging_study(_study(uid)) == theirs
    assert _read(theirs)["status"] == "available"


def test_started_uses_the_timezone_offset_or_the_configured_zone(settings) -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], study_tags={"00080201": {"vr": "SH", "Value": ["+0200"]}})
    assert _read(sync_imaging_study(_study(uid)))["started"] == "2024-03-05T10:15:00+02:00"

    settings.BTT_DICOM_TIME_ZONE = "Europe/Berlin"
    other = new_uid()
    store_instances(other, [SeriesSpec()], study_time="101500.250")
    assert _read(sync_imaging_study(_study(other)))["started"] == "2024-03-05T10:15:00.250+01:00"


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20240305", "", "2024-03-05"),
        ("20240305", "1015", "2024-03-05T10:15:00+00:00"),
        ("20240230", "101500", None),
        ("", "101500", None),
        ("20240305", "25", "2024-03-05"),
    ],
)
def test_dicom_datetime(date: str, time: str, expected: str | None) -> None:
    assert imaging_study.dicom_datetime(date, time) == expected


def test_readable_and_searchable_through_the_fhir_api(api_client) -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec(count=2)], accession="ACC-REST")
    logical_id = sync_imaging_study(_study(uid))

    read = api_client.get(f"/fhir/ImagingStudy/{logical_id}")
    assert read.status_code == 200
    assert read.json()["numberOfInstances"] == 2

    found = api_client.get("/fhir/ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{uid}"})
    assert found.status_code == 200
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [logical_id]
    patient = read.json()["subject"]["reference"]
    by_patient = api_client.get("/fhir/ImagingStudy", {"patient": patient, "modality": "CT"})
    assert [e["resource"]["id"] for e in by_patient.json()["entry"]] == [logical_id]


@pytest.mark.django_db(transaction=True)
def test_concurrent_studies_of_a_new_patient_make_one_patient() -> None:
    if connection.vendor != "postgresql":
        pytest.fail("needs PostgreSQL (concurrent writers): run the suite as scripts/test.sh does")
    uids = [new_uid() for _ in range(4)]
    for uid in uids:
        store_instances(uid, [SeriesSpec(count=1)], patient_id="RACE-1")
    barrier = threading.Barrier(len(uids))
    errors: list[BaseException] = []
    subjects: list[str] = []

    def sync(uid: str) -> None:
        try:
            barrier.wait(timeout=10)
            subjects.append(_read(sync_imaging_study(_study(uid)))["subject"]["reference"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sync, args=(uid,)) for uid in uids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(set(subjects)) == 1
    assert len(_patients("urn:btt-health:patient-id|RACE-1")) == 1
