"""ORM^O01 and OMI^O23 become ServiceRequests; the accession number links the order and the
ImagingStudy whichever arrives first.

The DICOM side runs as it does in the node: index rows as the C-STORE path writes them
(tests/dicom/test_study_complete_support.store_instances) and the ImagingStudy written by
`integrations.dicom.imaging_study.sync_imaging_study`, as its Celery task does. The messages go
through `services.receive_message`, what the listener calls for each message (in-process here, so
the test's transaction holds both sides).
"""

from __future__ import annotations

import pytest

from integrations.dicom.imaging_study import sync_imaging_study
from integrations.dicom.models import Study
from integrations.fhir import store
from integrations.hl7v2 import services
from tests.dicom.test_study_complete_support import SeriesSpec, new_uid, store_instances
from tests.hl7v2.conftest import ack_fields, find_resources, read_fixture, send_message

ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}


@pytest.mark.django_db(transaction=True)
def test_orm_o01_over_mllp_creates_the_service_request(mllp_listener) -> None:
    ack = send_message(mllp_listener.port, read_fixture("orm_o01_v23_new_order.hl7"))

    assert ack_fields(ack)["MSA"][1:3] == ["AA", "ORM2001"]
    [patient] = find_resources("Patient", identifier="urn:btt-health:issuer:GENHOSP|MRN40004")
    [request] = find_resources("ServiceRequest", identifier="urn:btt-health:issuer:CPOE|PLC5001")
    assert request["status"] == "active"
    assert request["intent"] == "order"
    assert request["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert request["code"]["coding"] == [
        {"system": "http://www.ama-assn.org/go/cpt", "code": "71250", "display": "CT THORAX W/O CONTRAST"}
    ]
    assert {"type": ACSN, "value": "ACC9001"} in request["identifier"]
    assert request["occurrenceDateTime"] == "2024-03-17T09:30:00+00:00"
    assert request["priority"] == "routine"
    assert request["requester"] == {"display": "Dr. Gregory House"}
    assert request["note"] == [{"text": "Chronic cough & weight loss"}]
    assert request["reasonCode"][0]["coding"][0]["code"] == "R05"

    cancel = (
        read_fixture("orm_o01_v23_new_order.hl7")
        .replace(b"ORC|NW|", b"ORC|CA|")
        .replace(b"ORM2001", b"ORM2002")
    )
    assert ack_fields(send_message(mllp_listener.port, cancel))["MSA"][1] == "AA"
    [request] = find_resources("ServiceRequest", identifier="urn:btt-health:issuer:CPOE|PLC5001")
    assert request["status"] == "revoked"
    assert request["meta"]["versionId"] == "2"


@pytest.mark.django_db(transaction=True)
def test_omi_o23_crlf_utf8_takes_the_accession_from_ipc(mllp_listener) -> None:
    ack = send_message(mllp_listener.port, read_fixture("omi_o23_v251_order.hl7"))

    assert ack_fields(ack)["MSA"][1:3] == ["AA", "OMI3001"]
    [request] = find_resources("ServiceRequest", identifier="urn:btt-health:issuer:RIS|FIL8001")
    assert {"type": ACSN, "system": "urn:btt-health:issuer:RIS", "value": "ACC9101"} in request["identifier"]
    assert request["priority"] == "stat"
    assert request["occurrenceDateTime"] == "2024-03-18T10:00:00+01:00"
    [patient] = find_resources("Patient", identifier="urn:btt-health:issuer:GENHOSP|MRN50005")
    assert patient["name"][0]["given"] == ["Émile"]


def _order(accession: str, control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|CPOE|GENHOSP|BTT|RAD|20240316||ORM^O01|{control_id}|P|2.4\r"
        "PID|1||PAT-1^^^^MR||Doe^Jane||19800102|F\r"
        f"ORC|NW|PLC-{control_id}\r"
        f"OBR|1|PLC-{control_id}||71250^CT THORAX^C4||||||||||||||{accession}\r"
    ).encode()


@pytest.mark.django_db
def test_images_first_then_order_links_the_imaging_study() -> None:
    uid = new_uid()
    store_instances(uid, [SeriesSpec()], accession="ACC-IMG-FIRST")
    study_id = sync_imaging_study(Study.objects.get(study_instance_uid=uid))
    assert "basedOn" not in store.read_resource("ImagingStudy", study_id).as_dict()

    received = services.receive_message(_order("ACC-IMG-FIRST", "ORD-1"))

    assert received.ack_code == "AA", received.ack
    [request] = find_resources("ServiceRequest", identifier="PLC-ORD-1")
    study = store.read_resource("ImagingStudy", study_id).as_dict()
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]
    # The DICOM node's next write keeps the link: it finds the order by accession itself.
    sync_imaging_study(Study.objects.get(study_instance_uid=uid))
    assert store.read_resource("ImagingStudy", study_id).as_dict()["basedOn"] == study["basedOn"]


@pytest.mark.django_db
def test_order_first_then_images_links_the_imaging_study() -> None:
    received = services.receive_message(_order("ACC-ORDER-FIRST", "ORD-2"))
    assert received.ack_code == "AA", received.ack
    [request] = find_resources("ServiceRequest", identifier="PLC-ORD-2")

    uid = new_uid()
    store_instances(uid, [SeriesSpec()], accession="ACC-ORDER-FIRST")
    study_id = sync_imaging_study(Study.objects.get(study_instance_uid=uid))

    study = store.read_resource("ImagingStudy", study_id).as_dict()
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]
    # The order names the same Patient the DICOM node matched (PID-3 without authority and the
    # DICOM Patient ID without issuer share the hospital's MRN system).
    assert study["subject"] == request["subject"]
