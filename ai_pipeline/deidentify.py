"""De-identified copies of studies for models that run outside the hospital, and re-identification.

A routing rule marked `outside` sends its model to a worker outside the hospital. That worker must
never see identifiable data, so the model runs on a copy of the study made here by the DICOM
PS3.15 Annex E Basic Application Level Confidentiality Profile (no options):

- every attribute of PS3.15 Table E.1-1 (the 2026c edition, as tabulated by the `dicom-anonymizer`
  package, whose tables only are used) is handled per its action, at every nesting level:
  X removed, Z emptied, D replaced by a dummy value, U (UIDs) replaced; the combined actions take
  the stronger one that keeps the data set usable (Z/D → Z, X/Z, X/D, X/Z/D → X; X/Z/U* sequences
  are kept with their UIDs replaced), except Patient ID, which gets the study's pseudonym so the
  copy stays one patient;
- all private attributes are removed, as are curves (50xx) and overlay data/comments (60xx);
- UIDs are replaced consistently: the same original UID gets the same stand-in everywhere in the
  study and on every run (`2.25.` + an HMAC-SHA-256 of the UID keyed with the server's secret
  key), so the copy's series and instances keep their relations and a second run makes the same
  copy; File Meta's Media Storage SOP Instance UID follows the SOP Instance UID;
- Patient Identity Removed = YES, De-identification Method (Code Sequence: DCM 113100 "Basic
  Application Confidentiality Profile"), Longitudinal Temporal Information Modified = REMOVED;
- an instance with Burned In Annotation = YES is refused (`DeidentificationError`): the basic
  profile then requires cleaning the pixels, which this does not do, so such a study never leaves.

The mapping (original UID → stand-in, Patient ID → pseudonym) is kept in `DeidentifiedStudy`
(never sent out), so results computed on the copy are re-identified: `DeidentifiedCopy.original_uid`
maps a series or instance UID of the copy back, and the DiagnosticReport refers to the original
study and patient. The copy is written under `BTT_DEID_DIR/<stand-in study UID>/<run>/` and removed
with `DeidentifiedCopy.remove()` after the run.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
from django.conf import settings
from django.db import transaction
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from ai_pipeline import study_source
from ai_pipeline.models import DeidentifiedStudy
from ai_pipeline.preprocessing import read_dataset

PROFILE = "PS3.15 E.1.1 Basic Application Confidentiality Profile"  # LO: at most 64
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "FL": 0.0,
    "FD": 0.0,
    "UV": 0,
    "SV": 0,
}
_TEXT_VRS = {"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
PATIENT_ID = Tag(0x0010, 0x0020)
BURNED_IN_ANNOTATION = Tag(0x0028, 0x0301)


class DeidentificationError(Exception):
    """The study cannot be de-identified by the basic profile (e.g. burned-in annotations)."""


def _actions() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """Table E.1-1 as {tag: action} plus masked entries (group/element masks, e.g. 60xx,3000)."""
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for entries, action in (
        (table.D_TAGS, "D"),
        (table.Z_TAGS, "Z"),
        (table.X_TAGS, "X"),
        (table.U_TAGS, "U"),
        (table.Z_D_TAGS, "Z"),
        (table.X_Z_TAGS, "X"),
        (table.X_D_TAGS, "X"),
        (table.X_Z_D_TAGS, "X"),
        (table.X_Z_U_STAR_TAGS, "K"),  # kept; the UIDs inside are replaced (U) like any other
    ):
        for entry in entries:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                group, element, group_mask, element_mask = entry
                masked.append((group, element, group_mask, element_mask, action))
    exact[int(PATIENT_ID)] = "P"  # the study's pseudonym (Z/D in the table)
    return exact, masked


_EXACT, _MASKED = _actions()


def action_of(tag: BaseTag) -> str | None:
    """The basic profile's action for `tag` (X, Z, D, U, K, P) or None when the table does not list it."""
    found = _EXACT.get(int(tag))
    if found is not None:
        return found
    for group, element, group_mask, element_mask, action in _MASKED:
        if (tag.group & group_mask) == group and (tag.element & element_mask) == element:
            return action
    return None


