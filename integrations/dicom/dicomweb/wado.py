"""WADO-RS: retrieve stored instances (as stored), their metadata (DICOM JSON) and bulk data.

Instances go out exactly as stored (the Part 10 file the sender gave us: no decode, no
re-encode), each in one part of a `multipart/related; type="application/dicom"` body read lazily
from the instance storage, so a study of any size streams with bounded memory. This server does
not transcode: a client that asks for a transfer syntax other than the stored one gets 406
(`transfer-syntax=*` and no `transfer-syntax` parameter both mean "as stored").

Metadata is each instance's data set as DICOM JSON (PS3.18 Annex F) without its File Meta
Information: values longer than `BULK_DATA_THRESHOLD` bytes of binary VRs at the top level, and
the pixel data, are given as a `BulkDataURI` served by the bulkdata resource
(`.../instances/{sop}/bulkdata/{tag}`); nested binary values are inline (`InlineBinary`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from integrations.dicom.dicomweb import attributes as attrs
from integrations.dicom.dicomweb.errors import DicomWebError, not_acceptable, not_found
from integrations.dicom.dicomweb.negotiation import MediaRange
from integrations.dicom.dicomweb.pixels import PIXEL_DATA, frames, read_header, stored_file, swap_words
from integrations.dicom.dicomweb.qido import instance_url
from integrations.dicom.models import Instance, Series, Study
from integrations.dicom.storage import get_instance_storage

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
BULK_DATA_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
CHUNK_SIZE = 256 * 1024


# --- Finding what to retrieve -----------------------------------------------------------------


def _ordered(queryset):
    return queryset.select_related("series__study").order_by(
        "series__series_number", "series_id", "instance_number", "id"
    )


def instances_of(study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[Instance]:
    """The stored instances a WADO-RS URL names, in series and instance order (404 when unknown)."""
    if sop_uid is not None:
        instance = (
            Instance.objects.select_related("series__study")
            .filter(
                sop_instance_uid=sop_uid,
                series__series_instance_uid=series_uid,
                series__study__study_instance_uid=study_uid,
            )
            .first()
        )
        if instance is None:
            raise not_found(
                f"instance {sop_uid} of series {series_uid} in study {study_uid} is not stored here"
            )
        return [instance]
    if series_uid is not None:
        if not Series.objects.filter(
            series_instance_uid=series_uid, study__study_instance_uid=study_uid
        ).exists():
            raise not_found(f"series {series_uid} of study {study_uid} is not stored here")
        return list(_ordered(Instance.objects.filter(series__series_instance_uid=series_uid)))
    if not Study.objects.filter(study_instance_uid=study_uid).exists():
        raise not_found(f"study {study_uid} is not stored here")
    return list(_ordered(Instance.objects.filter(series__study__study_instance_uid=study_uid)))


# --- Retrieving instances ---------------------------------------------------------------------


def acceptable_transfer_syntaxes(accept: list[MediaRange]) -> set[str] | None:
    """The transfer syntaxes the Accept header allows for application/dicom parts; None for any.

    406 when it allows no `multipart/related; type="application/dicom"` body at all.
    """
    syntaxes: set[str] = set()
    acceptable = False
    for media in accept:
        if media.media_type in ("*/*", "multipart/*"):
            return None
        if media.media_type == "multipart/related":
            part_type = (media.param("type") or DICOM).lower()
            if part_type not in (DICOM, "application/*", "*/*"):
                continue
        elif media.media_type != DICOM:  # single-part application/dicom: answered as multipart
            continue
        acceptable = True
        syntax = media.param("transfer-syntax")
        if syntax is None or syntax.strip() == "*":
            return None
        syntaxes.add(syntax.strip())
    if not acceptable:
        raise not_acceptable(
            'instances are available as multipart/related; type="application/dicom" only; '
            "send that (optionally with transfer-syntax=*) in Accept"
        )
    return syntaxes


def check_transfer_syntaxes(instances: list[Instance], allowed: set[str] | None) -> None:
    if allowed is None:
        return
    for instance in instances:
        if instance.transfer_syntax_uid not in allowed:
            syntax = UID(instance.transfer_syntax_uid)
            raise not_acceptable(
                f"instance {instance.sop_instance_uid} is stored as {syntax} ({syntax.name}); this server "
                f"returns instances as stored and does not transcode to {', '.join(sorted(allowed))}; "
                "ask with transfer-syntax=*"
            )


def check_files(instances: list[Instance]) -> None:
    """Fail before streaming (when a status can still be sent) if an indexed file is missing."""
    storage = get_instance_storage()
    for instance in instances:
        if not storage.exists(instance.storage_key):
            raise DicomWebError(
                500, f"instance {instance.sop_instance_uid} is indexed but its file is missing from storage"
            )


def _file_part(instance: Instance, base_url: str) -> tuple[dict[str, str], Iterator[bytes]]:
    storage = get_instance_storage()
    handle = storage.open(instance.storage_key)
    headers = {"Content-Type": f"{DICOM}; transfer-syntax={instance.transfer_syntax_uid}"}
    with contextlib.suppress(AttributeError, OSError, ValueError):  # a store without local files
        headers["Content-Length"] = str(os.fstat(handle.fileno()).st_size)
    series = instance.series
    headers["Content-Location"] = instance_url(
        base_url, series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid
    )

    def content() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield chunk

    return headers, content()


def instance_parts(
    instances: list[Instance], base_url: str
) -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
    """The multipart parts of the stored files, each opened only when its turn comes."""
    for instance in instances:
        try:
            yield _file_part(instance, base_url)
        except OSError:
            logger.exception("WADO-RS: cannot read the file of instance %s", instance.sop_instance_uid)
            raise


# --- Metadata ---------------------------------------------------------------------------------


def _element_json(tag: int, element, url: str) -> dict | None:
    """A BulkDataURI for a large binary value that was not read (deferred); None otherwise."""
    if isinstance(element, RawDataElement) and element.value is None and element.length:
        vr = str(element.VR) if element.VR else attrs.vr_of(attrs.tag_hex(tag))
        if vr in BINARY_VRS:
            return {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{attrs.tag_hex(tag)}"}
    return None


def dataset_json(ds: Dataset, url: str, has_pixels: bool) -> dict:
    """The data set as DICOM JSON, large top-level binary values (and pixel data) as BulkDataURIs."""
    result: dict = {}
    for tag in list(ds.keys()):
        if tag & 0xFFFF == 0:  # group lengths are not part of the JSON model
            continue
        key = attrs.tag_hex(tag)
        raw = ds.get_item(tag, keep_deferred=True)
        bulk = _element_json(tag, raw, url)
        if bulk is not None:
            result[key] = bulk
            continue
        try:
            element = ds[tag]
            if (
                element.VR in BINARY_VRS
                and element.value is not None
                and len(element.value) > BULK_DATA_THRESHOLD
            ):
                result[key] = {"vr": element.VR, "BulkDataURI": f"{url}/bulkdata/{key}"}
            else:
                result[key] = element.to_json_dict(
                    bulk_data_element_handler=None, bulk_data_threshold=1 << 30
                )
        except Exception:  # one unreadable value must not hide the rest
            logger.warning("metadata: skipping unreadable element %s of %s", key, url, exc_info=True)
    if has_pixels:
        syntax = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
        vr = "OB" if syntax.is_encapsulated or int(ds.get("BitsAllocated") or 8) <= 8 else "OW"
        result[attrs.tag_hex(PIXEL_DATA)] = {
            "vr": vr,
            "BulkDataURI": f"{url}/bulkdata/{attrs.tag_hex(PIXEL_DATA)}",
        }
    return result


def instance_metadata(instance: Instance, base_url: str) -> dict:
    series = instance.series
    url = instance_url(
        base_url, series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid
    )
    with stored_file(instance) as source:
        try:
            ds = dcmread(source, stop_before_pixels=True, defer_size=BULK_DATA_THRESHOLD)
        except Exception as exc:
            raise DicomWebError(
                500, f"the stored file of instance {instance.sop_instance_uid} cannot be read: {exc}"
            ) from exc
        # Image objects carry their pixel data last; stop_before_pixels left it in the file.
        has_pixels = "Rows" in ds and "Columns" in ds and "PixelData" not in ds
        return dataset_json(ds, url, has_pixels)


def metadata_chunks(instances: list[Instance], base_url: str) -> Iterator[bytes]:
    """The JSON array of the instances' metadata, one instance at a time."""
    yield b"["
    for index, instance in enumerate(instances):
        yield (b"," if index else b"") + orjson.dumps(instance_metadata(instance, base_url))
    yield b"]"


