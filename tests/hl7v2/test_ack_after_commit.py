"""Nothing is acknowledged before it is committed, and failed messages wait in the error queue.

The database failure is real: a PostgreSQL constraint trigger, deferred to COMMIT, refuses the
transaction that applies the message and marks it processed (as a full disk or a lost connection
at commit would). The listener must answer AE, keep the message as failed, and have applied
nothing; once the trigger is gone, "reprocess" (the admin action's service) applies it.
"""

from __future__ import annotations

import pytest

from integrations.hl7v2 import services
from integrations.hl7v2.models import InboundMessage
from tests.hl7v2.conftest import (
    ack_fields,
    create_trigger_at_commit,
    drop_trigger_at_commit,
    find_resources,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = b"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A01|COMMIT-FAIL|P|2.5\rPID|1||CF-1^^^HOSP^MR||Commit^Carl||19700101|M\r"


@pytest.fixture
def failing_commit():
    create_trigger_at_commit(
        "hl7_test_refuse",
        "IF NEW.control_id = 'COMMIT-FAIL' THEN RAISE EXCEPTION 'simulated failure at commit'; END IF;",
    )
    yield
    drop_trigger_at_commit("hl7_test_refuse")


def test_a_failed_commit_answers_ae_and_the_message_can_be_reprocessed(mllp_listener, failing_commit) -> None:
    segments = ack_fields(send_message(mllp_listener.port, MESSAGE))

    assert segments["MSA"][1:3] == ["AE", "COMMIT-FAIL"]
    assert "simulated failure at commit" in segments["ERR"][8]
    assert segments["ERR"][3] == "207^Application internal error^HL70357"
    row = InboundMessage.objects.get(control_id="COMMIT-FAIL")
    assert row.state == InboundMessage.State.FAILED
    assert "simulated failure at commit" in row.error
    assert row.ack_code == "AE"
    assert find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|CF-1") == []  # nothing applied

    drop_trigger_at_commit("hl7_test_refuse")
    reprocessed = services.reprocess_message(row.pk)

    assert reprocessed.state == InboundMessage.State.PROCESSED
    assert reprocessed.attempts == 2
    assert ack_fields(reprocessed.ack)["MSA"][1] == "AA"
    [patient] = find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|CF-1")
    assert reprocessed.resources == [f"Patient/{patient['id']}"]
    # The EHR sending it again now gets the AA of the reprocessed message.
    assert ack_fields(send_message(mllp_listener.port, MESSAGE))["MSA"][1] == "AA"
    assert len(find_resources("Patient", identifier="urn:btt-health:issuer:HOSP|CF-1")) == 1


def test_the_admin_shows_the_error_queue_and_reprocesses(mllp_listener, admin_client) -> None:
    bad = b"MSH|^~\\&|EHR|HOSP|BTT|RAD|20240301||ADT^A08|ADMIN-1|P|2.5\rPID|1||AD-1^^^HOSP^MR||Doe^Ann||19701301|F\r"
    assert ack_fields(send_message(mllp_listener.port, bad))["MSA"][1] == "AE"
    row = InboundMessage.objects.get(control_id="ADMIN-1")
    # Fix the stored message as an operator would not; here: the data was right, the code
    # changed. Simulated by correcting the raw bytes, then reprocessing from the admin.
    InboundMessage.objects.filter(pk=row.pk).update(raw=bad.replace(b"19701301", b"19701201"))

    listing = admin_client.get("/admin/hl7v2/inboundmessage/?state__exact=failed")
    assert listing.status_code == 200
    assert b"ADMIN-1" in listing.content
    assert b"PID-7" in listing.content
    response = admin_client.post(
        "/admin/hl7v2/inboundmessage/", {"action": "reprocess", "_selected_action": [row.pk]}, follow=True
    )
    assert response.status_code == 200
    assert InboundMessage.objects.get(pk=row.pk).state == InboundMessage.State.PROCESSED
    assert b"1 processed" in response.content