def stand_in_uid(original: str) -> str:
    """The UID that replaces `original`: 2.25 + 128 bits of HMAC-SHA-256(secret key, UID)."""
    digest = hmac.new(_key(), original.encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(patient_id: str) -> str:
    digest = hmac.new(_key(), f"patient:{patient_id}".encode(), hashlib.sha256).hexdigest()
    return f"ANON-{digest[:16].upper()}"


def _key() -> bytes:
    return hashlib.sha256(f"ai_pipeline.deidentify:{settings.SECRET_KEY}".encode()).digest()


@dataclass
class _Mapper:
    """UID stand-ins, remembered so the study's mapping can be stored."""

    known: dict[str, str]
    patient_pseudonym: str
    added: dict[str, str] = field(default_factory=dict)

    def uid(self, original: str) -> str:
        original = original.strip().rstrip("\x00")
        if not original:
            return original
        if original not in self.known:
            self.known[original] = self.added[original] = stand_in_uid(original)
        return self.known[original]


def _dummy(element: DataElement) -> object:
    if element.VR in _DUMMY:
        return _DUMMY[element.VR]
    if element.VR in _TEXT_VRS:
        return DUMMY_TEXT[:16] if element.VR in ("AE", "CS", "SH") else DUMMY_TEXT
    return None


def _clean(ds: Dataset, mapper: _Mapper) -> None:
    """Apply the profile to one data set (recursively); private attributes are removed before."""
    for element in list(ds):
        action = action_of(element.tag)
        if action == "X":
            del ds[element.tag]
            continue
        if action == "Z":
            if element.VR == "SQ":
                element.value = Sequence([])
            else:
                element.value = None
            continue
        if action == "P":
            element.value = mapper.patient_pseudonym
            continue
        if element.VR == "SQ":
            for item in element.value or []:
                _clean(item, mapper)
            continue
        if action == "U" or (element.VR == "UI" and action == "D"):
            if element.VM > 1:
                element.value = [mapper.uid(str(v)) for v in element.value]
            elif element.value:
                element.value = mapper.uid(str(element.value))
            continue
        if action == "D":
            element.value = _dummy(element)


def deidentify_dataset(ds: Dataset, mapper: _Mapper) -> Dataset:
    """De-identify `ds` in place (see the module docstring) and return it."""
    if str(ds.get(BURNED_IN_ANNOTATION, DataElement(BURNED_IN_ANNOTATION, "CS", "")).value).upper() == "YES":
        raise DeidentificationError(
            f"instance {ds.get('SOPInstanceUID', '?')} has burned-in annotations (Burned In Annotation = YES); "
            "the basic profile needs its pixels cleaned, so the study is not sent outside"
        )
    ds.remove_private_tags()
    _clean(ds, mapper)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = PROFILE
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = [code]
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        # Source/Sending/Receiving AE titles name hospital systems; the Media Storage SOP Instance
        # UID gets the instance's stand-in.
        for keyword in (
            "SourceApplicationEntityTitle",
            "SendingApplicationEntityTitle",
            "ReceivingApplicationEntityTitle",
        ):
            if keyword in meta:
                delattr(meta, keyword)
        meta.MediaStorageSOPInstanceUID = str(ds.SOPInstanceUID)
    return ds


@dataclass
class DeidentifiedCopy:
    """A de-identified copy of a study on disk: what an outside worker gets."""

    record: DeidentifiedStudy
    folder: Path
    images: study_source.StudyImages  # the copy's instances (stand-in UIDs, no patient data)
    files: dict[str, Path]  # stand-in SOP Instance UID -> file

    def original_uid(self, uid: str) -> str:
        """The original UID behind a stand-in of this copy (the UID itself when it is none)."""
        return self.record.original_uid(uid) or uid

    @contextmanager
    def open_instance(self, sop_instance_uid: str) -> Iterator[BinaryIO]:
        with open(self.files[sop_instance_uid], "rb") as handle:
            yield handle

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def deidentify_study(
    images: study_source.StudyImages,
    *,
    opener: Callable[[str], contextmanager] = study_source.open_instance,
    keep: Callable[[study_source.InstanceRef], bool] = lambda ref: True,
) -> DeidentifiedCopy:
    """Write a de-identified copy of the study's instances (those `keep` accepts) and store the
    mapping; see the module docstring. DeidentificationError when an instance cannot be sent."""
    uid = images.study_instance_uid
    with transaction.atomic():
        record, _ = DeidentifiedStudy.objects.get_or_create(
            study_instance_uid=uid,
            defaults={
                "deidentified_study_uid": stand_in_uid(uid),
                "patient_pseudonym": pseudonym(images.patient_id),
                "uid_map": {uid: stand_in_uid(uid)},
            },
        )
    mapper = _Mapper(dict(record.uid_map), record.patient_pseudonym)
    folder = Path(settings.BTT_DEID_DIR) / record.deidentified_study_uid / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    refs: list[study_source.InstanceRef] = []
    try:
        for ref in images.instances:
            if not keep(ref):
                continue
            with opener(ref.sop_instance_uid) as handle:
                ds = read_dataset(handle, name=ref.sop_instance_uid)
            deidentify_dataset(ds, mapper)
            sop = str(ds.SOPInstanceUID)
            path = folder / f"{sop}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[sop] = path
            refs.append(
                study_source.InstanceRef(
                    sop_instance_uid=sop,
                    sop_class_uid=ref.sop_class_uid,
                    series_instance_uid=mapper.uid(ref.series_instance_uid),
                    modality=ref.modality,
                    body_part=ref.body_part,
                    instance_number=ref.instance_number,
                    transfer_syntax_uid=ref.transfer_syntax_uid,
                    calling_ae="",
                )
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if mapper.added:
        with transaction.atomic():
            record = DeidentifiedStudy.objects.select_for_update().get(pk=record.pk)
            # Stand-ins are derived from the UID, so concurrent runs add the same entries.
            record.uid_map = {**mapper.added, **record.uid_map}
            record.save(update_fields=["uid_map", "updated_at"])
    copy_images = study_source.StudyImages(
        study_instance_uid=record.deidentified_study_uid,
        patient_id=record.patient_pseudonym,
        issuer_of_patient_id="",
        accession_number="",
        study_date="",
        study_time="",
        calling_ae="",
        instances=refs,
    )
    return DeidentifiedCopy(record, folder, copy_images, files)
