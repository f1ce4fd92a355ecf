"""Helpers for the storage, C-STORE and bad-input tests (test_store_*, test_bad_input_*, test_tls).

- `dataset_bytes(path)`: the encoded data set of a Part 10 file (what follows its File Meta);
- `send_file_raw(...)`: C-STORE a Part 10 file with pynetdicom *without decoding it*: its data
  set bytes go on the wire exactly as they are in the file (`STORE_SEND_CHUNKED_DATASET`), so
  what the node stored can be compared byte for byte with the file;
- `make_ct(...)` / `write_part10(...)`: small synthetic CT images with chosen UIDs;
- `with_transfer_syntax(...)`, `corrupt_vr(...)`: variants of a file for bad input;
- `storage_files()`: every file in the instance storage (and what is staged).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from integrations.dicom.dataset_check import read_file_meta
from integrations.dicom.storage import _FOLDERS_MADE

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_PREFIX = "1.2.826.0.1.3680043.10.1055.7."


def new_uid() -> str:
    return generate_uid(prefix=UID_PREFIX)


def dataset_bytes(path: Path | str) -> bytes:
    """The bytes of the data set of a Part 10 file, after its preamble and File Meta Information."""
    layout = read_file_meta(Path(path))
    with open(path, "rb") as handle:
        handle.seek(layout.dataset_offset)
        return handle.read()


@contextlib.contextmanager
def chunked_send() -> Iterator[None]:
    """pynetdicom sends files given by path without decoding them while this is active."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def send_file_raw(
    host: str,
    port: int,
    path: Path | str,
    *,
    called_ae: str = "BTTHEALTH",
    calling_ae: str = "PYNETDICOM",
    tls_args: tuple | None = None,
    max_pdu: int = 16382,
) -> Dataset:
    """C-STORE the Part 10 file `path` as is (its own transfer syntax, its bytes); return the status."""
    meta = read_file_meta(Path(path))
    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(meta.media_storage_sop_class_uid, [meta.transfer_syntax_uid])
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    assert assoc.is_established, f"association to {host}:{port} not established"
    try:
        with chunked_send():
            status = assoc.send_c_store(Path(path))
    finally:
        assoc.release()
    assert status is not None, "no C-STORE response"
    assert "Status" in status, "no C-STORE response"
    return status


def make_ct(
    *,
    patient_id: str = "PAT-1",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 8,
    columns: int = 8,
    description: str = "Synthetic CT",
    sop_class: str = CT_IMAGE_STORAGE,
) -> FileDataset:
    """A small CT image (explicit VR little endian) with the given identifiers."""
    sop_uid = sop_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\x00" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-1"
    ds.Modality = "CT"
    ds.StudyDescription = description
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((i * 7) % 256 for i in range(rows * columns * 2))
    return ds


