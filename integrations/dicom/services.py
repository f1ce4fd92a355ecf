"""The DICOM node's business operations: store, delete and look up instances; manage peers.

Every function here is what the DICOM handlers (`scp_store.py`), DICOMweb views, Celery tasks and
management commands call; they stay thin. One function per operation, each atomic.

Storing (`store_instance`) - the ingest path:

1. the received file (a DICOM Part 10 file: preamble, File Meta Information, the data set exactly
   as the sender encoded it) is checked structurally (`dataset_check`: truncation, invalid VRs)
   and its header read with pydicom, stopping before the pixel data and keeping only the indexed
   attributes - the data set is never decoded and re-encoded, and large instances are never held
   in memory;
2. it is validated (UIDs present, SOP class and instance matching the request / File Meta);
3. the file is moved into the instance storage (`storage.py`) under a key derived from its SOP
   Instance UID, and made durable (fsync of the file and its folder): right before the index
   statement on the usual path, in the background while the ORM path writes;
4. the index: Patient (matched by Patient ID + Issuer of Patient ID), Study, Series and Instance,
   the counters, and study-complete detection's per-instance update (`study_complete`), which
   schedules the completion check and the FHIR ImagingStudy upkeep on commit. For an instance of
   a series already indexed that is one SQL statement on PostgreSQL, sent once the fsync is done
   and committed by itself; otherwise one durable transaction (never nested in a caller's) that
   waits for the fsync before it commits. Either way the index never names a file that is not
   durable;
5. only then does it return: the caller (the C-STORE handler) answers success.

A failure at any step answers a failure, never success: `StoreRejected` carries the DIMSE status
and an error comment (0xC000-range "cannot understand" for bad data, 0xA900 for a SOP class
mismatch, 0xA700 "out of resources" when storage or the database fail). A file placed before a
failed database write is removed again, so nothing half-stored is ever indexed or left behind.

Duplicates (a SOP Instance UID already indexed) follow `BTT_DICOM_DUPLICATE_POLICY`: `keep` (the
default) keeps the stored instance and answers success without storing again; `replace` stores the
new file, points the index at it (moving the instance if its study or series changed) and removes
the old file after the commit. Both are idempotent: sending the same instance again changes
nothing visible.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag

from btt_health import prepared
from integrations.dicom import raw_values, study_complete
from integrations.dicom.dataset_check import (
    FileLayout,
    MalformedDataset,
    check_part10_file,
    read_file_meta,
    tag_str,
)
from integrations.dicom.models import DicomPatient, Instance, RemoteAE, Series, Study
from integrations.dicom.storage import InstanceStorage, PendingPut, StorageError, get_instance_storage

logger = logging.getLogger(__name__)

# --- DIMSE statuses of the Storage Service Class (PS3.4 B.2.3, PS3.7 C) -----------------------
SUCCESS = 0x0000
REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
REFUSED_NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# "Error: cannot understand" (0xCxxx); the low bits say what, the error comment says exactly what.
CANNOT_UNDERSTAND = 0xC000  # not a readable DICOM data set (malformed, truncated)
CANNOT_UNDERSTAND_INVALID_VR = 0xC001  # an explicit VR that is no VR of PS3.5
CANNOT_UNDERSTAND_MISSING_UID = 0xC002  # a required UID missing or unusable
CANNOT_UNDERSTAND_UID_MISMATCH = 0xC003  # SOP Instance UID of the data set differs from the request

_ERROR_COMMENT_MAX = 64  # Error Comment (0000,0902) is LO


class StoreRejected(Exception):
    """The instance was not stored. `status` is the DIMSE status to answer, `comment` its error
    comment (at most 64 characters; `detail` has the whole story for the log), `tag` the
    offending element when one is to blame."""

    def __init__(self, status: int, comment: str, *, detail: str = "", tag: int | None = None) -> None:
        self.status = status
        self.comment = comment[:_ERROR_COMMENT_MAX]
        self.detail = detail or comment
        self.tag = tag
        super().__init__(f"0x{status:04X} {self.detail}")


class InstanceNotFound(Exception):
    """No instance with that SOP Instance UID is indexed."""


class StoreResult:
    """A stored (or kept) instance. `outcome`: 'stored', 'replaced' or 'duplicate' (already
    indexed, kept under the `keep` policy: nothing was written); `instance`, the Instance row
    (for the usual case built on first use from what the index statement returned, with its
    series and study attached: the C-STORE handler never looks at it); `status`, the DIMSE
    status answered. Not to be changed."""

    __slots__ = ("_instance", "_load", "outcome", "status")

    def __init__(
        self,
        outcome: str,
        instance: Instance | None = None,
        status: int = SUCCESS,
        *,
        load: Callable[[], Instance] | None = None,
    ) -> None:
        self.outcome = outcome
        self.status = status
        self._instance = instance
        self._load = load

    @property
    def instance(self) -> Instance:
        if self._instance is None and self._load is not None:
            self._instance, self._load = self._load(), None
        return self._instance

    def __repr__(self) -> str:
        return f"StoreResult({self.outcome!r}, status=0x{self.status:04X})"


# --- What each level of the index keeps (DICOM JSON in `tags`; no bulk data) -------------------
PATIENT_TAGS = (
    0x00100010,  # Patient's Name
    0x00100020,  # Patient ID
    0x00100021,  # Issuer of Patient ID
    0x00100024,  # Issuer of Patient ID Qualifiers Sequence
    0x00100030,  # Patient's Birth Date
    0x00100032,  # Patient's Birth Time
    0x00100040,  # Patient's Sex
    0x00101000,  # Other Patient IDs (retired, still sent)
    0x00101001,  # Other Patient Names
    0x00101002,  # Other Patient IDs Sequence
    0x00102160,  # Ethnic Group
    0x00104000,  # Patient Comments
)
STUDY_TAGS = (
    0x00080020,  # Study Date
    0x00080030,  # Study Time
    0x00080050,  # Accession Number
    0x00080051,  # Issuer of Accession Number Sequence
    0x00080090,  # Referring Physician's Name
    0x00080201,  # Timezone Offset From UTC
    0x00081030,  # Study Description
    0x00081032,  # Procedure Code Sequence
    0x00081060,  # Name of Physician(s) Reading Study
    0x00081080,  # Admitting Diagnoses Description
    0x00101010,  # Patient's Age
    0x00101020,  # Patient's Size
    0x00101030,  # Patient's Weight
    0x0020000D,  # Study Instance UID
    0x00200010,  # Study ID
    0x00321060,  # Requested Procedure Description
)
SERIES_TAGS = (
    0x00080021,  # Series Date
    0x00080031,  # Series Time
    0x00080060,  # Modality
    0x00080070,  # Manufacturer
    0x00080080,  # Institution Name
    0x00081010,  # Station Name
    0x0008103E,  # Series Description
    0x00081050,  # Performing Physician's Name
    0x00081070,  # Operators' Name
    0x00081090,  # Manufacturer's Model Name
    0x00180015,  # Body Part Examined
    0x00181030,  # Protocol Name
    0x0020000E,  # Series Instance UID
    0x00200011,  # Series Number
    0x00200060,  # Laterality
    0x00400244,  # Performed Procedure Step Start Date
    0x00400245,  # Performed Procedure Step Start Time
    0x00400275,  # Request Attributes Sequence
)
INSTANCE_TAGS = (
    0x00080005,  # Specific Character Set
    0x00080008,  # Image Type
    0x00080012,  # Instance Creation Date
    0x00080013,  # Instance Creation Time
    0x00080016,  # SOP Class UID
    0x00080018,  # SOP Instance UID
    0x00080022,  # Acquisition Date
    0x00080023,  # Content Date
    0x0008002A,  # Acquisition DateTime
    0x00080032,  # Acquisition Time
    0x00080033,  # Content Time
    0x00180050,  # Slice Thickness
    0x00200012,  # Acquisition Number
    0x00200013,  # Instance Number
    0x00200032,  # Image Position (Patient)
    0x00200037,  # Image Orientation (Patient)
    0x00201041,  # Slice Location
    0x00280002,  # Samples per Pixel
    0x00280004,  # Photometric Interpretation
    0x00280008,  # Number of Frames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280030,  # Pixel Spacing
    0x00280100,  # Bits Allocated
    0x00280101,  # Bits Stored
    0x00280103,  # Pixel Representation
    0x00281050,  # Window Center
    0x00281051,  # Window Width
    0x00281052,  # Rescale Intercept
    0x00281053,  # Rescale Slope
    0x0040A043,  # Concept Name Code Sequence (SR document title)
    0x0040A491,  # Completion Flag
    0x0040A493,  # Verification Flag
)
_HEADER_TAGS = sorted(set(PATIENT_TAGS + STUDY_TAGS + SERIES_TAGS + INSTANCE_TAGS))
_HEADER_TAG_SET = frozenset(_HEADER_TAGS)

# PS3.5 9.1 allows digits and dots only; senders get that wrong (letters, leading zeros) and such
# instances are still stored. What cannot be indexed is refused: over 64 characters, spaces,
# backslashes, control or non-ASCII characters.
_UID_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e]+$")


# --- Storing ---------------------------------------------------------------------------------------


def store_instance(
    *,
    path: Path | str | None = None,
    fileobj: BinaryIO | None = None,
    file_meta: FileMetaDataset | None = None,
    calling_ae: str = "",
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
    consume: bool = False,
) -> StoreResult:
    """Store one DICOM instance exactly as received and index it; see the module docstring.

    The instance comes as one of:

    - `path`: a DICOM Part 10 file on disk (what pynetdicom writes for a C-STORE with
      `STORE_RECV_CHUNKED_DATASET`). With `consume=True` the file is moved into the storage
      (renamed when on the same file system) and is gone afterwards if stored; otherwise it
      is copied and left alone;
    - `fileobj`: a readable binary stream of a Part 10 file (DICOMweb STOW-RS), or, with
      `file_meta`, a stream of the encoded data set alone (no preamble, no File Meta), which is
      then written behind that File Meta Information (it needs TransferSyntaxUID,
      MediaStorageSOPClassUID, MediaStorageSOPInstanceUID). Streams are copied to a staging
      file in chunks, never read whole into memory.

    `calling_ae` is recorded on the instance (and the study). `expected_sop_class_uid` /
    `expected_sop_instance_uid` are what the request announced (the C-STORE command's Affected
    SOP Class / Instance UID); they default to the File Meta Information's Media Storage UIDs.

    Returns a `StoreResult` once the file is durable and the index committed. Raises
    `StoreRejected(status, comment)` otherwise, with nothing indexed and no file left behind.
    Must not run inside a caller's transaction (the commit has to happen before success is
    answered): it raises RuntimeError there.
    """
    storage = get_instance_storage()
    staged: Path | None = None
    try:
        if path is None:
            if fileobj is None:
                raise ValueError("store_instance needs a path or a fileobj")
            staged = _stage_stream(fileobj, file_meta, storage.staging_dir())
            source, movable = staged, True
        else:
            source, movable = Path(path), consume
        return _store_file(
            storage, source, movable, calling_ae, expected_sop_class_uid, expected_sop_instance_uid
        )
    finally:
        if staged is not None:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()


def _stage_stream(fileobj: BinaryIO, file_meta: FileMetaDataset | None, folder: Path) -> Path:
    try:
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix="in-", suffix=".dcm", delete=False)  # noqa: SIM115
    except OSError as exc:
        raise StoreRejected(
            OUT_OF_RESOURCES, "out of resources: could not stage the data", detail=str(exc)
        ) from exc
    staged = Path(handle.name)
    try:
        with handle:
            if file_meta is not None:
                handle.write(b"\x00" * 128 + b"DICM")
                try:
                    write_file_meta_info(handle, FileMetaDataset(file_meta), enforce_standard=True)
                except (ValueError, AttributeError, TypeError) as exc:
                    raise StoreRejected(CANNOT_UNDERSTAND, f"unusable File Meta Information: {exc}") from None
            shutil.copyfileobj(fileobj, handle, 1024 * 1024)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise StoreRejected(
            OUT_OF_RESOURCES, "out of resources: could not stage the data", detail=str(exc)
        ) from exc
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return staged


class _Header:
    """What the index needs from one instance, read from its header: the file's layout, the four
    UIDs, and the indexed attributes, as captured by the structural check (`values`) or, where it
    could not take them as they are, as pydicom read them (`dataset`, also made on demand from
    the captured values for what `raw_values` does not decode)."""

    def __init__(self, layout: FileLayout, dataset: Dataset | None = None) -> None:
        self.layout = layout
        self._dataset = dataset
        # Captured encoded values (tag -> (VR or None when implicit, bytes)); empty when the
        # header came from dcmread (`dataset` given).
        self.captured = dataset is None
        self.values: dict[int, tuple[str | None, bytes]] = layout.captured if self.captured else {}
        self.ascii_text = raw_values.ascii_charset(self.values.get(0x00080005, (None, None))[1])
        self.sop_class_uid = ""
        self.sop_instance_uid = ""
        self.study_instance_uid = ""
        self.series_instance_uid = ""

    @property
    def dataset(self) -> Dataset:
        """The indexed attributes as a pydicom data set (of raw elements, converted on first use)."""
        if self._dataset is None:
            self._dataset = _dataset_of(self.layout)
        return self._dataset

    def text(self, tag: int) -> str:
        """`_text(self.dataset, tag)`, without pydicom for a plain UID."""
        captured = self.values.get(tag)
        if captured is not None:
            vr = raw_values.element_vr(tag, captured[0])
            if vr == "UI":
                text = raw_values.uid_text(captured[1])
                if text is not None:
                    return text
        elif self.captured:
            return ""  # not in the data set
        return _text(self.dataset, tag)

    def integer(self, tag: int) -> int | None:
        """`_int(self.dataset, tag)`, without pydicom for one plain IS integer."""
        captured = self.values.get(tag)
        if captured is not None and raw_values.element_vr(tag, captured[0]) == "IS":
            number = raw_values.plain_integer(captured[1])
            if number is not None:
                return number if -(2**31) <= number < 2**31 else None
        elif captured is None and self.captured:
            return None  # not in the data set
        return _int(self.dataset, tag)

    def json(self, tags: Iterable[int]) -> dict:
        """`_json(self.dataset, tags)`: each element's DICOM JSON from its encoded value
        (`raw_values.element_json`) where that module reproduces pydicom's, else pydicom's."""
        if not self.captured:
            return _json(self.dataset, tags)
        result: dict = {}
        little = self.layout.is_little_endian
        for tag in tags:
            captured = self.values.get(tag)
            if captured is None:
                continue
            vr = raw_values.element_vr(tag, captured[0])
            converted = (
                raw_values.element_json(vr, captured[1], little, self.ascii_text) if vr is not None else None
            )
            if converted is None:
                converted = _json(self.dataset, (tag,)).get(f"{tag:08X}")
                if converted is None:
                    continue  # pydicom cannot convert it either: left out
            result[f"{tag:08X}"] = converted
        return result


def read_header(path: Path) -> _Header:
    """Check the file and read the indexed attributes; raise `StoreRejected` for bad data."""
    try:
        layout = check_part10_file(path, capture=_HEADER_TAG_SET)
    except MalformedDataset as exc:
        status = CANNOT_UNDERSTAND_INVALID_VR if exc.kind == "invalid-vr" else CANNOT_UNDERSTAND
        raise StoreRejected(status, exc.message, tag=exc.tag) from None
    except OSError as exc:
        raise StoreRejected(
            OUT_OF_RESOURCES, "out of resources: cannot read the received data", detail=str(exc)
        ) from exc
    if layout.captured is not None:
        header = _Header(layout)
    else:
        try:
            header = _Header(layout, dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS))
        except Exception as exc:  # pydicom raises many types for unreadable data
            raise StoreRejected(CANNOT_UNDERSTAND, f"unreadable data set: {exc}") from None
    uids = []
    for tag, name in (
        (0x00080016, "SOP Class UID"),
        (0x00080018, "SOP Instance UID"),
        (0x0020000D, "Study Instance UID"),
        (0x0020000E, "Series Instance UID"),
    ):
        value = header.text(tag)
        if not value:
            raise StoreRejected(CANNOT_UNDERSTAND_MISSING_UID, f"missing {name} {tag_str(tag)}", tag=tag)
        if len(value) > 64 or not _UID_RE.match(value):
            raise StoreRejected(
                CANNOT_UNDERSTAND_MISSING_UID,
                f"invalid {name} {tag_str(tag)}",
                detail=f"invalid {name} {tag_str(tag)}: {value[:80]!r} (at most 64 characters, no spaces)",
                tag=tag,
            )
        uids.append(value)
    header.sop_class_uid, header.sop_instance_uid, header.study_instance_uid, header.series_instance_uid = (
        uids
    )
    return header


def _dataset_of(layout: FileLayout) -> Dataset:
    """The indexed attributes the structural check captured, as a pydicom data set of raw
    elements (converted on first use, as `dcmread` leaves them), without reading the file again."""
    dataset = Dataset()
    implicit, little = layout.is_implicit_vr, layout.is_little_endian
    for tag, (vr, value) in layout.captured.items():
        dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, little)
    dataset.set_original_encoding(implicit, little)
    return dataset


def _validate(
    header: _Header, expected_sop_class_uid: str | None, expected_sop_instance_uid: str | None
) -> None:
    layout = header.layout
    sop_class = expected_sop_class_uid or layout.media_storage_sop_class_uid
    sop_instance = expected_sop_instance_uid or layout.media_storage_sop_instance_uid
    if sop_class and sop_class != header.sop_class_uid:
        raise StoreRejected(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID of the data set differs from the request",
            detail=f"data set SOP Class UID {header.sop_class_uid} but the request says {sop_class}",
            tag=0x00080016,
        )
    if sop_instance and sop_instance != header.sop_instance_uid:
        raise StoreRejected(
            CANNOT_UNDERSTAND_UID_MISMATCH,
            "SOP Instance UID of the data set differs from the request",
            detail=f"data set SOP Instance UID {header.sop_instance_uid} but the request says {sop_instance}",
            tag=0x00080018,
        )


def _store_file(
    storage: InstanceStorage,
    source: Path,
    movable: bool,
    calling_ae: str,
    expected_sop_class_uid: str | None,
    expected_sop_instance_uid: str | None,
) -> StoreResult:
    _check_outside_transactions()
    header = read_header(source)
    _validate(header, expected_sop_class_uid, expected_sop_instance_uid)
    policy = settings.BTT_DICOM_DUPLICATE_POLICY
    uid = header.sop_instance_uid

    # A resent instance under the keep policy: nothing to write. (On PostgreSQL the index
    # statement finds it anyway, so the extra query is saved for the usual, new instance.)
    if policy == "keep" and transaction.get_connection().vendor != "postgresql":
        existing = _existing_instance(uid)
        if existing is not None:
            logger.info(
                "C-STORE %s from %s: already stored, kept (duplicate policy keep)", uid, calling_ae or "-"
            )
            return StoreResult("duplicate", existing)

    try:
        # The file goes into place now; `_index` makes it durable (fsync) before the index
        # names it.
        pending = storage.begin_put(source, uid) if movable else _put_copy(storage, source, uid)
    except (StorageError, OSError) as exc:
        logger.error("C-STORE %s from %s: storage failed: %s", uid, calling_ae or "-", exc)
        raise StoreRejected(
            OUT_OF_RESOURCES, "out of resources: storage write failed", detail=str(exc)
        ) from exc
    key = pending.key

    outcome = _IndexOutcome()
    try:
        for attempt in (1, 2):
            try:
                _index(
                    header,
                    key,
                    calling_ae,
                    policy,
                    outcome,
                    look_for_existing=policy == "replace" or attempt == 2,
                    wait_durable=pending.wait,
                    start_durable=pending.start,
                )
                break
            except IntegrityError:
                # Another association indexed the same SOP Instance UID (or created the same
                # patient / study / series) at the same moment: once more, now seeing its rows.
                if attempt == 2 or outcome.committed:
                    raise
    except Exception as exc:
        if outcome.committed and outcome.result is not None:
            # Only an on-commit hook failed (say, queueing the study-complete check with the
            # broker down): the instance is durable and indexed; its recovery sweep catches up.
            logger.error("C-STORE %s: stored, but a post-commit hook failed: %s", uid, exc)
            return _after_commit(outcome.result, pending, storage)
        _discard(pending, storage)
        if isinstance(exc, StoreRejected):
            raise
        if isinstance(exc, StorageError):
            logger.error("C-STORE %s from %s: storage failed: %s", uid, calling_ae or "-", exc)
            raise StoreRejected(
                OUT_OF_RESOURCES, "out of resources: storage write failed", detail=str(exc)
            ) from exc
        if isinstance(exc, DatabaseError):
            logger.error("C-STORE %s from %s: database write failed: %s", uid, calling_ae or "-", exc)
            raise StoreRejected(
                OUT_OF_RESOURCES, "out of resources: database write failed", detail=str(exc)
            ) from exc
        raise
    except BaseException:
        if not outcome.committed:
            _discard(pending, storage)
        raise
    return _after_commit(outcome.result, pending, storage)


def _discard(pending: PendingPut, storage) -> None:
    """Remove a placed file that will not be indexed (after a running fsync has finished with it)."""
    pending.settle()
    storage.delete(pending.key)


def _after_commit(result: StoreResult, pending: PendingPut, storage) -> StoreResult:
    if result.outcome == "duplicate":
        _discard(pending, storage)  # lost a race under the keep policy: the other copy is indexed
    return result


class _IndexOutcome:
    """What `_index` got to: `committed` is set by the first on-commit hook of its transaction."""

    def __init__(self) -> None:
        self.committed = False
        self.result: StoreResult | None = None

    def mark_committed(self) -> None:
        self.committed = True


def _put_copy(storage, source: Path, uid: str) -> PendingPut:
    """Store a copy of `source` (left in place), staged next to the store."""
    with (
        open(source, "rb") as original,
        tempfile.NamedTemporaryFile(dir=storage.staging_dir(), suffix=".dcm", delete=False) as copy,
    ):
        shutil.copyfileobj(original, copy, 1024 * 1024)
    try:
        return storage.begin_put(Path(copy.name), uid)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy.name)


def _check_outside_transactions() -> None:
    """The index transaction is durable: it must commit before success is answered. (Django's
    TestCase and pytest-django's `db` wrap tests in atomic blocks that durable blocks accept.)"""
    connection = transaction.get_connection()
    if connection.in_atomic_block and not getattr(connection.atomic_blocks[-1], "_from_testcase", False):
        raise RuntimeError("store_instance must not run inside a transaction: success needs its commit")


def _existing_instance(uid: str) -> Instance | None:
    return _first(Instance.objects.filter(sop_instance_uid=uid))


def _index(
    header: _Header,
    key: str,
    calling_ae: str,
    policy: str,
    outcome: _IndexOutcome,
    *,
    look_for_existing: bool,
    wait_durable: Callable[[], object],
    start_durable: Callable[[], object] = lambda: None,
) -> None:
    """Index the instance (and its patient, study, series), count it, and tell study-complete
    detection, durably, after its file is durable. Sets `outcome.result`; `outcome.committed`
    once committed.

    The usual case - another instance of a series already indexed - is one SQL statement on
    PostgreSQL (`_insert_into_known_series`), sent in autocommit once the file's fsync is done:
    one round trip, and the study row (which every instance of the study updates) locked only
    while that statement runs, not across an fsync and two more round trips. The first instance
    of a series goes through the ORM in one durable transaction that waits for the fsync before
    it commits. A copy of the same SOP Instance UID indexed in the meantime is found (keep: a
    duplicate) or, in the ORM path, makes the INSERT fail (as do a patient, study or series
    created meanwhile) and the caller retries with `look_for_existing`: under the keep policy
    through the one statement first, which finds both. `wait_durable` makes the file durable (in this thread on the fast path:
    there is nothing to overlap it with, and a thread handoff costs more) and raises StorageError
    when the fsync failed (then nothing is indexed); `start_durable` starts that in the
    background, for the ORM path to overlap it with its statements."""
    fields = {
        "sop_class_uid": header.sop_class_uid,
        "instance_number": header.integer(0x00200013),
        "transfer_syntax_uid": header.layout.transfer_syntax_uid,
        "storage_key": key,
        "file_size": header.layout.file_size,
        "received_at": timezone.now(),
        "calling_ae": calling_ae[:16],
        "tags": header.json(INSTANCE_TAGS),
    }
    connection_ = transaction.get_connection()
    # Under the keep policy the one statement also covers a copy indexed meanwhile (a duplicate),
    # so a retry after a race takes it too: several associations that started one new series
    # together then add their first instances with a statement each, not an ORM transaction each
    # queued on the study row.
    try_fast = connection_.vendor == "postgresql" and (policy == "keep" or not look_for_existing)
    if try_fast and not connection_.in_atomic_block:
        wait_durable()
        fast = _insert_into_known_series(header, fields)  # autocommit: committed when it returns
        if fast is not None:
            if fast != "duplicate":
                outcome.mark_committed()  # before queueing the checks: a broker error undoes nothing
            _record_fast_insert(fast, header, outcome)
            return
        try_fast = False  # a new series: the ORM path
    # The transaction's statements overlap the fsync (run in the background meanwhile).
    start_durable()
    with transaction.atomic(durable=True):
        transaction.on_commit(outcome.mark_committed)  # first hook: runs before any other
        fast = _insert_into_known_series(header, fields) if try_fast else None
        if fast is not None:
            _record_fast_insert(fast, header, outcome)
            if fast == "duplicate":
                return  # (the caller discards the copy placed for nothing)
        else:
            instance, result, new_study, new_series = _index_with_orm(
                header, fields, policy, look_for_existing
            )
            if result == "duplicate":
                outcome.result = StoreResult("duplicate", instance)
                return
            # Study-complete detection and the FHIR ImagingStudy upkeep (study_complete.py):
            # marks the study for its quiet period and queues the checks on commit.
            study_complete.instance_stored(instance)
            outcome.result = StoreResult(result, instance)
            logger.debug(
                "C-STORE %s from %s: %s as %s%s%s",
                header.sop_instance_uid,
                calling_ae or "-",
                result,
                key,
                " (new study)" if new_study else "",
                " (new series)" if new_series else "",
            )
        # The file is durable before the index says it is there: its fsync (started above)
        # runs while the index is written, and the commit waits for it.
        wait_durable()


@dataclass(frozen=True)
class _FastInsert:
    """What `_insert_into_known_series` wrote: the keys and UIDs of the instance, its series and
    study (`instance()` builds the Instance with series and study attached from them), the
    study's completion count, and whether its update started a completion cycle."""

    header: _Header
    fields: dict
    instance_id: int
    series_id: int
    study_id: int
    study_instance_uid: str
    patient_id: int
    completion_count: int
    started_cycle: bool

    def instance(self) -> Instance:
        """The Instance row written, with its series and study attached (loaded with their keys
        and UIDs, the rest deferred)."""
        header, fields = self.header, self.fields
        study = Study.from_db(
            "default",
            ["id", "study_instance_uid", "patient_id"],
            [self.study_id, self.study_instance_uid, self.patient_id],
        )
        series = Series.from_db(
            "default",
            ["id", "series_instance_uid", "study_id"],
            [self.series_id, header.series_instance_uid, self.study_id],
        )
        series.study = study
        names = ["id", "sop_instance_uid", "series_id", *fields]
        instance = Instance.from_db(
            "default", names, [self.instance_id, header.sop_instance_uid, self.series_id, *fields.values()]
        )
        instance.series = series
        return instance


def _record_fast_insert(fast: _FastInsert | str, header: _Header, outcome: _IndexOutcome) -> None:
    """The outcome of `_insert_into_known_series`; queues study-complete detection's checks (on
    commit) when its update started a cycle."""
    if fast == "duplicate":
        existing = _first(Instance.objects.filter(sop_instance_uid=header.sop_instance_uid))
        outcome.result = StoreResult("duplicate", existing)
        return
    outcome.result = StoreResult("stored", load=fast.instance)
    study_complete.instance_touched(fast.study_instance_uid, fast.completion_count, fast.started_cycle)
    logger.debug(
        "C-STORE %s from %s: stored as %s",
        header.sop_instance_uid,
        fast.fields["calling_ae"] or "-",
        fast.fields["storage_key"],
    )


@functools.cache
def _known_series_sql() -> str:
    """The statement of `_insert_into_known_series` (PostgreSQL; built once per process)."""
    instance_table = connection.ops.quote_name(Instance._meta.db_table)
    series_table = connection.ops.quote_name(Series._meta.db_table)
    study_table = connection.ops.quote_name(Study._meta.db_table)
    return f"""
        WITH s AS (
            SELECT se.id AS series_id, se.study_id, st.study_instance_uid, st.patient_id,
                st.completion_count, {study_complete.cycle_starts_sql("st")} AS starts
            FROM {series_table} se JOIN {study_table} st ON st.id = se.study_id
            WHERE se.series_instance_uid = %(series_uid)s
            FOR NO KEY UPDATE OF st
        ), ins AS (
            INSERT INTO {instance_table} (sop_instance_uid, series_id, sop_class_uid, instance_number,
                transfer_syntax_uid, storage_key, file_size, received_at, calling_ae, tags)
            SELECT %(uid)s, s.series_id, %(sop_class_uid)s, %(instance_number)s, %(transfer_syntax_uid)s,
                %(storage_key)s, %(file_size)s, %(received_at)s::timestamptz, %(calling_ae)s, %(tags)s::jsonb
            FROM s
            ON CONFLICT (sop_instance_uid) DO NOTHING
            RETURNING id
        ), counted_study AS (
            UPDATE {study_table} SET number_of_instances = number_of_instances + 1,
                {study_complete.touch_study_set_sql("(SELECT starts FROM s)")}
            WHERE id = (SELECT study_id FROM s) AND EXISTS (SELECT 1 FROM ins)
        ), counted_series AS (
            UPDATE {series_table} SET number_of_instances = number_of_instances + 1
            WHERE id = (SELECT series_id FROM s) AND EXISTS (SELECT 1 FROM ins)
        )
        SELECT s.series_id, s.study_id, s.study_instance_uid, s.patient_id, (SELECT id FROM ins),
            s.completion_count, s.starts
        FROM s
    """


def _insert_into_known_series(header: _Header, fields: dict) -> _FastInsert | str | None:
    """PostgreSQL, one statement: insert the instance into its series (if that is indexed), count
    it in the series and the study, and do study-complete detection's per-instance Study update
    (`study_complete.touch_study_set_sql`). Returns what it wrote (`_FastInsert`);
    "duplicate" when the SOP Instance UID is indexed already (nothing is changed then); None when
    the series is not indexed yet. The caller tells study-complete detection
    (`_record_fast_insert`)."""
    params = {
        **study_complete.touch_params(fields["calling_ae"]),
        "series_uid": header.series_instance_uid,
        "uid": header.sop_instance_uid,
        **fields,
        "tags": orjson.dumps(fields["tags"]).decode(),
    }
    with connection.cursor() as cursor:
        # Prepared: planning this statement cost about as much as running it.
        prepared.execute_named(cursor, _known_series_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None
    series_id, study_id, study_uid, patient_id, instance_id, completion_count, started_cycle = row
    if instance_id is None:
        return "duplicate"
    if study_uid != header.study_instance_uid:
        _warn_series_in_other_study(header, study_uid)
    return _FastInsert(
        header,
        fields,
        instance_id,
        series_id,
        study_id,
        study_uid,
        patient_id,
        completion_count,
        started_cycle,
    )


def _index_with_orm(
    header: _Header, fields: dict, policy: str, look_for_existing: bool
) -> tuple[Instance, str, bool, bool]:
    """The general path (any database; new series; the replace policy): returns the instance,
    'stored' / 'replaced' / 'duplicate', and whether the study / series are new."""
    storage = get_instance_storage()
    existing = None
    if look_for_existing:
        existing = _first(
            Instance.objects.select_for_update().filter(sop_instance_uid=header.sop_instance_uid)
        )
        if existing is not None and policy == "keep":
            return existing, "duplicate", False, False
    patient, study, series, new_study, new_series = _hierarchy(header.dataset, header)
    if existing is None:
        instance = Instance.objects.create(sop_instance_uid=header.sop_instance_uid, series=series, **fields)
        _count_instance(study.pk, series.pk, +1)
        result = "stored"
    else:
        old_key, old_series_id = existing.storage_key, existing.series_id
        existing.series = series
        for name, value in fields.items():
            setattr(existing, name, value)
        existing.save()
        instance = existing
        result = "replaced"
        if old_series_id != series.pk:
            old_study_id = Series.objects.filter(pk=old_series_id).values_list("study_id", flat=True).first()
            _count_instance(old_study_id, old_series_id, -1)
            _count_instance(study.pk, series.pk, +1)
            _remove_empty_parents(old_series_id)
        if old_key != fields["storage_key"]:
            transaction.on_commit(lambda: storage.delete(old_key))
    instance.series = series
    series.study = study
    study.patient = patient
    return instance, result, new_study, new_series


def _warn_series_in_other_study(header: _Header, indexed_study_uid: str) -> None:
    logger.warning(
        "instance %s: series %s belongs to study %s, not %s as the instance says; indexed in the series' study",
        header.sop_instance_uid,
        header.series_instance_uid,
        indexed_study_uid,
        header.study_instance_uid,
    )


def _count_instance(study_pk: int | None, series_pk: int, delta: int) -> None:
    """Add `delta` to the instance counters; locks the study row, then the series row (the order
    every writer here takes - `_insert_into_known_series` locks the study in its first CTE - so
    concurrent stores into one study never deadlock)."""
    Study.objects.filter(pk=study_pk).update(number_of_instances=F("number_of_instances") + delta)
    Series.objects.filter(pk=series_pk).update(number_of_instances=F("number_of_instances") + delta)


def _first(queryset):
    """The first row or None, without the ORDER BY pk that `QuerySet.first()` adds."""
    return next(iter(queryset.order_by()[:1]), None)


def _hierarchy(ds: Dataset, header: _Header) -> tuple[DicomPatient, Study, Series, bool, bool]:
    """The instance's patient, study and series (created where new), and whether study / series are
    new. The usual case, a series already indexed, costs one query."""
    series = _first(
        Series.objects.select_related("study__patient").filter(series_instance_uid=header.series_instance_uid)
    )
    if series is not None:
        if series.study.study_instance_uid != header.study_instance_uid:
            _warn_series_in_other_study(header, series.study.study_instance_uid)
        return series.study.patient, series.study, series, False, False
    patient = _patient(ds)
    study, new_study = _study(ds, header.study_instance_uid, patient)
    series, new_series = _series(ds, header.series_instance_uid, study)
    return patient, study, series, new_study, new_series


def _patient(ds: Dataset) -> DicomPatient:
    patient_id = _text(ds, 0x00100020)[:64]
    issuer = _text(ds, 0x00100021)[:64]
    patient = _first(DicomPatient.objects.filter(patient_id=patient_id, issuer=issuer))
    if patient is not None:
        return patient
    with transaction.atomic():  # a savepoint: a concurrent creator makes this raise IntegrityError
        return DicomPatient.objects.create(
            patient_id=patient_id,
            issuer=issuer,
            patient_name=_text(ds, 0x00100010)[:324],
            birth_date=_text(ds, 0x00100030)[:8],
            sex=_text(ds, 0x00100040)[:16],
            tags=_json(ds, PATIENT_TAGS),
        )


def _study(ds: Dataset, uid: str, patient: DicomPatient) -> tuple[Study, bool]:
    study = _first(Study.objects.filter(study_instance_uid=uid))
    if study is not None:
        return study, False
    with transaction.atomic():
        study = Study.objects.create(
            study_instance_uid=uid,
            patient=patient,
            study_date=_text(ds, 0x00080020)[:8],
            study_time=_text(ds, 0x00080030)[:16],
            accession_number=_text(ds, 0x00080050)[:64],
            study_id=_text(ds, 0x00200010)[:16],
            study_description=_text(ds, 0x00081030)[:64],
            referring_physician_name=_text(ds, 0x00080090)[:324],
            tags=_json(ds, STUDY_TAGS),
        )
    # A new study brings the patient's current demographics (names get corrected, births added).
    demographics = {
        "patient_name": _text(ds, 0x00100010)[:324],
        "birth_date": _text(ds, 0x00100030)[:8],
        "sex": _text(ds, 0x00100040)[:16],
        "tags": _json(ds, PATIENT_TAGS),
    }
    if any(getattr(patient, name) != value for name, value in demographics.items()):
        DicomPatient.objects.filter(pk=patient.pk).update(**demographics)
        for name, value in demographics.items():
            setattr(patient, name, value)
    return study, True


def _series(ds: Dataset, uid: str, study: Study) -> tuple[Series, bool]:
    series = _first(Series.objects.filter(series_instance_uid=uid))
    if series is not None:
        return series, False
    modality = _text(ds, 0x00080060)[:16]
    # The study row first, as every writer here locks it (study, then series): two new series of
    # one study would otherwise both hold a key-share lock on it (their foreign keys) and deadlock
    # upgrading it.
    Study.objects.select_for_update(no_key=True).filter(pk=study.pk).values_list("pk", flat=True).first()
    with transaction.atomic():
        series = Series.objects.create(
            series_instance_uid=uid,
            study=study,
            modality=modality,
            series_number=_int(ds, 0x00200011),
            series_description=_text(ds, 0x0008103E)[:64],
            body_part_examined=_text(ds, 0x00180015)[:16],
            tags=_json(ds, SERIES_TAGS),
        )
    _refresh_study_series(study.pk)
    return series, True


def _refresh_study_series(study_pk: int) -> None:
    """Recount the study's series and modalities (after a series was added or removed)."""
    locked = Study.objects.select_for_update(no_key=True).get(pk=study_pk)
    modalities = sorted(
        {m for m in Series.objects.filter(study_id=study_pk).values_list("modality", flat=True) if m}
    )
    locked.number_of_series = Series.objects.filter(study_id=study_pk).count()
    locked.modalities_in_study = "\\".join(modalities)[:128]
    Study.objects.filter(pk=study_pk).update(
        number_of_series=locked.number_of_series, modalities_in_study=locked.modalities_in_study
    )


def _remove_empty_parents(series_pk: int) -> None:
    """Delete the series if it has no instances left, then its study and patient likewise."""
    series = Series.objects.filter(pk=series_pk).select_related("study").first()
    if series is None or series.instances.exists():
        return
    study = series.study
    series.delete()
    if study.series.exists():
        _refresh_study_series(study.pk)
        return
    patient_id = study.patient_id
    study.delete()
    if not Study.objects.filter(patient_id=patient_id).exists():
        DicomPatient.objects.filter(pk=patient_id).delete()


# --- Reading values defensively (senders get VRs and values wrong; indexing must not fail) ----


def _text(ds: Dataset, tag: int) -> str:
    try:
        element = ds.get(tag)
        if element is None or element.value is None:
            return ""
        value = element.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value).strip()
        if isinstance(value, bytes):
            return value.decode("ascii", "replace").strip("\x00 ")
        return str(value).strip()
    except Exception:  # invalid value for its VR, undecodable characters
        return ""


def _int(ds: Dataset, tag: int) -> int | None:
    text = _text(ds, tag).split("\\")[0]
    try:
        number = int(float(text))
    except (TypeError, ValueError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _json(ds: Dataset, tags: Iterable[int]) -> dict:
    """The DICOM JSON (PS3.18 F.2) of the elements `tags` of `ds` that are present; elements whose
    value cannot be converted are left out.

    Most attributes repeat from one instance of a series to the next (orientation, spacing,
    sizes, windows, rescale, dates), so the JSON of an element still in its raw encoded form is
    kept, keyed by its encoding, and reused: converting it with pydicom costs tens of
    microseconds per element on the ingest path."""
    result: dict = {}
    charset = tuple(getattr(ds, "_character_set", ()) or ())
    for tag in tags:
        raw = ds.get_item(tag)
        if raw is None:
            continue
        key = None
        if isinstance(raw.value, bytes) and raw.VR != "SQ" and len(raw.value) <= _JSON_CACHE_VALUE_MAX:
            key = (tag, raw.VR, raw.value, raw.is_implicit_VR, raw.is_little_endian, charset)
            cached = _element_json_cache.get(key)
            if cached is not None:
                result[f"{tag:08X}"] = _copy_json(cached)
                continue
        try:
            converted = ds[tag].to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1024 * 1024)
        except Exception:
            continue
        if key is not None:
            if len(_element_json_cache) >= _JSON_CACHE_SIZE:
                _element_json_cache.clear()
            _element_json_cache[key] = _copy_json(converted)
        result[f"{tag:08X}"] = converted
    return result


def _copy_json(value):
    """A copy of a JSON tree (dicts, lists, immutable scalars): the cache's entries must never be
    shared with a caller that could change them. Several times cheaper than `copy.deepcopy`."""
    if value.__class__ is dict:
        return {key: _copy_json(item) for key, item in value.items()}
    if value.__class__ is list:
        return [_copy_json(item) for item in value]
    return value


# Element JSON by encoding (see `_json`); shared by the association threads (dict operations are
# atomic), cleared when full.
_element_json_cache: dict[tuple, dict] = {}
_JSON_CACHE_SIZE = 4096
_JSON_CACHE_VALUE_MAX = 1024


# --- Deleting and reading back ------------------------------------------------------------------------


def delete_instance(sop_instance_uid: str) -> None:
    """Remove the instance from the index (and its empty series, study, patient), then its file
    after the commit. Raises `InstanceNotFound`."""
    storage = get_instance_storage()
    with transaction.atomic():
        instance = Instance.objects.select_for_update().filter(sop_instance_uid=sop_instance_uid).first()
        if instance is None:
            raise InstanceNotFound(sop_instance_uid)
        key, series_pk = instance.storage_key, instance.series_id
        study_pk = Series.objects.filter(pk=series_pk).values_list("study_id", flat=True).first()
        instance.delete()
        _count_instance(study_pk, series_pk, -1)
        _remove_empty_parents(series_pk)
        transaction.on_commit(lambda: storage.delete(key))


@dataclass(frozen=True)
class InstanceFile:
    """A stored instance's file, for retrieval (C-MOVE / C-GET sub-operations, WADO, DICOMweb).

    The file is a DICOM Part 10 file exactly as received: `open()` it (binary, caller closes),
    or use `path` where the storage is local (always today; None for a future object store).
    `dataset_offset()` is where the data set starts after the File Meta Information, for
    senders that send the encoded data set without decoding it."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    path: Path | None

    def open(self) -> BinaryIO:
        return get_instance_storage().open(self.storage_key)

    def dataset_offset(self) -> int:
        """Byte offset of the data set (after the preamble and File Meta Information)."""
        with self.open() as handle:
            return read_file_meta(handle).dataset_offset


def instance_file(sop_instance_uid: str) -> InstanceFile:
    """The stored file of the instance `sop_instance_uid`. Raises `InstanceNotFound`.

    Used by the retrieval paths (C-MOVE / C-GET in scp_query.py, WADO-RS in dicomweb/): send
    `instance_file(uid).path` (or the bytes of `.open()`) as is - it is the Part 10 file the
    sender gave us, in its original transfer syntax (`.transfer_syntax_uid`)."""
    row = (
        Instance.objects.filter(sop_instance_uid=sop_instance_uid)
        .values_list("sop_class_uid", "transfer_syntax_uid", "storage_key", "file_size")
        .first()
    )
    if row is None:
        raise InstanceNotFound(sop_instance_uid)
    sop_class_uid, transfer_syntax_uid, key, size = row
    return InstanceFile(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        storage_key=key,
        size=size,
        path=get_instance_storage().path(key),
    )


# --- Peers ------------------------------------------------------------------------------------------

OPERATIONS = ("store", "find", "move", "get")


class PeerError(ValueError):
    """A remote AE definition that cannot be saved (bad AE title, port, operation)."""


def validate_ae_title(value: str) -> str:
    """The AE title without surrounding spaces; PeerError unless 1-16 printable ASCII characters
    without a backslash (PS3.5 AE)."""
    title = (value or "").strip()
    if not 1 <= len(title) <= 16:
        raise PeerError(f"AE title must be 1 to 16 characters, got {value!r}")
    if any(ord(c) < 32 or ord(c) > 126 or c == "\\" for c in title):
        raise PeerError(f"AE title may hold printable ASCII characters but no backslash, got {value!r}")
    return title


def validate_port(port: object) -> int:
    """`port` if it is a TCP port number (1-65535); else PeerError saying so."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise PeerError(f"port must be between 1 and 65535, got {port!r}")
    return port


def add_or_update_peer(
    ae_title: str,
    host: str,
    port: int,
    *,
    allow: Iterable[str] = OPERATIONS,
    use_tls: bool = False,
    description: str | None = None,
) -> tuple[RemoteAE, bool]:
    """Add the remote AE `ae_title` or update it to these values; returns (peer, created).

    `allow` names the operations it may do: store, find, move, get (the others are turned off).
    Raises `PeerError` for a bad AE title, host, port or operation."""
    title = validate_ae_title(ae_title)
    host = (host or "").strip()
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise PeerError(f"host must be a host name or IP address, got {host!r}")
    validate_port(port)
    allowed = {op.strip().lower() for op in allow if op.strip()}
    unknown = allowed - set(OPERATIONS)
    if unknown:
        raise PeerError(f"unknown operation(s) {', '.join(sorted(unknown))}: use {', '.join(OPERATIONS)}")
    values = {"host": host, "port": port, "use_tls": use_tls}
    values.update({f"allow_{op}": op in allowed for op in OPERATIONS})
    if description is not None:
        values["description"] = description[:200]
    with transaction.atomic():
        peer, created = RemoteAE.objects.select_for_update().update_or_create(ae_title=title, defaults=values)
    return peer, created


@dataclass(frozen=True)
class PeerPermissions:
    """What a calling AE may do on this node (`known`: it is a configured RemoteAE)."""

    ae_title: str
    known: bool
    store: bool
    find: bool
    move: bool
    get: bool

    def allows(self, operation: str) -> bool:
        return bool(getattr(self, operation))


def peer_permissions(calling_ae: str) -> PeerPermissions:
    """The permissions of `calling_ae`: a configured RemoteAE's flags; for an unknown AE all
    operations when `BTT_DICOM_ALLOW_UNKNOWN_AE` is on, none when it is off (allow-list mode)."""
    title = (calling_ae or "").strip()
    peer = RemoteAE.objects.filter(ae_title=title).first()
    if peer is None:
        allowed = settings.BTT_DICOM_ALLOW_UNKNOWN_AE
        return PeerPermissions(title, False, allowed, allowed, allowed, allowed)
    return PeerPermissions(title, True, peer.allow_store, peer.allow_find, peer.allow_move, peer.allow_get)


@dataclass
class StorageCheck:
    """What `check_storage` found: stored files no index row names (`orphans`, removed when
    asked: `removed`), and index rows whose file is gone (`missing`, SOP Instance UIDs)."""

    files: int = 0
    orphans: list[str] = field(default_factory=list)
    removed: int = 0
    missing: list[str] = field(default_factory=list)


def check_storage(*, remove_orphans: bool = False, min_age_seconds: float = 3600.0) -> StorageCheck:
    """Compare the instance storage with the index.

    A file is placed before its index row is committed, and a replaced instance's old file is
    removed after the commit: a crash between the two leaves a file no row names. Those older than
    `min_age_seconds` (so nothing being stored right now) are orphans, removed with
    `remove_orphans` (each checked once more just before). Rows whose file is gone are reported,
    never changed: that needs a person (restore the file, or delete the instance)."""
    storage = get_instance_storage()
    result = StorageCheck()
    cutoff = timezone.now().timestamp() - min_age_seconds
    batch: list[str] = []

    def settle(keys: list[str]) -> None:
        indexed = set(Instance.objects.filter(storage_key__in=keys).values_list("storage_key", flat=True))
        for key in keys:
            if key in indexed:
                continue
            result.orphans.append(key)
            if remove_orphans and not Instance.objects.filter(storage_key=key).exists():
                storage.delete(key)
                result.removed += 1

    for key, modified in storage.iter_keys():
        result.files += 1
        if modified < cutoff:
            batch.append(key)
        if len(batch) >= 1000:
            settle(batch)
            batch = []
    if batch:
        settle(batch)
    for uid, key in Instance.objects.values_list("sop_instance_uid", "storage_key").iterator(chunk_size=2000):
        if not storage.exists(key):
            result.missing.append(uid)
    if result.orphans:
        logger.warning(
            "storage check: %d file(s) not in the index%s",
            len(result.orphans),
            f", {result.removed} removed" if remove_orphans else "",
        )
    return result


def cleanup_staging(max_age_seconds: float = 3600.0) -> int:
    """Remove staged files older than `max_age_seconds` (left by a crash or an aborted transfer);
    returns how many. The SCP runs it at start."""
    folder = get_instance_storage().staging_dir()
    cutoff = timezone.now().timestamp() - max_age_seconds
    removed = 0
    for entry in os.scandir(folder):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    return removed
