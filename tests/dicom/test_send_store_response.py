"""The C-STORE success response the SCP writes itself (`send.c_store_success_pdu`) is byte for byte
the PDU pynetdicom would have sent; failures keep going through pynetdicom with their Error
Comment (tests/dicom/test_store_failures.py, test_bad_input_dataset.py)."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from integrations.dicom.send import c_store_success_pdu


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "message_id", "context_id"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 1, 1),  # even lengths
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", 65535, 255),  # odd: padded; largest IDs
        ("1.2.840.10008.5.1.4.1.1.88.22", "2.25." + "1" * 59, 300, 7),  # 64-character UID
    ],
)
def test_success_pdu_is_byte_identical_to_pynetdicoms(
    sop_class: str, sop_instance: str, message_id: int, context_id: int
) -> None:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = sop_class
    response.AffectedSOPInstanceUID = sop_instance
    response.Status = 0x0000
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    (p_data,) = list(message.encode_msg(context_id, 16384))
    pdu = P_DATA_TF()
    pdu.from_primitive(p_data)
    assert c_store_success_pdu(context_id, message_id, sop_class, sop_instance) == pdu.encode()
