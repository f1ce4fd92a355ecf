"""Where the AI pipeline gets a study's images: the DICOM node's index and instance storage.

The only module of `ai_pipeline` that touches the DICOM node. It lists the study's instances
(SOP Instance UID, series, SOP class, modality, body part, instance number) from the index
(`integrations.dicom.models`, read only) and opens each file through the node's service function
`integrations.dicom.services.instance_file(sop_uid)`, so the storage layout stays the node's
business. Should the node grow a service function listing a study's instances, only `study_images`
changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO


class StudyNotFound(Exception):
    """The study is not in the DICOM node's index (or has no instances)."""


@dataclass(frozen=True)
class InstanceRef:
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str
    body_part: str
    instance_number: int | None
    transfer_syntax_uid: str
    calling_ae: str


@dataclass(frozen=True)
class StudyImages:
    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    study_date: str
    study_time: str
    calling_ae: str
    instances: list[InstanceRef]

    def series(self) -> dict[str, list[InstanceRef]]:
        grouped: dict[str, list[InstanceRef]] = {}
        for instance in self.instances:
            grouped.setdefault(instance.series_instance_uid, []).append(instance)
        return grouped


def study_images(study_instance_uid: str) -> StudyImages:
    """The study's instances as the index has them now; StudyNotFound when it has none."""
    from integrations.dicom.models import Instance, Study

    study = Study.objects.select_related("patient").filter(study_instance_uid=study_instance_uid).first()
    if study is None:
        raise StudyNotFound(f"study {study_instance_uid} is not in the DICOM index")
    rows = (
        Instance.objects.filter(series__study=study)
        .order_by(
            "series__series_number", "series__series_instance_uid", "instance_number", "sop_instance_uid"
        )
        .values_list(
            "sop_instance_uid",
            "sop_class_uid",
            "series__series_instance_uid",
            "series__modality",
            "series__body_part_examined",
            "instance_number",
            "transfer_syntax_uid",
            "calling_ae",
        )
    )
    instances = [
        InstanceRef(
            sop, sop_class, series, (modality or "").upper(), (body or "").upper(), number, syntax, ae or ""
        )
        for sop, sop_class, series, modality, body, number, syntax, ae in rows
    ]
    if not instances:
        raise StudyNotFound(f"study {study_instance_uid} has no instances in the DICOM index")
    return StudyImages(
        study_instance_uid=study_instance_uid,
        patient_id=study.patient.patient_id,
        issuer_of_patient_id=study.patient.issuer,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_time=study.study_time,
        calling_ae=study.calling_ae,
        instances=instances,
    )


@contextmanager
def open_instance(sop_instance_uid: str) -> Iterator[BinaryIO]:
    """The stored Part 10 file of an instance, open for reading (FileNotFoundError if gone)."""
    from integrations.dicom.services import InstanceNotFound, instance_file

    try:
        handle = instance_file(sop_instance_uid).open()
    except InstanceNotFound as exc:
        raise FileNotFoundError(f"instance {sop_instance_uid} is no longer in the DICOM index") from exc
    try:
        yield handle
    finally:
        handle.close()
