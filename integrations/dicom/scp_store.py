"""C-ECHO and C-STORE service class providers: thin handlers over `services.store_instance`.

`scp.py` binds `STORE_HANDLERS` and calls `add_store_contexts(ae)`. The C-STORE handler never
holds a data set in memory: pynetdicom writes each received data set to a file in the staging
folder as it arrives (`_config.STORE_RECV_CHUNKED_DATASET`, set by `scp.build_ae`), and the
handler hands that file to `services.store_instance`, which moves it into the instance storage.

Answers (PS3.4 B.2.3; every failure carries an Error Comment saying why):

- 0x0000 success: the instance is durable and indexed (or, under the `keep` duplicate policy,
  was already);
- 0x0124 refused, not authorised: the calling AE may not store (RemoteAE.allow_store off, or an
  unknown AE in allow-list mode that got this far);
- 0x0122 refused, SOP class not supported: the request's SOP class is not the abstract syntax of
  the presentation context it came on (a SOP class that was not negotiated);
- 0xA900 data set does not match SOP class; 0xC000-0xC003 cannot understand (malformed or
  truncated data set, invalid VR, missing UIDs, SOP Instance UID mismatch): see `services`;
- 0xA700 out of resources: storage or database failure, or an unexpected error.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification

from integrations.dicom import services

logger = logging.getLogger("integrations.dicom.scp")

# Every transfer syntax pydicom knows (uncompressed little and big endian, deflated, JPEG
# baseline/extended/lossless/SV1, JPEG-LS, JPEG 2000 and HTJ2K, RLE, MPEG/HEVC video, SMPTE
# 2110), plus the ones it does not name: JPIP referenced (and deflate), JPEG XL. The list order
# matters little: `scp.py` accepts, per context, the first syntax the *sender* proposes.
EXTRA_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.4.94",  # JPIP Referenced
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
)
STORE_TRANSFER_SYNTAXES: list[str] = list(
    dict.fromkeys([*(str(uid) for uid in AllTransferSyntaxes), *EXTRA_TRANSFER_SYNTAXES])
)
# Every storage SOP class pynetdicom knows (PS3.4 annex B, ~170).
STORAGE_SOP_CLASSES: list[str] = sorted(set(_STORAGE_CLASSES.values()))

ECHO_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]


def add_store_contexts(ae: AE) -> None:
    """Support Verification and every storage SOP class with every transfer syntax above."""
    ae.add_supported_context(Verification, ECHO_TRANSFER_SYNTAXES)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, STORE_TRANSFER_SYNTAXES)


def peer_of(assoc: Any) -> services.PeerPermissions:
    """The calling AE's permissions, looked up once per association (see `scp.on_requested`)."""
    peer = getattr(assoc, "btt_peer", None)
    if peer is None:
        peer = services.peer_permissions(str(assoc.requestor.ae_title))
        assoc.btt_peer = peer
    return peer


def status(code: int, comment: str = "", tag: int | None = None) -> Dataset:
    """A C-STORE / C-ECHO response status with its Error Comment (and Offending Element)."""
    answer = Dataset()
    answer.Status = code
    if comment:
        answer.ErrorComment = comment[:64]
    if tag is not None:
        answer.OffendingElement = [tag]
    return answer


def handle_echo(event: Event) -> int:
    """C-ECHO: any associated peer may check the connection."""
    return 0x0000  # Success


def handle_store(event: Event) -> int | Dataset:
    """C-STORE: check the peer and the context, then store through `services.store_instance`."""
    answer = _store(event)
    stats = getattr(event.assoc, "btt_stats", None)
    if stats is not None:
        stats["stored" if answer == 0x0000 else "failed"] += 1
    return answer


def _store(event: Event) -> int | Dataset:
    request = event.request
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    sop_class = str(request.AffectedSOPClassUID or "")
    sop_instance = str(request.AffectedSOPInstanceUID or "")
    try:
        peer = peer_of(event.assoc)
        if not peer.store:
            logger.warning("C-STORE %s from %s refused: not allowed to store", sop_instance, calling_ae)
            return status(0x0124, f"AE {calling_ae} is not allowed to store here")  # Refused: Not authorised
        if UID(sop_class) != UID(event.context.abstract_syntax):
            logger.warning(
                "C-STORE %s from %s refused: SOP class %s sent on the context of %s",
                sop_instance,
                calling_ae,
                sop_class,
                event.context.abstract_syntax,
            )
            # Refused: SOP Class not supported (on this presentation context)
            return status(0x0122, "SOP Class UID not negotiated on this presentation context", 0x00000002)
        try:
            path = event.dataset_path
        except AttributeError:  # chunked receiving off (e.g. a C-GET requestor's own SCP)
            path = None
        if path is not None:
            services.store_instance(
                path=path,
                consume=True,
                calling_ae=calling_ae,
                expected_sop_class_uid=sop_class,
                expected_sop_instance_uid=sop_instance,
            )
        else:
            services.store_instance(
                fileobj=io.BytesIO(event.encoded_dataset(include_meta=False)),
                file_meta=event.file_meta,
                calling_ae=calling_ae,
                expected_sop_class_uid=sop_class,
                expected_sop_instance_uid=sop_instance,
            )
    except services.StoreRejected as rejected:
        logger.warning("C-STORE %s from %s failed: %s", sop_instance, calling_ae, rejected)
        # 0xA700 Out of resources / 0xA900 Data set does not match SOP class / 0xCxxx Cannot understand
        return status(rejected.status, rejected.comment, rejected.tag)
    except Exception:
        logger.exception("C-STORE %s from %s: unexpected error", sop_instance, calling_ae)
        return status(0xA700, "out of resources: internal error")  # Out of resources
    return 0x0000  # Success


STORE_HANDLERS: list[tuple] = [
    (evt.EVT_C_ECHO, handle_echo),
    (evt.EVT_C_STORE, handle_store),
]
