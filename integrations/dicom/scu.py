"""The node as a service class user: talk to a remote PACS or modality configured as a RemoteAE.

Service functions (commands, tasks and the admin call them; each opens its own association with
our AE title `BTT_DICOM_AET`, over DICOM TLS when `remote.use_tls`):

- `echo(remote) -> int`: C-ECHO; the status (0x0000).
- `find(remote, level, query) -> list[Dataset]`: C-FIND (Patient Root at PATIENT level, Study
  Root otherwise); `query` maps keywords to match values ("" asks for the attribute).
- `move(remote, study_uid, destination_aet=None) -> RetrieveResult`: C-MOVE of a study, by default
  to ourselves (the remote must know our AE title, host and port); our running C-STORE SCP stores it.
- `get(remote, study_uid) -> RetrieveResult`: C-GET of a study over this association; each
  instance is stored and indexed like a C-STORE from a peer (`services.store_instance`).
- `store(remote, sop_uids=None, study_uid=None) -> StoreResult`: C-STORE of stored instances, as
  stored (see `retrieve.py`). `tasks_scu.store_to_remote` runs it with retries and backoff.

`remote` is a RemoteAE or its AE title. Failures raise `ScuError`: `AssociationFailed` (refused,
rejected, aborted, timed out: `transient`, worth retrying) or `OperationFailed` (the peer answered
a failure status, with its comment).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from integrations.dicom import retrieve
from integrations.dicom.models import Instance, RemoteAE

logger = logging.getLogger("integrations.dicom.scu")

# Stored files whose transfer syntax the peer accepted are sent straight from disk, in chunks
# (pynetdicom reads the file's data set bytes; nothing is decoded or held in memory whole). Only
# the paths we pass (see `store`) are affected; datasets are sent as before.
_config.STORE_SEND_CHUNKED_DATASET = True

# Compressed transfer syntaxes a C-GET offers to receive as they are stored on the remote.
GET_COMPRESSED_SYNTAXES = (
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    JPEGExtended12Bit,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)


class ScuError(Exception):
    """A DICOM operation with a remote AE did not succeed."""

    transient = False


class AssociationFailed(ScuError):
    """No association, or it broke: connection refused, rejected, aborted, timed out."""

    transient = True


class OperationFailed(ScuError):
    """The remote answered a failure status."""

    def __init__(self, operation: str, status: int, comment: str = "") -> None:
        self.operation = operation
        self.status = status
        self.comment = comment
        super().__init__(f"{operation} failed: status 0x{status:04X}{f' ({comment})' if comment else ''}")
        # Out of resources (0xA7xx) may pass; other failures will not.
        self.transient = 0xA700 <= status <= 0xA7FF


@dataclass
class RetrieveResult:
    """The outcome of a C-MOVE or C-GET: final status and sub-operation counts."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instance_uids: list[str] = field(default_factory=list)
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0x0000

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": f"0x{self.status:04X}",
            "completed": self.completed,
            "failed": self.failed,
            "warning": self.warning,
            "failed_sop_instance_uids": self.failed_sop_instance_uids,
            "comment": self.comment,
        }


@dataclass
class StoreResult:
    """The outcome of sending instances with C-STORE."""

    sent: list[str] = field(default_factory=list)
    # SOP Instance UID -> (status or None when not sent at all, why)
    failed: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    # Failures that may pass on a later try (association broke, peer out of resources).
    transient: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": len(self.sent),
            "failed": {
                uid: {"status": None if status is None else f"0x{status:04X}", "reason": reason}
                for uid, (status, reason) in self.failed.items()
            },
            "transient": self.transient,
        }


# --- Associations -------------------------------------------------------------------------------


def resolve_remote(remote: RemoteAE | str) -> RemoteAE:
    """A RemoteAE, given one or its AE title (RemoteAE.DoesNotExist when not configured)."""
    if isinstance(remote, RemoteAE):
        return remote
    return RemoteAE.objects.get(ae_title=remote.strip())


