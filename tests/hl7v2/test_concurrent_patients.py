"""Messages about one new patient arriving at once on several connections make one Patient.

Each message (its own control ID) takes the patient's identifier locks and looks the patient up in
one round trip (two statements); the look-up must see the Patient that the message holding the
locks before it committed, or each connection would create its own.
"""

from __future__ import annotations

import threading

import pytest

from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import ack_fields, find_resources, send_message

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = (
    "MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^{event}|{control}|P|2.5.1\r"
    "PID|1||{mrn}^^^HOSP^MR~SS-{mrn}^^^SSA^SS||Concurrent^Carla^{middle}||19800101|F\r"
)
CONNECTIONS = 4


def _send_at_once(port: int, messages: list[bytes]) -> list[bytes]:
    acks: list[bytes] = []
    barrier = threading.Barrier(len(messages))

    def send(message: bytes) -> None:
        barrier.wait()
        acks.append(send_message(port, message))

    threads = [threading.Thread(target=send, args=(m,)) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return acks


@pytest.mark.parametrize("attempt", range(3))
def test_messages_for_one_new_patient_on_several_connections_make_one_patient(mllp_listener, attempt) -> None:
    mrn = f"CONC-{attempt}"
    messages = [
        MESSAGE.format(event=event, control=f"{mrn}-{n}", mrn=mrn, middle=f"M{n}").encode()
        for n, event in enumerate(["A01", "A04", "A08", "A31"][:CONNECTIONS])
    ]

    acks = _send_at_once(mllp_listener.port, messages)

    assert sorted(ack_fields(a)["MSA"][1] for a in acks) == ["AA"] * CONNECTIONS, acks
    [patient] = find_resources("Patient", identifier=f"urn:btt-health:issuer:HOSP|{mrn}")
    assert find_resources("Patient", identifier=f"urn:btt-health:issuer:SSA|SS-{mrn}") == [patient]
    # Every message applied to that one Patient, one after another: the first created it, each
    # later one changed the middle name, so it has one version per message.
    assert patient["meta"]["versionId"] == str(CONNECTIONS)
    rows = InboundMessage.objects.filter(control_id__startswith=f"{mrn}-")
    assert sorted(rows.values_list("state", flat=True)) == ["processed"] * CONNECTIONS
    assert {tuple(r) for r in rows.values_list("resources", flat=True)} == {(f"Patient/{patient['id']}",)}
