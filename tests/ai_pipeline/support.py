"""Helpers of the AI pipeline tests: synthetic CT series and the DICOM index.

Synthetic CT series come from `training/phantoms.py` (the demo model's own phantom generator) and
are written with pydicom as CT Image Storage files a scanner could have sent. `index_study`
stores them in the DICOM node's instance storage (`BTT_DICOM_STORAGE_DIR`, a temporary folder in
the tests) and writes the index rows the node would have written, so `ai_pipeline.services` reads
them as in production.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from django.utils import timezone
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from integrations.fhir import store
from training.phantoms import add_lesion, random_patient, render_slice, to_stored

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "fixtures" / "models" / "ct-lesion-demo"


def copy_demo_model(root: Path, folder: str = "ct-lesion-demo") -> Path:
    target = root / folder
    shutil.copytree(DEMO_MODEL, target)
    return target


def ct_series(
    *,
    slices: int = 16,
    size: int = 256,
    pixel_spacing_mm: float = 1.5,
    slice_spacing_mm: float = 3.0,
    lesion: bool = True,
    seed: int = 7,
    skip: Iterable[int] = (),
    positions: Sequence[float] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PAT-AI-1",
    accession: str = "ACC-AI-1",
    body_part: str = "ABDOMEN",
) -> list[Dataset]:
    """A synthetic axial CT series (one Dataset per slice, in slice order), HU stored with
    RescaleIntercept -1024. With `lesion`, a 12 mm, +80 HU sphere sits at the middle slice.
    `skip` drops slice indexes (missing slices); `positions` gives z positions explicitly."""
    rng = np.random.default_rng(seed)
    patient = random_patient(rng)
    zs = (
        list(positions)
        if positions is not None
        else [(i - (slices - 1) / 2) * slice_spacing_mm for i in range(slices)]
    )
    if lesion:
        patient = add_lesion(patient, rng, z_mm=0.0, radius_mm=(12.0, 12.0), contrast_hu=(80.0, 80.0))
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    skipped = set(skip)
    datasets = []
    for index, z in enumerate(zs):
        if index in skipped:
            continue
        hu = render_slice(patient, z_mm=z, size=size, spacing_mm=pixel_spacing_mm, rng=rng)
        datasets.append(
            ct_dataset(
                hu,
                z=z,
                instance_number=index + 1,
                study_uid=study_uid,
                series_uid=series_uid,
                pixel_spacing_mm=pixel_spacing_mm,
                slice_thickness_mm=slice_spacing_mm,
                patient_id=patient_id,
                accession=accession,
                body_part=body_part,
            )
        )
    return datasets


def ct_dataset(
    hu: np.ndarray,
    *,
    z: float,
    instance_number: int,
    study_uid: str,
    series_uid: str,
    pixel_spacing_mm: float = 1.5,
    slice_thickness_mm: float = 3.0,
    patient_id: str = "PAT-AI-1",
    accession: str = "ACC-AI-1",
    body_part: str = "ABDOMEN",
) -> Dataset:
    stored = to_stored(hu)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "2.25." + str(int(hashlib.sha256(study_uid.encode()).hexdigest()[:24], 16))
    ds.Modality = "CT"
    ds.BodyPartExamined = body_part
    ds.PatientID = patient_id
    ds.PatientName = "Phantom^Synthetic"
    ds.AccessionNumber = accession
    ds.StudyDate = "20240611"
    ds.StudyTime = "101500"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = 2
    half = (hu.shape[0] - 1) / 2 * pixel_spacing_mm
    ds.ImagePositionPatient = [-half, -half, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.SliceThickness = slice_thickness_mm
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = stored.tobytes()
    return ds


def write_datasets(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def index_study(datasets: Sequence[Dataset], *, calling_ae: str = "CT-SCANNER") -> str:
    """Store the files in the instance storage and index them as the DICOM node would; the Study UID."""
    from integrations.dicom.models import DicomPatient, Instance, Series, Study
    from integrations.dicom.storage import get_instance_storage

    storage = get_instance_storage()
    now = timezone.now()
    first = datasets[0]
    patient, _ = DicomPatient.objects.get_or_create(
        patient_id=str(first.PatientID), issuer="", defaults={"patient_name": str(first.PatientName)}
    )
    study, _ = Study.objects.get_or_create(
        study_instance_uid=str(first.StudyInstanceUID),
        defaults={
            "patient": patient,
            "study_date": str(first.get("StudyDate", "")),
            "study_time": str(first.get("StudyTime", "")),
            "accession_number": str(first.get("AccessionNumber", "")),
            "modalities_in_study": str(first.Modality),
            "calling_ae": calling_ae,
            "first_received_at": now - dt.timedelta(seconds=10),
            "last_received_at": now,
            "completed_at": now,
        },
    )
    with tempfile.TemporaryDirectory() as folder:
        for ds in datasets:
            series, _ = Series.objects.get_or_create(
                series_instance_uid=str(ds.SeriesInstanceUID),
                defaults={
                    "study": study,
                    "modality": str(ds.Modality),
                    "series_number": int(ds.get("SeriesNumber", 1) or 1),
                    "body_part_examined": str(ds.get("BodyPartExamined", "")),
                },
            )
            path = Path(folder) / "instance.dcm"
            ds.save_as(path, enforce_file_format=True)
            size = path.stat().st_size
            key = storage.put_file(path, str(ds.SOPInstanceUID))
            Instance.objects.create(
                sop_instance_uid=str(ds.SOPInstanceUID),
                series=series,
                sop_class_uid=str(ds.SOPClassUID),
                instance_number=int(ds.InstanceNumber) if "InstanceNumber" in ds else None,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                storage_key=key,
                file_size=size,
                received_at=now,
                calling_ae=calling_ae,
            )
            series.number_of_instances += 1
            series.save(update_fields=["number_of_instances"])
    study.number_of_instances = Instance.objects.filter(series__study=study).count()
    study.number_of_series = study.series.count()
    study.save(update_fields=["number_of_instances", "number_of_series"])
    return study.study_instance_uid


def fhir_imaging_study(study_uid: str, patient_id: str) -> str:
    """An ImagingStudy of the DICOM study `study_uid` for Patient/`patient_id`, written through the
    FHIR store as the DICOM node keeps it (identified by `urn:dicom:uid`); its id."""
    return store.create_resource(
        {
            "resourceType": "ImagingStudy",
            "status": "available",
            "subject": {"reference": f"Patient/{patient_id}"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        }
    ).stored.logical_id
