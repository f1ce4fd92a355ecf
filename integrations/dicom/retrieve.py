"""Sending stored instances: what C-MOVE, C-GET (SCP) and C-STORE (SCU) share.

Instances are sent as stored: the dataset read from the stored file (its raw element values, pixel
data still encoded as received) under the transfer syntax it was received in. Each (SOP class,
transfer syntax) pair gets its own presentation context; an uncompressed one also offers the other
uncompressed syntaxes, so a peer that does not take the stored one still gets it converted
(Explicit / Implicit VR Little Endian). A compressed instance whose transfer syntax the peer did
not accept is not decoded: its sub-operation fails, with a log line naming the syntax.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.db.models import QuerySet
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import PresentationContext, build_context

from integrations.dicom.storage import get_instance_storage

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from integrations.dicom.models import RemoteAE

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts in one association request
UNCOMPRESSED = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
# What an uncompressed instance may be converted to when the peer does not take its own syntax.
CONVERSION_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class StoredInstance:
    """What sending one stored instance needs (a row of the index, without its JSON)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str


def stored_instances(instances: QuerySet) -> list[StoredInstance]:
    """The rows of an Instance queryset as StoredInstance, in the queryset's order."""
    return [
        StoredInstance(*row)
        for row in instances.values_list(
            "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "storage_key"
        )
    ]


def is_uncompressed(transfer_syntax: str) -> bool:
    return UID(transfer_syntax) in UNCOMPRESSED


def stored_path(item: StoredInstance) -> Path | None:
    """A local path of the stored file, where the storage backend has one."""
    path = get_instance_storage().path(item.storage_key)
    return Path(path) if path is not None else None


def read_dataset(item: StoredInstance) -> Dataset:
    """The stored instance as a pydicom FileDataset: elements kept raw, as received."""
    storage = get_instance_storage()
    with storage.open(item.storage_key) as handle:
        dataset = dcmread(handle)
    if "TransferSyntaxUID" not in getattr(dataset, "file_meta", Dataset()):
        dataset.file_meta.TransferSyntaxUID = item.transfer_syntax_uid
    return dataset


def unsendable_dataset(item: StoredInstance) -> Dataset:
    """A dataset pynetdicom cannot send (no file meta): a C-MOVE / C-GET sub-operation that fails
    and is listed in the response's FailedSOPInstanceUIDList."""
    dataset = Dataset()
    dataset.SOPClassUID = item.sop_class_uid
    dataset.SOPInstanceUID = item.sop_instance_uid
    return dataset


def is_convertible(transfer_syntax: str) -> bool:
    """Whether an instance stored in `transfer_syntax` may be sent converted: the little endian
    uncompressed syntaxes (explicit <-> implicit VR, deflated <-> inflated). Big endian is not
    (its OW pixel data would need byte swapping), compressed data is never transcoded."""
    syntax = UID(transfer_syntax)
    return syntax in UNCOMPRESSED and syntax.is_little_endian


def presentation_contexts(items: list[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose for sending `items`.

    One context per (SOP class, stored transfer syntax) offering exactly that syntax, so a peer
    that takes it gets the instance as stored; and, per SOP class with little endian uncompressed
    instances, one more offering Explicit and Implicit VR Little Endian for a peer that takes
    neither stored syntax (pynetdicom then converts). Beyond 128 contexts the syntaxes of a SOP
    class are merged into one context (the peer picks one); beyond 128 SOP classes the rest is
    left out (those sub-operations fail).
    """
    exact: dict[tuple[str, str], None] = {}
    fallback: dict[str, None] = {}
    for item in items:
        exact[(item.sop_class_uid, item.transfer_syntax_uid)] = None
        if is_convertible(item.transfer_syntax_uid):
            fallback[item.sop_class_uid] = None
    if len(exact) + len(fallback) <= MAX_CONTEXTS:
        contexts = [build_context(sop, ts) for sop, ts in exact]
        contexts += [build_context(sop, list(CONVERSION_TARGETS)) for sop in fallback]
        return contexts
    merged: dict[str, list[str]] = {}
    for sop, ts in exact:
        syntaxes = merged.setdefault(sop, [])
        for syntax in [ts, *(CONVERSION_TARGETS if is_convertible(ts) else ())]:
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return [build_context(sop, syntaxes) for sop, syntaxes in list(merged.items())[:MAX_CONTEXTS]]


def accepted_storage_contexts(assoc: Association) -> dict[str, set[str]]:
    """The transfer syntaxes the peer accepted, per SOP class, for us sending C-STORE requests."""
    accepted: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:
        if context.as_scu and context.transfer_syntax:
            accepted.setdefault(str(context.abstract_syntax), set()).add(str(context.transfer_syntax[0]))
    return accepted


def sendable_problem(item: StoredInstance, accepted: dict[str, set[str]]) -> str | None:
    """Why `item` cannot be sent over an association with these accepted contexts (None: it can)."""
    syntaxes = accepted.get(item.sop_class_uid)
    if not syntaxes:
        return (
            f"the peer accepted no presentation context for {UID(item.sop_class_uid).name} stored as "
            f"{UID(item.transfer_syntax_uid).name} ({item.transfer_syntax_uid})"
        )
    if item.transfer_syntax_uid in syntaxes:
        return None
    if is_convertible(item.transfer_syntax_uid) and any(is_convertible(ts) for ts in syntaxes):
        return None
    why = (
        "it is not converted"
        if is_uncompressed(item.transfer_syntax_uid)
        else "compressed data is not transcoded"
    )
    return (
        f"stored as {UID(item.transfer_syntax_uid).name} ({item.transfer_syntax_uid}), which the peer "
        f"did not accept, and {why}"
    )


def accepted_as_stored(item: StoredInstance, accepted: dict[str, set[str]]) -> bool:
    return item.transfer_syntax_uid in accepted.get(item.sop_class_uid, set())


# --- DICOM TLS (client side) ----------------------------------------------------------------------


def client_ssl_context() -> ssl.SSLContext:
    """The TLS context for connecting to peers (`tls.client_context`: BTT_DICOM_TLS_CA verifies
    them, BTT_DICOM_TLS_CERT / _KEY is our client certificate where set)."""
    from integrations.dicom.tls import client_context

    return client_context()


def tls_args(remote: RemoteAE) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for associating with `remote`: None unless it uses TLS."""
    if not remote.use_tls:
        return None
    return client_ssl_context(), remote.host
