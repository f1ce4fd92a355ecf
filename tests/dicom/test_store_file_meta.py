"""The File Meta Information the SCP writes in front of a received data set is exactly what
pynetdicom would have written with pydicom (`scp.encode_file_meta` replaces that per-instance
pydicom data set on the ingest path), and a stored instance carries it."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import create_file_meta

from integrations.dicom import scp, services
from integrations.dicom.models import Instance
from tests.dicom.conftest import DicomNode
from tests.dicom.store_support import make_ct, send_file_raw, write_part10

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "transfer_syntax"),
    [
        (CT_IMAGE_STORAGE, "1.2.3.4", "1.2.840.10008.1.2.1"),  # even lengths
        (CT_IMAGE_STORAGE, "1.2.3.45", "1.2.840.10008.1.2"),  # odd instance and syntax: padded
        ("1.2.840.10008.5.1.4.1.1.4", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.50"),  # 64 characters
    ],
)
def test_encoded_file_meta_is_byte_identical_to_pydicoms(
    sop_class: str, sop_instance: str, transfer_syntax: str
) -> None:
    expected = io.BytesIO()
    write_file_meta_info(
        expected,
        create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=transfer_syntax
        ),
    )
    assert scp.encode_file_meta(sop_class, sop_instance, transfer_syntax) == expected.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_stored_instance_carries_the_file_meta_of_its_association(dicom_node: DicomNode, tmp_path) -> None:
    dataset = make_ct()
    status = send_file_raw(dicom_node.host, dicom_node.port, write_part10(dataset, tmp_path / "ct.dcm"))
    assert status.Status == 0x0000, status
    instance = Instance.objects.get(sop_instance_uid=dataset.SOPInstanceUID)
    meta = dcmread(services.instance_file(instance.sop_instance_uid).path, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert meta.TransferSyntaxUID == instance.transfer_syntax_uid
    assert meta.ImplementationClassUID == PYNETDICOM_IMPLEMENTATION_UID
    assert meta.ImplementationVersionName == PYNETDICOM_IMPLEMENTATION_VERSION
