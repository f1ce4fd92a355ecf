"""STOW-RS: store instances sent as `multipart/related; type="application/dicom"` (PS3.18 10.5).

The body is parsed part by part as it arrives (`multipart.MultipartReader`); each part (a DICOM
Part 10 file) is written to a staging file of the instance storage and handed to
`services.store_instance`, which checks, stores (exactly as received) and indexes it - the same
path as a C-STORE. Memory stays bounded whatever the size of the body.

The response is a Store Instances Response Module (PS3.18 Annex I) as DICOM JSON: Referenced SOP
Sequence (0008,1199) for the instances stored, Failed SOP Sequence (0008,1198) with a Failure
Reason (0008,1197) for the others; 200 when all were stored, 202 when some failed, 409 when all
failed. Failure reasons are the DIMSE statuses `store_instance` rejects with (0xA700 out of
resources, 0xA900 SOP class mismatch, 0xC000-0xC003 cannot understand), plus:

- 0xC409: the instance's Study Instance UID differs from the study of the request URL
  (`POST /studies/{study}`);
- 0xC000: a part that is not `application/dicom`, or not a readable DICOM file.

Each failure is also described in a `Warning` header.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from integrations.dicom import services
from integrations.dicom.dicomweb.errors import DicomWebError, bad_request
from integrations.dicom.dicomweb.multipart import MultipartError, MultipartReader, Part, Readable
from integrations.dicom.dicomweb.negotiation import parse_media_type
from integrations.dicom.dicomweb.qido import instance_url, study_url
from integrations.dicom.storage import get_instance_storage

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
STUDY_UID_MISMATCH = 0xC409
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
MAX_WARNINGS = 20


@dataclass
class StowResult:
    status: int
    body: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    stored: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)


def _uid_element(value: str | None) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _header_uids(path: Path) -> tuple[str | None, str | None, str | None]:
    """(SOP Class UID, SOP Instance UID, Study Instance UID) of a part, as far as it can be read."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[0x00080016, 0x00080018, 0x0020000D])
    except Exception:
        return None, None, None
    meta = getattr(ds, "file_meta", None)

    def text(name: str, meta_name: str) -> str | None:
        value = ds.get(name) or (meta.get(meta_name) if meta is not None else None)
        return str(value).strip() if value else None

    return (
        text("SOPClassUID", "MediaStorageSOPClassUID"),
        text("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        text("StudyInstanceUID", "-"),
    )


def _fail(outcome: _Outcome, part: Part, reason: int, message: str, uids=None) -> None:
    sop_class, sop_instance, _ = uids if uids is not None else _header_uids(part.path)
    outcome.failed.append(
        {
            "00081150": _uid_element(sop_class),
            "00081155": _uid_element(sop_instance),
            "00081197": {"vr": "US", "Value": [reason]},
        }
    )
    what = f"instance {sop_instance}" if sop_instance else f"part {part.index}"
    outcome.warnings.append(f"{what} was not stored (failure reason 0x{reason:04X}): {message}")


def _store_part(part: Part, outcome: _Outcome, expected_study: str | None, base_url: str) -> None:
    media = parse_media_type(part.content_type) if part.content_type else None
    if media is not None and media.media_type != DICOM:
        _fail(outcome, part, CANNOT_UNDERSTAND, f"its Content-Type is {media.media_type}, not {DICOM}")
        return
    if part.size == 0:
        _fail(outcome, part, CANNOT_UNDERSTAND, "the part is empty", (None, None, None))
        return
    uids = _header_uids(part.path)
    if expected_study is not None and uids[2] is not None and uids[2] != expected_study:
        _fail(
            outcome,
            part,
            STUDY_UID_MISMATCH,
            f"its Study Instance UID {uids[2]} differs from the study {expected_study} of the request URL",
            uids,
        )
        return
    try:
        result = services.store_instance(path=part.path, consume=True)
    except services.StoreRejected as rejected:
        _fail(outcome, part, rejected.status, rejected.detail, uids)
        return
    except Exception:
        logger.exception("STOW-RS: storing part %s failed", part.index)
        _fail(outcome, part, PROCESSING_FAILURE, "internal error while storing", uids)
        return
    instance = result.instance
    series = instance.series
    study_uid = series.study.study_instance_uid
    if study_uid not in outcome.study_uids:
        outcome.study_uids.append(study_uid)
    outcome.stored.append(
        {
            "00081150": _uid_element(instance.sop_class_uid),
            "00081155": _uid_element(instance.sop_instance_uid),
            "00081190": {
                "vr": "UR",
                "Value": [
                    instance_url(base_url, study_uid, series.series_instance_uid, instance.sop_instance_uid)
                ],
            },
        }
    )


def _body_parts(stream: Readable, content_type: str, staging: Path):
    """The parts of the body: a multipart/related body part by part, or one application/dicom body."""
    media = parse_media_type(content_type or "")
    if media.media_type == DICOM:
        fd, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=staging)
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                size += len(chunk)
        yield Part(1, {"content-type": DICOM}, Path(name), size)
        return
    if media.media_type != "multipart/related":
        raise DicomWebError(
            415,
            f"Content-Type {media.media_type or '(none)'} is not supported; send "
            'multipart/related; type="application/dicom"; boundary=...',
        )
    part_type = (media.param("type") or DICOM).strip().lower()
    if part_type != DICOM:
        raise DicomWebError(
            415,
            f'multipart/related; type="{part_type}" is not supported; only type="{DICOM}" '
            "(DICOM Part 10 files) can be stored here",
        )
    boundary = media.param("boundary")
    if not boundary:
        raise bad_request("the multipart/related Content-Type has no boundary parameter")
    yield from MultipartReader(stream, boundary, staging).parts()


def store(stream: Readable, content_type: str, base_url: str, study_uid: str | None = None) -> StowResult:
    """Store every part of a STOW-RS request body; the response status, body and warnings."""
    staging = get_instance_storage().staging_dir()
    outcome = _Outcome()
    count = 0
    try:
        for part in _body_parts(stream, content_type, staging):
            count += 1
            try:
                _store_part(part, outcome, study_uid, base_url)
            finally:
                part.discard()
    except MultipartError as exc:
        if count == 0:
            raise bad_request(f"the multipart body cannot be read: {exc}") from None
        outcome.warnings.append(f"the multipart body broke off after part {count}: {exc}")
        outcome.failed.append(
            {
                "00081150": _uid_element(None),
                "00081155": _uid_element(None),
                "00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]},
            }
        )
    if count == 0:
        raise bad_request("the request body holds no parts to store")
    target_study = study_uid or (outcome.study_uids[0] if len(outcome.study_uids) == 1 else None)
    body: dict = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}
    body["00081190"] = (
        {"vr": "UR", "Value": [study_url(base_url, target_study)]} if target_study else {"vr": "UR"}
    )
    if outcome.failed:
        body["00081198"] = {"vr": "SQ", "Value": outcome.failed}
    if outcome.stored:
        body["00081199"] = {"vr": "SQ", "Value": outcome.stored}
    if not outcome.failed:
        status = 200
    elif outcome.stored:
        status = 202
    else:
        status = 409
    warnings = outcome.warnings[:MAX_WARNINGS]
    if len(outcome.warnings) > MAX_WARNINGS:
        warnings.append(
            f"{len(outcome.warnings) - MAX_WARNINGS} more instances failed; see FailedSOPSequence"
        )
    return StowResult(status, body, warnings)
