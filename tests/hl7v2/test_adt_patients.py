"""ADT^A01/A04/A08/A28/A31 over MLLP create and update FHIR Patients (integrations/hl7v2).

python-hl7 is the EHR: files of messages from versions 2.3 to 2.5.1, with CR, LF and CRLF segment
ends, Z-segments, escapes, repetitions and MSH-18 character sets, sent to the listener process; the
result is read back through the FHIR REST API.
"""

from __future__ import annotations

import pytest

from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import (
    FIXTURES,
    ack_fields,
    find_resources,
    mllp_send_file,
    read_fixture,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _patients(identifier: str) -> list[dict]:
    return find_resources("Patient", identifier=identifier)


def test_a01_crlf_utf8_creates_the_patient(mllp_listener) -> None:
    ack = send_message(mllp_listener.port, read_fixture("adt_a01_v251_crlf_utf8.hl7"))

    segments = ack_fields(ack)
    assert segments["MSA"][1:3] == ["AA", "ADT1001"]
    assert segments["MSH"][9] == "ACK^A01^ACK"
    assert segments["MSH"][18] == "UNICODE UTF-8"
    [patient] = _patients("urn:oid:1.2.276.0.7230010.3.1.1|MRN10001")
    assert {"system": "urn:btt-health:issuer:SSA", "value": "987654321"} in [
        {k: i[k] for k in ("system", "value")} for i in patient["identifier"]
    ]
    official = patient["name"][0]
    assert official["family"] == "Müller"
    assert official["given"] == ["Jürgen", "Karl"]
    assert official["prefix"] == ["Dr."]
    assert official["use"] == "official"
    assert patient["name"][1]["family"] == "Mueller"
    assert patient["birthDate"] == "1962-04-15"
    assert patient["gender"] == "male"
    assert patient["address"][0]["line"] == ["Hauptstraße 5", "Hinterhaus"]
    assert patient["address"][0]["use"] == "home"
    assert patient["address"][1]["type"] == "postal"
    assert {"system": "email", "value": "j.mueller@example.de", "use": "home"} in patient["telecom"]
    assert {"system": "phone", "value": "+49 (89) 7654321", "use": "work"} in patient["telecom"]
    row = InboundMessage.objects.get(control_id="ADT1001")
    assert row.state == InboundMessage.State.PROCESSED
    assert bytes(row.raw) == read_fixture("adt_a01_v251_crlf_utf8.hl7")
    assert row.ack.encode() == ack + b"\r" or row.ack.rstrip("\r").encode() == ack


def test_a08_lf_latin1_updates_the_same_patient(mllp_listener) -> None:
    send_message(mllp_listener.port, read_fixture("adt_a01_v251_crlf_utf8.hl7"))
    ack = send_message(mllp_listener.port, read_fixture("adt_a08_v24_lf_latin1.hl7"))

    assert ack_fields(ack)["MSA"][1:3] == ["AA", "ADT1002"]
    [patient] = _patients("urn:oid:1.2.276.0.7230010.3.1.1|MRN10001")
    assert patient["meta"]["versionId"] == "2"
    assert patient["name"][0]["family"] == "Müller"  # decoded as ISO 8859-1 (MSH-18 8859/1)
    assert patient["address"] == [
        {
            "use": "home",
            "line": ["Neue Straße 7"],
            "city": "München",
            "state": "BY",
            "postalCode": "80333",
            "country": "DEU",
        }
    ]
    # The SSN of the A01 is kept: an update adds identifiers, never drops them.
    assert any(i["value"] == "987654321" for i in patient["identifier"])


def test_a04_v23_escapes_and_z_segment(mllp_listener) -> None:
    ack = send_message(mllp_listener.port, read_fixture("adt_a04_v23_cr_escapes.hl7"))

    segments = ack_fields(ack)
    assert segments["MSA"][1:3] == ["AA", "ADT1003"]
    assert segments["MSH"][9] == "ACK^A04"  # 2.3 has no message structure component
    [patient] = _patients("urn:btt-health:issuer:CLINIC|55512")
    assert patient["name"][0]["family"] == "O'Brien^Smythe"
    assert patient["name"][0]["given"] == ["Mary&Ann"]
    assert patient["address"][0]["line"] == ["12 Pipe|Bar Lane"]
    assert patient["gender"] == "female"


def test_a28_then_a31_from_one_file_with_mllp_send(mllp_listener) -> None:
    acks = mllp_send_file(FIXTURES / "adt_a28_a31_v25_two_messages.hl7", mllp_listener.port)

    assert [ack_fields(a)["MSA"][1:3] for a in acks] == [["AA", "ADT1004"], ["AA", "ADT1005"]]
    [patient] = _patients("urn:btt-health:issuer:GENHOSP|MRN20002")
    assert patient["meta"]["versionId"] == "2"
    assert patient["address"][0]["line"] == ["2-3-4 Minato"]
    assert patient["telecom"] == [{"system": "phone", "value": "+81 (90) 87654321", "use": "mobile"}]
    assert patient["deceasedDateTime"] == "2024-03-14"


def test_a_repeated_a31_with_the_same_content_writes_no_new_version(mllp_listener) -> None:
    message = read_fixture("adt_a04_v23_cr_escapes.hl7")
    send_message(mllp_listener.port, message)
    send_message(mllp_listener.port, message.replace(b"ADT1003", b"ADT1003-B"))

    [patient] = _patients("urn:btt-health:issuer:CLINIC|55512")
    assert patient["meta"]["versionId"] == "1"
