"""The demo data of `manage.py load_demo`: an organization, its users, patients with orders, and a
synthetic CT study sent through the real C-STORE path to a running DICOM node.

One function per step, each idempotent (run the command twice and nothing is duplicated: FHIR
resources are conditional creates on their identifiers; the CT study's UIDs derive from the
patient, so sending it again only re-sends the same instances).

The CT pixels are the demo model's synthetic phantoms (`training/phantoms.py`, numpy only): a
body-shaped phantom with a hyperdense lesion in the middle slices, which the demo model flags.
Nothing here is patient data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np
from django.conf import settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from btt_health.console import accounts
from btt_health.console.models import Organization
from integrations.fhir import store

logger = logging.getLogger(__name__)

DEMO_ORGANIZATION = "Demo Hospital"
DEMO_AE_TITLE = "DEMO-CT"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"


@dataclass(frozen=True)
class DemoPatient:
    patient_id: str
    family: str
    given: str
    birth_date: str  # YYYY-MM-DD
    gender: str
    accession: str
    priority: str  # FHIR request priority of the order
    order_code: tuple[str, str]  # LOINC code, display


DEMO_PATIENTS = (
    DemoPatient("DEMO-0001", "Demo", "Alice", "1961-03-14", "female", "DEMO-ACC-0001", "urgent",
                ("79103-8", "CT Abdomen W contrast IV")),
    DemoPatient("DEMO-0002", "Demo", "Bruno", "1948-11-02", "male", "DEMO-ACC-0002", "routine",
                ("24627-2", "CT Chest")),
    DemoPatient("DEMO-0003", "Demo", "Chiara", "1979-07-23", "female", "DEMO-ACC-0003", "stat",
                ("30799-1", "CT Head WO contrast")),
)  # fmt: skip


def _uid(*parts: str) -> str:
    """A stable UID from `parts`: 2.25 and 128 bits of their SHA-256 (PS3.5 B.2)."""
    digest = hashlib.sha256("|".join(("btt-health-demo", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _query(system: str | None, value: str) -> str:
    return urlencode([("identifier", f"{system}|{value}" if system else value)])


def ensure_patient(patient: DemoPatient, organization: Organization) -> str:
    """The FHIR Patient of `patient`, managed by `organization` (its identifier is the system the
    DICOM node uses for Patient IDs without an issuer, so the CT study links to it)."""
    system = settings.BTT_DICOM_PATIENT_ID_SYSTEM
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": patient.patient_id}],
        "name": [{"family": patient.family, "given": [patient.given]}],
        "gender": patient.gender,
        "birthDate": patient.birth_date,
        "managingOrganization": {"reference": organization.fhir_reference, "display": organization.name},
    }
    return store.create_resource(resource, if_none_exist=_query(system, patient.patient_id)).stored.logical_id


def ensure_order(patient: DemoPatient, patient_ref: str) -> str:
    """The ServiceRequest (the order) of the patient's CT, identified by its accession number."""
    system = settings.BTT_DICOM_ACCESSION_SYSTEM
    identifier: dict = {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]},
        "value": patient.accession,
    }
    if system:
        identifier["system"] = system
    resource = {
        "resourceType": "ServiceRequest",
        "identifier": [identifier],
        "status": "active",
        "intent": "order",
        "priority": patient.priority,
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}],
        "code": {"coding": [{"system": LOINC, "code": patient.order_code[0], "display": patient.order_code[1]}],
                 "text": patient.order_code[1]},
        "subject": {"reference": patient_ref},
        "authoredOn": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    return store.create_resource(resource, if_none_exist=_query(system, patient.accession)).stored.logical_id


def ct_study(patient: DemoPatient, *, slices: int = 24, size: int = 192) -> list[Dataset]:
    """A synthetic abdominal CT of `patient` (one Dataset per slice) with a lesion in the middle."""
    from training.phantoms import add_lesion, random_patient, render_slice, to_stored

    rng = np.random.default_rng(int(hashlib.sha256(patient.patient_id.encode()).hexdigest()[:8], 16))
    phantom = add_lesion(random_patient(rng), rng, z_mm=0.0, radius_mm=(12.0, 12.0), contrast_hu=(80.0, 80.0))
    study_uid = _uid(patient.patient_id, "study")
    series_uid = _uid(patient.patient_id, "series")
    spacing, thickness = 1.5, 3.0
    today = dt.date.today().strftime("%Y%m%d")
    datasets = []
    for index in range(slices):
        z = (index - (slices - 1) / 2) * thickness
        hu = render_slice(phantom, z_mm=z, size=size, spacing_mm=spacing, rng=rng)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = _uid(patient.patient_id, "image", str(index))
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = _uid(patient.patient_id, "frame")
        ds.Modality, ds.BodyPartExamined = "CT", "ABDOMEN"
        ds.PatientID = patient.patient_id
        ds.PatientName = f"{patient.family}^{patient.given}"
        ds.PatientBirthDate = patient.birth_date.replace("-", "")
        ds.PatientSex = patient.gender[:1].upper()
        ds.AccessionNumber = patient.accession
        ds.StudyDate = ds.SeriesDate = today
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.StudyDescription = patient.order_code[1]
        ds.SeriesDescription = "Axial 3 mm (synthetic phantom)"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 2, index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        half = (size - 1) / 2 * spacing
        ds.ImagePositionPatient = [-half, -half, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation, ds.PixelSpacing, ds.SliceThickness = z, [spacing, spacing], thickness
        ds.Rows, ds.Columns = hu.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = to_stored(hu).tobytes()
        datasets.append(ds)
    return datasets


class StoreFailed(RuntimeError):
    """The DICOM node did not take the study (no association, or an instance refused)."""


def send_study(datasets: list[Dataset], host: str, port: int, *, called_aet: str, calling_aet: str) -> int:
    """C-STORE `datasets` to the node at host:port in one association; the number stored."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate(host, port, ae_title=called_aet)
    if not association.is_established:
        raise StoreFailed(
            f"no association with {called_aet} at {host}:{port} (is `manage.py serve` running?)"
        )
    stored = 0
    try:
        for ds in datasets:
            status = association.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise StoreFailed(f"instance {ds.SOPInstanceUID} refused (status {code!r})")
            stored += 1
    finally:
        association.release()
    return stored


@dataclass
class DemoResult:
    organization: Organization
    clinician: tuple[str, str]
    admin: tuple[str, str]
    patients: list[tuple[DemoPatient, str, str]]  # (patient, Patient id, ServiceRequest id)
    study_instance_uid: str = ""
    instances_sent: int = 0


def load_organization_and_users(clinician_password: str, admin_password: str) -> DemoResult:
    """The demo organization, its clinician and admin logins, and the patients with their orders."""
    organization = accounts.create_organization(DEMO_ORGANIZATION, ae_titles=DEMO_AE_TITLE)
    accounts.create_user(
        "demo.clinician", clinician_password, "clinician",
        first_name="Dana", last_name="Demo (clinician)", organizations=[organization],
    )  # fmt: skip
    accounts.create_user(
        "demo.admin", admin_password, "admin", first_name="Ari", last_name="Demo (admin)",
        organizations=[organization],
    )  # fmt: skip
    patients = []
    for patient in DEMO_PATIENTS:
        patient_id = ensure_patient(patient, organization)
        order_id = ensure_order(patient, f"Patient/{patient_id}")
        patients.append((patient, patient_id, order_id))
    return DemoResult(
        organization=organization,
        clinician=("demo.clinician", clinician_password),
        admin=("demo.admin", admin_password),
        patients=patients,
    )