def write_part10(ds: FileDataset, path: Path, *, fix_meta: bool = True) -> Path:
    """Write `ds` as a Part 10 file and return the path. pydicom sets the File Meta's Media Storage
    UIDs from the data set; with `fix_meta=False` the File Meta is written exactly as given."""
    if fix_meta:
        ds.save_as(path, enforce_file_format=True)
        return path
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset, write_file_meta_info

    with open(path, "wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, ds.file_meta, enforce_standard=True)
        stream = DicomFileLike(handle)
        stream.is_little_endian, stream.is_implicit_VR = True, False  # make_ct's File Meta says so
        write_dataset(stream, Dataset(ds))
    return path


def with_transfer_syntax(source: Path, transfer_syntax: str, target: Path) -> Path:
    """A copy of `source` whose File Meta says `transfer_syntax` (same length UID, data set untouched).

    Used to label a JPEG lossless SV1 stream as JPEG lossless process 14 (1.2.840.10008.1.2.4.57):
    every SV1 bit stream is a valid process 14 one."""
    data = bytearray(Path(source).read_bytes())
    old = read_file_meta(Path(source)).transfer_syntax_uid.encode()
    new = transfer_syntax.encode()
    assert len(old) == len(new), "only same-length transfer syntax UIDs are swapped in place"
    index = data.index(old, 132)
    data[index : index + len(old)] = new
    target.write_bytes(bytes(data))
    return target


def corrupt_vr(source: Path, keyword_vr: bytes, tag: bytes, bad_vr: bytes, target: Path) -> Path:
    """A copy of an explicit VR little endian file with the VR of element `tag` (its 4 tag bytes)
    replaced by `bad_vr`."""
    data = bytearray(Path(source).read_bytes())
    start = read_file_meta(Path(source)).dataset_offset
    index = data.index(tag + keyword_vr, start)
    data[index + 4 : index + 6] = bad_vr
    target.write_bytes(bytes(data))
    return target


def storage_files(root: Path) -> set[str]:
    """Every file below the instance storage folder `root` (relative paths), staging included, but
    not the layout's marker (`storage._FOLDERS_MADE`)."""
    if not root.exists():
        return set()
    found = set()
    for folder, _, files in os.walk(root):
        for name in files:
            found.add(str(Path(folder, name).relative_to(root)))
    return found - {_FOLDERS_MADE}


def copy_to(source: Path, folder: Path, name: str | None = None) -> Path:
    target = folder / (name or Path(source).name)
    shutil.copyfile(source, target)
    return target


# --- A DICOM peer that misbehaves on purpose: raw PDUs over a plain socket -------------------------


class RawAssociation:
    """A hand-driven association: send whole, partial or forged PDUs, read the node's answers.

    `RawAssociation(host, port, contexts=[(sop_class, [transfer syntaxes])])` connects and
    negotiates; `.accepted` maps the accepted context ids to (abstract syntax, transfer syntax).
    `store_pdus(...)` encodes a C-STORE request into P-DATA-TF PDUs (bytes) to send some or all.
    """

    def __init__(
        self,
        host: str,
        port: int,
        contexts: list[tuple[str, list[str]]],
        *,
        calling_ae: str = "RAWSCU",
        called_ae: str = "BTTHEALTH",
        max_pdu: int = 16384,
        timeout: float = 30.0,
        negotiate: bool = True,
    ) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.calling_ae, self.called_ae = calling_ae, called_ae
        self.contexts, self.max_pdu = contexts, max_pdu
        self.accepted: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        if negotiate:
            self.associate()

    def associate(self) -> None:
        from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            ImplementationClassUIDNotification,
            MaximumLengthNotification,
        )
        from pynetdicom.presentation import build_context

        primitive = A_ASSOCIATE()
        primitive.application_context_name = "1.2.840.10008.3.1.1.1"
        primitive.calling_ae_title = self.calling_ae
        primitive.called_ae_title = self.called_ae
        contexts = []
        for number, (abstract, syntaxes) in enumerate(self.contexts):
            context = build_context(abstract, syntaxes)
            context.context_id = 2 * number + 1
            contexts.append(context)
        primitive.presentation_context_definition_list = contexts
        length = MaximumLengthNotification()
        length.maximum_length_received = self.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = "1.2.826.0.1.3680043.10.1055.99"
        primitive.user_information = [length, implementation]
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        self.sock.sendall(request.encode())
        pdu_type, data = self.read_pdu()
        if pdu_type == 0x03:
            reject = A_ASSOCIATE_RJ()
            reject.decode(data)
            raise AssertionError(
                f"association rejected: {reject.result_str}, {reject.source_str}, {reject.reason_str}"
            )
        assert pdu_type == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {pdu_type:#x}"
        accept = A_ASSOCIATE_AC()
        accept.decode(data)
        for context in accept.presentation_context:
            if context.result == 0:
                abstract = self.contexts[(context.context_id - 1) // 2][0]
                self.accepted[context.context_id] = (abstract, str(context.transfer_syntax))
        for item in accept.user_information.user_data:
            if type(item).__name__ == "MaximumLengthSubItem":
                self.peer_max_pdu = item.maximum_length_received

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU: (type, whole PDU bytes). Raises ConnectionError when the node closed."""
        header = self._read_exactly(6)
        length = int.from_bytes(header[2:6], "big")
        return header[0], header + self._read_exactly(length)

    def _read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def closed_by_peer(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the node to close the connection (reading what it sends)."""

        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    def context_for(self, abstract: str) -> int:
        return next(cid for cid, (syntax, _) in self.accepted.items() if syntax == abstract)

    def store_pdus(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> list[bytes]:
        """A C-STORE request for the encoded `dataset` as P-DATA-TF PDUs, fragmented to the node's maximum."""
        from io import BytesIO

        from pynetdicom.dimse_messages import C_STORE_RQ
        from pynetdicom.dimse_primitives import C_STORE
        from pynetdicom.pdu import P_DATA_TF

        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_instance
        request.Priority = 2
        request.DataSet = BytesIO(dataset)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        pdus = []
        for primitive in message.encode_msg(context_id, self.peer_max_pdu or 16384):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            pdus.append(pdu.encode())
        return pdus

    def read_store_status(self) -> Dataset:
        """Read the C-STORE response and return its command set (Status, ErrorComment, ...)."""
        from io import BytesIO

        from pydicom.filereader import read_dataset
        from pynetdicom.pdu import P_DATA_TF

        command = b""
        while True:
            pdu_type, data = self.read_pdu()
            assert pdu_type == 0x04, f"expected P-DATA-TF, got PDU type {pdu_type:#x}"
            pdata = P_DATA_TF()
            pdata.decode(data)
            for item in pdata.presentation_data_value_items:
                header, value = item.presentation_data_value[0], item.presentation_data_value[1:]
                if header & 1:
                    command += value
                    if header & 2:
                        return read_dataset(BytesIO(command), True, True)

    def release(self) -> None:
        from contextlib import suppress

        with suppress(OSError):
            self.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
            self.read_pdu()
        self.close()

    def close(self) -> None:
        from contextlib import suppress

        with suppress(OSError):
            self.sock.close()
