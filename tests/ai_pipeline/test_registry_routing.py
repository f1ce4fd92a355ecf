"""Routing rules pick the models of a study; disabled models and rules, and models that do not apply, are not routed."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from ai_pipeline.models import AIModel, RoutingRule
from ai_pipeline.registry import sync_registry
from ai_pipeline.routing import StudyFacts, rule_matches, select_models
from tests.ai_pipeline.support import copy_demo_model

pytestmark = pytest.mark.django_db

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def ct_study(**overrides) -> StudyFacts:
    values = {
        "study_instance_uid": "1.2.3",
        "modalities": ["CT"],
        "body_parts": ["ABDOMEN"],
        "sop_class_uids": [CT_IMAGE],
        "calling_ae": "CT-SCANNER",
        "order_codes": [("http://loinc.org", "36813-4")],
    }
    values.update(overrides)
    return StudyFacts(**values)


def rule(**fields) -> RoutingRule:
    values = {"name": "ct", "model_name": "ct-lesion-demo"}
    values.update(fields)
    return RoutingRule.objects.create(**values)


def routed(facts: StudyFacts) -> list[str]:
    return [f"{r.model.name} {r.model.version}" for r in select_models(facts)]


def test_a_matching_rule_routes_the_model(demo_model):
    rule(modality="CT")
    ((chosen),) = select_models(ct_study())
    assert chosen.model == demo_model
    assert chosen.rule.name == "ct"
    assert chosen.specialty == "radiology"


def test_a_disabled_model_is_not_routed(demo_model):
    rule(modality="CT")
    AIModel.objects.filter(pk=demo_model.pk).update(enabled=False)
    assert routed(ct_study()) == []


def test_a_refused_model_is_not_routed(demo_model):
    rule()
    AIModel.objects.filter(pk=demo_model.pk).update(status=AIModel.Status.INTEGRITY_ERROR)
    assert routed(ct_study()) == []


def test_a_disabled_rule_routes_nothing(demo_model):
    rule(enabled=False)
    assert routed(ct_study()) == []


def test_a_model_whose_manifest_does_not_apply_is_not_routed(demo_model):
    rule()  # no criteria: every study
    assert routed(ct_study(modalities=["MR"], sop_class_uids=[MR_IMAGE])) == []
    assert routed(ct_study()) == ["ct-lesion-demo 1.0.0"]


@pytest.mark.parametrize(
    ("fields", "matches"),
    [
        ({"modality": "ct"}, True),
        ({"modality": "MR"}, False),
        ({"body_part": "abdomen"}, True),
        ({"body_part": "CHEST"}, False),
        ({"sop_class_uid": CT_IMAGE}, True),
        ({"sop_class_uid": MR_IMAGE}, False),
        ({"calling_ae": "CT-SCANNER"}, True),
        ({"calling_ae": "OTHER"}, False),
        ({"order_code": "36813-4"}, True),
        ({"order_code": "http://loinc.org|36813-4"}, True),
        ({"order_code": "http://other|36813-4"}, False),
        ({"order_code": "24627-2"}, False),
        ({"modality": "CT", "calling_ae": "OTHER"}, False),
    ],
)
def test_every_filled_in_criterion_must_match(fields, matches):
    assert rule_matches(RoutingRule(name="r", model_name="m", **fields), ct_study()) is matches


def test_a_pinned_version_is_routed_and_the_newest_otherwise(model_root):
    copy_demo_model(model_root, "v1")
    second = copy_demo_model(model_root, "v2")
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["version"] = "1.1.0"
    (second / "manifest.json").write_text(json.dumps(manifest))
    sync_registry()
    rule(name="a-newest")
    assert routed(ct_study()) == ["ct-lesion-demo 1.1.0"]
    rule(name="b-pinned", model_version="1.0.0")
    assert routed(ct_study()) == ["ct-lesion-demo 1.1.0", "ct-lesion-demo 1.0.0"]


def test_facts_come_from_the_study_received_event():
    payload = {
        "study_instance_uid": "1.2.9",
        "modalities": ["CT", "SR"],
        "body_parts": ["chest"],
        "sop_class_uids": [CT_IMAGE],
        "calling_ae": " MODALITY1 ",
    }
    facts = StudyFacts.from_event(payload, order_codes=[("", "X")])
    assert facts.modalities == ["CT", "SR"]
    assert facts.body_parts == ["CHEST"]
    assert facts.calling_ae == "MODALITY1"
    assert facts.order_codes == [("", "X")]


def test_a_rule_for_an_unknown_model_does_not_validate(demo_model):
    with pytest.raises(ValidationError, match="no registered model is named"):
        RoutingRule(name="x", model_name="nope").full_clean()
    with pytest.raises(ValidationError, match="has no version"):
        RoutingRule(name="y", model_name="ct-lesion-demo", model_version="9").full_clean()
    RoutingRule(name="z", model_name="ct-lesion-demo", modality="ct").full_clean()