# --- Bulk data --------------------------------------------------------------------------------


@dataclass
class BulkData:
    data: bytes
    transfer_syntax: str = "1.2.840.10008.1.2.1"


def bulk_data(instance: Instance, tag_text: str) -> BulkData:
    """The value of the top-level attribute `tag_text` (hex) as uncompressed little-endian bytes.

    Pixel data comes back as all frames, uncompressed, one after the other.
    """
    try:
        tag = int(tag_text, 16)
        if len(tag_text) != 8:
            raise ValueError
    except ValueError:
        raise not_found(
            f"bulk data {tag_text!r}: give the 8-hex-digit tag of a top-level attribute"
        ) from None
    if tag == PIXEL_DATA:
        with stored_file(instance) as source:
            header = read_header(source)
        return BulkData(b"".join(frames(instance, list(range(1, header.frames + 1)))))
    with stored_file(instance) as source:
        ds = dcmread(source, specific_tags=[tag])
    if tag not in ds:
        raise not_found(f"instance {instance.sop_instance_uid} has no attribute {tag_text}")
    element = ds[tag]
    value = element.value
    if element.VR not in BINARY_VRS or not isinstance(value, bytes | bytearray):
        raise not_found(f"attribute {tag_text} of instance {instance.sop_instance_uid} is not bulk data")
    data = bytes(value)
    if not ds.original_encoding[1]:  # big endian: words in little-endian order, as the syntax says
        data = swap_words(data, {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}.get(element.VR, 1))
    return BulkData(data)