def _application_entity() -> AE:
    ae = AE(ae_title=settings.BTT_DICOM_AET)
    timeout = float(getattr(settings, "BTT_DICOM_TIMEOUT", 30.0))
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = int(getattr(settings, "BTT_DICOM_MAX_PDU", 131072))
    return ae


def _failure_reason(assoc: Association) -> str:
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected:
        if primitive is not None:
            return f"association rejected ({primitive.result_str}, {primitive.source_str}: {primitive.reason_str})"
        return "association rejected"
    if primitive is None:  # no A-ASSOCIATE response at all
        return "no association: connection refused, unreachable or timed out"
    if assoc.is_aborted and getattr(primitive, "result", None) == 0x00 and not assoc.accepted_contexts:
        return "association aborted: the peer accepted none of the proposed presentation contexts"
    return "association aborted"


@contextmanager
def _association(
    remote: RemoteAE,
    contexts: list,
    *,
    ext_neg: list | None = None,
    evt_handlers: list | None = None,
) -> Iterator[Association]:
    ae = _application_entity()
    tls = retrieve.tls_args(remote)
    kwargs: dict[str, Any] = {"ae_title": remote.ae_title, "contexts": contexts}
    if ext_neg:
        kwargs["ext_neg"] = ext_neg
    if evt_handlers:
        kwargs["evt_handlers"] = evt_handlers
    if tls is not None:
        kwargs["tls_args"] = tls
    try:
        assoc = ae.associate(remote.host, remote.port, **kwargs)
    except OSError as exc:  # TLS handshake and socket errors
        raise AssociationFailed(f"{remote}: {exc}") from exc
    if not assoc.is_established:
        raise AssociationFailed(f"{remote}: {_failure_reason(assoc)}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _check_alive(assoc: Association, remote: RemoteAE, operation: str) -> None:
    if not assoc.is_established:
        raise AssociationFailed(f"{remote}: association ended during {operation}")


# --- C-ECHO -----------------------------------------------------------------------------------------


def echo(remote: RemoteAE | str) -> int:
    """C-ECHO `remote`; returns the status (0x0000) or raises ScuError."""
    remote = resolve_remote(remote)
    with _association(remote, [build_context(Verification)]) as assoc:
        status = assoc.send_c_echo()
        if "Status" not in status:
            raise AssociationFailed(f"{remote}: no C-ECHO response")
        if status.Status != 0x0000:
            raise OperationFailed("C-ECHO", status.Status, str(status.get("ErrorComment", "")))
        return int(status.Status)


# --- C-FIND -------------------------------------------------------------------------------------------


def _identifier(level: str, keys: Mapping[str, Any]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, "" if value is None else value)
    return identifier


def find(remote: RemoteAE | str, level: str, query: Mapping[str, Any]) -> list[Dataset]:
    """C-FIND `remote` at `level` (PATIENT, STUDY, SERIES, IMAGE) with `query` (keyword -> value).

    PATIENT level uses the Patient Root model, the others Study Root (so a SERIES query needs a
    StudyInstanceUID, an IMAGE query a SeriesInstanceUID too). Returns the response identifiers.
    """
    remote = resolve_remote(remote)
    level = level.strip().upper()
    model = (
        PatientRootQueryRetrieveInformationModelFind
        if level == "PATIENT"
        else StudyRootQueryRetrieveInformationModelFind
    )
    identifier = _identifier(level, query)
    results: list[Dataset] = []
    with _association(remote, [build_context(model)]) as assoc:
        for status, response in assoc.send_c_find(identifier, model):
            if "Status" not in status:
                raise AssociationFailed(f"{remote}: C-FIND got no response (timeout or abort)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):  # Pending
                if response is not None:
                    results.append(response)
            elif code == 0x0000:  # Success
                break
            else:
                raise OperationFailed("C-FIND", code, str(status.get("ErrorComment", "")))
    logger.info("C-FIND %s at %s level: %d matches", remote, level, len(results))
    return results


# --- C-MOVE and C-GET -------------------------------------------------------------------------------


def _retrieve_result(
    operation: str, responses: Iterator[tuple[Dataset, Dataset | None]], remote: RemoteAE
) -> RetrieveResult:
    final: Dataset | None = None
    identifier: Dataset | None = None
    for status, response in responses:
        if "Status" not in status:
            raise AssociationFailed(f"{remote}: {operation} got no response (timeout or abort)")
        final, identifier = status, response
        if int(status.Status) not in (0xFF00, 0xFF01):
            break
    if final is None:
        raise AssociationFailed(f"{remote}: {operation} got no response")
    result = RetrieveResult(
        status=int(final.Status),
        completed=int(final.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(final.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(final.get("NumberOfWarningSuboperations", 0) or 0),
        comment=str(final.get("ErrorComment", "") or ""),
    )
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        value = identifier.FailedSOPInstanceUIDList
        values = [value] if isinstance(value, str) else list(value or [])
        result.failed_sop_instance_uids = [str(v) for v in values if v]
    if result.status not in (0x0000, 0xB000):  # Success, Warning (some sub-operations failed)
        raise OperationFailed(operation, result.status, result.comment)
    return result


def move(remote: RemoteAE | str, study_uid: str, destination_aet: str | None = None) -> RetrieveResult:
    """C-MOVE the study `study_uid` from `remote` to `destination_aet` (default: this node).

    Pulling to ourselves needs the remote to know our AE title as a destination, and our C-STORE
    SCP running (`serve` or `dicom_scp`), which stores and indexes what arrives. Returns the
    sub-operation counts (status 0x0000, or 0xB000 when some failed); raises ScuError.
    """
    remote = resolve_remote(remote)
    destination = destination_aet or settings.BTT_DICOM_AET
    identifier = _identifier("STUDY", {"StudyInstanceUID": study_uid})
    model = StudyRootQueryRetrieveInformationModelMove
    with _association(remote, [build_context(model)]) as assoc:
        result = _retrieve_result("C-MOVE", assoc.send_c_move(identifier, destination, model), remote)
    logger.info("C-MOVE %s study %s to %s: %s", remote, study_uid, destination, result.as_dict())
    return result


def _sop_classes_of_study(remote: RemoteAE, study_uid: str) -> list[str]:
    """The SOP classes of a remote study, from C-FIND (SOPClassesInStudy, else per series)."""
    try:
        studies = find(remote, "STUDY", {"StudyInstanceUID": study_uid, "SOPClassesInStudy": ""})
        classes: list[str] = []
        for study in studies:
            value = study.get("SOPClassesInStudy")
            if value:
                classes += [str(v) for v in (value if not isinstance(value, str) else [value])]
        if classes:
            return sorted(set(classes))
        for series in find(remote, "SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": ""}):
            for image in find(
                remote,
                "IMAGE",
                {
                    "StudyInstanceUID": study_uid,
                    "SeriesInstanceUID": series.SeriesInstanceUID,
                    "SOPClassUID": "",
                },
            ):
                if image.get("SOPClassUID"):
                    classes.append(str(image.SOPClassUID))
        return sorted(set(classes))
    except ScuError as exc:
        logger.info(
            "C-GET %s: could not learn the study's SOP classes (%s); offering common ones", remote, exc
        )
        return []


def _get_contexts(sop_classes: list[str]) -> tuple[list, list]:
    """Requested contexts and role selections for a C-GET receiving `sop_classes` (<= 128 in all).

    Each SOP class gets one context per transfer syntax (Explicit and Implicit VR Little Endian,
    then the compressed ones of GET_COMPRESSED_SYNTAXES) as far as 127 contexts allow, so the
    remote can send each instance as it stores it; with too many classes for that, one context
    of the two uncompressed syntaxes per class (the remote converts or transcodes).
    """
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    if not sop_classes:
        sop_classes = [cx.abstract_syntax for cx in StoragePresentationContexts]
    sop_classes = sop_classes[: retrieve.MAX_CONTEXTS - 1]
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, *GET_COMPRESSED_SYNTAXES]
    per_class = min(len(syntaxes), (retrieve.MAX_CONTEXTS - 1) // len(sop_classes))
    for sop in sop_classes:
        if per_class >= 2:
            contexts += [build_context(sop, syntax) for syntax in syntaxes[:per_class]]
        else:
            contexts.append(build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    roles = [build_role(sop, scp_role=True) for sop in sop_classes]
    return contexts, roles


def get(remote: RemoteAE | str, study_uid: str) -> RetrieveResult:
    """C-GET the study `study_uid` from `remote`: the instances come back on this association and
    are stored and indexed as if a peer had sent them with C-STORE. Raises ScuError."""
    remote = resolve_remote(remote)
    contexts, roles = _get_contexts(_sop_classes_of_study(remote, study_uid))
    identifier = _identifier("STUDY", {"StudyInstanceUID": study_uid})
    receiver = _GetReceiver()
    try:
        with _association(
            remote, contexts, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver.store)]
        ) as assoc:
            result = _retrieve_result(
                "C-GET", assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet), remote
            )
    finally:
        receiver.close()
    logger.info("C-GET %s study %s: %s (%d stored)", remote, study_uid, result.as_dict(), receiver.stored)
    return result


class _GetReceiver:
    """EVT_C_STORE during our C-GET: store and index each instance the remote sends back, through
    `services.store_instance` as the C-STORE SCP does (the remote's AE title is recorded as the
    sender; it needs no allow_store: we asked for the data). The handler runs in pynetdicom's
    association thread; the database connection it opens there is closed by `close()`."""

    def __init__(self) -> None:
        self.stored = 0
        self._connections: list = []

    def store(self, event: evt.Event) -> Any:
        from integrations.dicom import services

        request = event.request
        sender = str(event.assoc.acceptor.ae_title).strip()
        expected = {
            "calling_ae": sender,
            "expected_sop_class_uid": str(request.AffectedSOPClassUID or ""),
            "expected_sop_instance_uid": str(request.AffectedSOPInstanceUID or ""),
        }
        try:
            try:
                path = event.dataset_path  # pynetdicom wrote it to a file (STORE_RECV_CHUNKED_DATASET)
            except AttributeError:
                path = None
            if path is not None:
                services.store_instance(path=path, consume=True, **expected)
            else:
                services.store_instance(
                    fileobj=io.BytesIO(event.encoded_dataset(include_meta=False)),
                    file_meta=event.file_meta,
                    **expected,
                )
            self.stored += 1
        except services.StoreRejected as exc:
            logger.warning(
                "C-GET from %s: %s not stored: %s", sender, expected["expected_sop_instance_uid"], exc
            )
            return _status(exc.status, exc.comment)
        except Exception:
            logger.exception(
                "C-GET from %s: storing %s failed", sender, expected["expected_sop_instance_uid"]
            )
            return _status(0xA700, "out of resources: internal error")  # Out of resources
        finally:
            self._keep_connection()
        return 0x0000  # Success

    def _keep_connection(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        if threading.current_thread() is not threading.main_thread() and connection not in self._connections:
            connection.inc_thread_sharing()  # so that close() may close it from the calling thread
            self._connections.append(connection)

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
            connection.dec_thread_sharing()
        self._connections = []


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


# --- C-STORE ------------------------------------------------------------------------------------------


def instances_for(
    sop_uids: list[str] | None = None, study_uid: str | None = None
) -> list[retrieve.StoredInstance]:
    """The stored instances named by SOP Instance UIDs and/or a study, in series / instance order."""
    if not sop_uids and not study_uid:
        raise ValueError("name the instances to send: sop_uids or study_uid")
    queryset = Instance.objects.all()
    if sop_uids:
        queryset = queryset.filter(sop_instance_uid__in=list(sop_uids))
    if study_uid:
        queryset = queryset.filter(series__study__study_instance_uid=study_uid)
    return retrieve.stored_instances(
        queryset.order_by("series__study_id", "series__series_number", "series_id", "instance_number", "pk")
    )


def _context_groups(items: list[retrieve.StoredInstance]) -> list[list[retrieve.StoredInstance]]:
    """Split `items` so that each group needs at most 128 presentation contexts."""
    groups: list[list[retrieve.StoredInstance]] = []
    pairs: set[tuple[str, str]] = set()
    current: list[retrieve.StoredInstance] = []
    for item in items:
        pair = (item.sop_class_uid, item.transfer_syntax_uid)
        if pair not in pairs and len(pairs) == retrieve.MAX_CONTEXTS:
            groups.append(current)
            current, pairs = [], set()
        pairs.add(pair)
        current.append(item)
    if current:
        groups.append(current)
    return groups


def store(
    remote: RemoteAE | str, sop_uids: list[str] | None = None, study_uid: str | None = None
) -> StoreResult:
    """C-STORE stored instances to `remote`, as stored; returns what was sent and what failed.

    Sending the same instance again is harmless (the peer keeps or replaces it). A broken
    association marks the rest as transient failures; ScuError is raised only when no association
    could be made at all. `tasks_scu.store_to_remote` retries transient failures with backoff.
    """
    remote = resolve_remote(remote)
    items = instances_for(sop_uids, study_uid)
    result = StoreResult()
    if sop_uids:
        found = {item.sop_instance_uid for item in items}
        for uid in sop_uids:
            if uid not in found:
                result.failed[uid] = (None, "not stored on this node")
    for group in _context_groups(items):
        _store_group(remote, group, result)
    logger.info("C-STORE to %s: %d sent, %d failed", remote, len(result.sent), len(result.failed))
    return result


def _store_group(remote: RemoteAE, items: list[retrieve.StoredInstance], result: StoreResult) -> None:
    with _association(remote, retrieve.presentation_contexts(items)) as assoc:
        accepted = retrieve.accepted_storage_contexts(assoc)
        for index, item in enumerate(items):
            uid = item.sop_instance_uid
            problem = retrieve.sendable_problem(item, accepted)
            if problem is not None:
                logger.error("C-STORE to %s: %s not sent: %s", remote, uid, problem)
                result.failed[uid] = (None, problem)
                continue
            path = retrieve.stored_path(item) if retrieve.accepted_as_stored(item, accepted) else None
            try:
                payload: Any = path if path is not None else retrieve.read_dataset(item)
                status = assoc.send_c_store(payload, msg_id=(index % 65535) + 1)
            except (OSError, ValueError, AttributeError) as exc:
                logger.error("C-STORE to %s: %s not sent: %s", remote, uid, exc)
                result.failed[uid] = (None, str(exc))
                continue
            if "Status" not in status:
                # Timeout or abort: this and everything after it may pass on a later try.
                reason = "no C-STORE response (association broke or timed out)"
                for rest in items[index:]:
                    result.failed[rest.sop_instance_uid] = (None, reason)
                    result.transient.append(rest.sop_instance_uid)
                logger.error("C-STORE to %s: %s", remote, reason)
                return
            code = int(status.Status)
            if code == 0x0000 or 0xB000 <= code <= 0xBFFF or code == 0x0107:  # Success, Warning
                result.sent.append(uid)
                continue
            comment = str(status.get("ErrorComment", "") or "")
            result.failed[uid] = (code, comment)
            if 0xA700 <= code <= 0xA7FF:  # Out of resources: try again later
                result.transient.append(uid)
            logger.error("C-STORE to %s: %s refused: 0x%04X %s", remote, uid, code, comment)
