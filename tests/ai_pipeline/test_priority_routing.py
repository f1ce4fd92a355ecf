"""A job's priority: the most urgent of its study's orders (ServiceRequest.priority, the orders the
DICOM node matched by accession number) and its routing rule's `priority`."""

from __future__ import annotations

import pytest

from ai_pipeline.models import RoutingRule
from ai_pipeline.subscribers import on_study_received
from integrations.fhir import store

pytestmark = pytest.mark.django_db


def _order(priority: str | None) -> str:
    resource = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": "urn:example:accession", "value": "ACC-PRIO"}],
        "subject": {"display": "someone"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "36813-4"}]},
    }
    if priority:
        resource["priority"] = priority
    return store.create_resource(resource).stored.logical_id


def _event(uid: str, orders: list[str]) -> dict:
    return {
        "event_id": f"study_received:{uid}:1",
        "study_instance_uid": uid,
        "accession_number": "ACC-PRIO",
        "modalities": ["CT"],
        "body_parts": [],
        "sop_class_uids": ["1.2.840.10008.5.1.4.1.1.2"],
        "calling_ae": "CT",
        "fhir_service_request_ids": orders,
    }


@pytest.mark.parametrize(
    ("ordered", "rule_priority", "expected"),
    [
        ([None], "", "routine"),
        (["stat"], "", "stat"),
        (["routine", "asap"], "", "asap"),
        (["stat"], "urgent", "stat"),
        (["routine"], "stat", "stat"),
        ([None], "urgent", "urgent"),
    ],
)
def test_the_most_urgent_of_order_and_rule_wins(demo_model, ordered, rule_priority, expected):
    RoutingRule.objects.create(name="ct", model_name="ct-lesion-demo", modality="CT", priority=rule_priority)
    orders = [_order(priority) for priority in ordered]
    (job,) = on_study_received(_event("1.2.3.4.5", orders))
    assert job.priority == expected
