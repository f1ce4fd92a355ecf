"""ADT^A40 merges two Patients: the prior one inactive with `link` replaced-by the survivor, the
survivor with `link` replaces; later messages for the prior identifier update the survivor."""

from __future__ import annotations

import pytest

from tests.hl7v2.conftest import ack_fields, find_resources, read_fixture, send_message

pytestmark = pytest.mark.django_db(transaction=True)

PRIOR = b"MSH|^~\\&|MPI|GENHOSP|BTTHEALTH|RADIOLOGY|20240301||ADT^A04|PRE-1|P|2.3.1\rPID|1||MRN30099^^^GENHOSP^MR||Svenson^Lars||19700707|M\r"


def test_a40_links_the_prior_patient_to_the_survivor(mllp_listener) -> None:
    assert ack_fields(send_message(mllp_listener.port, PRIOR))["MSA"][1] == "AA"

    ack = send_message(mllp_listener.port, read_fixture("adt_a40_merge_v231.hl7"))

    assert ack_fields(ack)["MSA"][1:3] == ["AA", "ADT1006"]
    [prior] = find_resources("Patient", identifier="urn:btt-health:issuer:GENHOSP|MRN30099")
    [survivor] = find_resources("Patient", identifier="urn:btt-health:issuer:GENHOSP|MRN30003")
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert survivor["active"] is True
    assert survivor["link"] == [{"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"}]
    assert survivor["name"][0]["family"] == "Svensson"

    # An order placed under the old number goes to the survivor.
    order = (
        b"MSH|^~\\&|CPOE|GENHOSP|BTT|RAD|20240316||ORM^O01|ORM-MERGED|P|2.3\r"
        b"PID|1||MRN30099^^^GENHOSP^MR||Svenson^Lars\r"
        b"ORC|NW|PLC-M1\rOBR|1|PLC-M1||71250^CT THORAX^C4\r"
    )
    assert ack_fields(send_message(mllp_listener.port, order))["MSA"][1] == "AA"
    [request] = find_resources("ServiceRequest", identifier="PLC-M1")
    assert request["subject"] == {"reference": f"Patient/{survivor['id']}"}


def test_a40_for_an_unknown_prior_patient_creates_it_inactive(mllp_listener) -> None:
    ack = send_message(mllp_listener.port, read_fixture("adt_a40_merge_v231.hl7"))

    assert ack_fields(ack)["MSA"][1] == "AA"
    [prior] = find_resources("Patient", identifier="urn:btt-health:issuer:GENHOSP|MRN30099")
    assert prior["active"] is False
    assert prior["name"][0]["family"] == "Svenson"  # MRG-7, the prior name


def test_a40_merging_a_patient_into_itself_is_an_error(mllp_listener) -> None:
    message = read_fixture("adt_a40_merge_v231.hl7").replace(b"MRN30099", b"MRN30003")

    segments = ack_fields(send_message(mllp_listener.port, message))

    assert segments["MSA"][1] == "AE"
    assert segments["ERR"][1].startswith("MRG^1^1^205")  # 2.3.1: ERR-1 ELD names MRG-1
