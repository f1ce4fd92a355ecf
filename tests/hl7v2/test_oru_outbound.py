"""A DiagnosticReport PUT as final over the FHIR API goes out as ORU^R01 to each destination.

Real parts: the FHIR REST API (in-process test client), the `report_finalised` event, a Celery
worker process on the test broker doing the delivery, and python-hl7's asyncio MLLP server as the
receiving system, which answers each message with its own ACK (MSA-2 = our MSH-10). The receiver
is down at first: the delivery fails, is retried with backoff, and succeeds once it listens.
"""

from __future__ import annotations

import asyncio
import threading

import hl7
import hl7.mllp
import pytest

from integrations.fhir import store
from integrations.hl7v2.models import OutboundMessage
from integrations.hl7v2.services import add_or_update_destination
from tests.hl7v2.conftest import ack_fields
from tests.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """python-hl7's asyncio MLLP server in a thread, acknowledging (AA) and keeping every message."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, reader, writer) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.messages.append(str(message))
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            hl7.mllp.start_hl7_server(self._handle, "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _report_fixture() -> dict:
    patient = store.create_resource(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:btt-health:issuer:GENHOSP", "value": "MRN-ORU-1"}],
            "name": [{"family": "Oru", "given": ["Olga"]}],
            "gender": "female",
            "birthDate": "1975-05-05",
        }
    ).stored.logical_id
    request = store.create_resource(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient}"},
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}]
            },
            "identifier": [
                {
                    "type": {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}
                        ]
                    },
                    "value": "PLC-ORU-1",
                },
                {
                    "type": {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                        ]
                    },
                    "value": "ACC-ORU-1",
                },
            ],
        }
    ).stored.logical_id
    report = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 Views"}]
        },
        "subject": {"reference": f"Patient/{patient}"},
        "basedOn": [{"reference": f"ServiceRequest/{request}"}],
        "effectiveDateTime": "2024-03-18T10:05:00+01:00",
        "conclusion": "No acute findings.\nHeart size normal | lungs clear.",
    }
    report_id = store.create_resource(report).stored.logical_id
    return {**report, "id": report_id}


def _received_once_listening(port: int, message: OutboundMessage, what: str) -> list[str]:
    """Listen on `port` until `message` is delivered; what the receiver got meanwhile."""
    receiver = Receiver(port)
    receiver.start()
    try:
        wait_until(
            lambda: OutboundMessage.objects.filter(pk=message.pk, state="delivered").exists(), 90, what
        )
    finally:
        receiver.stop()
    return receiver.messages


def test_final_report_goes_out_as_oru_with_retries(celery_worker_process, api_client) -> None:
    port = free_port()
    destination, _ = add_or_update_destination("RIS", "127.0.0.1", port, receiving_application="RIS")
    report = _report_fixture()
    assert not OutboundMessage.objects.exists()  # preliminary: nothing to send

    response = api_client.put(
        f"/fhir/DiagnosticReport/{report['id']}",
        {**report, "status": "final"},
        content_type="application/fhir+json",
    )
    assert response.status_code == 200, response.content

    message = OutboundMessage.objects.get()
    assert message.event_id == f"report_finalised:{report['id']}:2"
    # The receiver is down: the first attempt fails and is retried.
    wait_until(
        lambda: OutboundMessage.objects.filter(pk=message.pk, attempts__gte=1).exists(), 60, "a first attempt"
    )
    message.refresh_from_db()
    assert message.state == OutboundMessage.State.PENDING
    assert "to be retried" in message.last_error
    assert f"127.0.0.1:{port}" in message.last_error

    received = _received_once_listening(port, message, "the delivery after the receiver started")
    message.refresh_from_db()
    assert message.ack_code == "AA"
    assert ack_fields(message.ack)["MSA"][1:3] == ["AA", message.control_id]
    assert message.attempts >= 2
    assert len(received) == 1
    oru = hl7.parse(received[0])
    assert str(oru.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(oru.segment("MSH")[10]) == message.control_id
    assert str(oru.segment("MSH")[5]) == "RIS"
    assert "MRN-ORU-1^^^GENHOSP" in str(oru.segment("PID")[3])
    assert str(oru.segment("ORC")[2]) == "PLC-ORU-1"
    obr = oru.segment("OBR")
    assert str(obr[4]) == "36643-5^XR Chest 2 Views^LN"
    assert str(obr[18]) == "ACC-ORU-1"
    assert str(obr[25]) == "F"
    conclusion = next(s for s in oru.segments("OBX") if str(s[2]) == "TX")
    assert str(conclusion[5]) == r"No acute findings.\.br\Heart size normal \F\ lungs clear."

    # Rewritten as final again: no new event. Amended: a second ORU, status C.
    current = store.read_resource("DiagnosticReport", report["id"]).as_dict()
    api_client.put(f"/fhir/DiagnosticReport/{report['id']}", current, content_type="application/fhir+json")
    assert OutboundMessage.objects.count() == 1
    amended = {**current, "status": "amended", "conclusion": "Addendum: small nodule."}
    response = api_client.put(
        f"/fhir/DiagnosticReport/{report['id']}", amended, content_type="application/fhir+json"
    )
    assert response.status_code == 200
    assert OutboundMessage.objects.count() == 2
    second = OutboundMessage.objects.exclude(pk=message.pk).get()
    assert "|C\r" in second.payload.split("OBR|", 1)[1].split("\r", 1)[0] + "\r"
    assert destination.messages.count() == 2

    # The amended one goes out too once the receiver is back. (Left pending, its retries ran on
    # in the session's worker: one raced pytest-django's TRUNCATE at teardown into a deadlock.)
    received = _received_once_listening(port, second, "the amended report's delivery")
    assert [str(hl7.parse(m).segment("OBR")[25]) for m in received] == ["C"]
