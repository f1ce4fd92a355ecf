"""Routing: which registered models run on a study (RoutingRule rows, edited in the admin).

`select_models(facts)` returns the enabled, available models whose enabled rule matches the study
and whose manifest applies to it, one entry per model version (the first rule by name wins).
`StudyFacts.from_event(payload)` reads the `study_received` event (btt_health/events.py);
order codes (the codes of the ServiceRequests of the accession) are passed by the caller, which
reads them from the FHIR store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ai_pipeline.models import AIModel, RoutingRule
from ai_pipeline.registry import ModelUnavailableError, RegistryError, get_runnable_model, manifest_of

logger = logging.getLogger(__name__)


@dataclass
class StudyFacts:
    study_instance_uid: str
    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    sop_class_uids: list[str] = field(default_factory=list)
    calling_ae: str = ""
    order_codes: list[tuple[str, str]] = field(default_factory=list)  # (system, code); system may be ""

    def __post_init__(self) -> None:
        self.modalities = sorted({m.strip().upper() for m in self.modalities if m and m.strip()})
        self.body_parts = sorted({b.strip().upper() for b in self.body_parts if b and b.strip()})
        self.sop_class_uids = sorted({s.strip() for s in self.sop_class_uids if s and s.strip()})
        self.calling_ae = (self.calling_ae or "").strip()

    @classmethod
    def from_event(cls, payload: Mapping, order_codes: Iterable[tuple[str, str]] = ()) -> StudyFacts:
        return cls(
            study_instance_uid=payload["study_instance_uid"],
            modalities=list(payload.get("modalities") or []),
            body_parts=list(payload.get("body_parts") or []),
            sop_class_uids=list(payload.get("sop_class_uids") or []),
            calling_ae=payload.get("calling_ae") or "",
            order_codes=list(order_codes),
        )


@dataclass(frozen=True)
class RoutedModel:
    model: AIModel
    rule: RoutingRule
    specialty: str


def _order_code_matches(wanted: str, codes: list[tuple[str, str]]) -> bool:
    system, sep, code = wanted.strip().rpartition("|")
    if not sep:
        return any(c == code for _, c in codes)
    return any(c == code and s == system for s, c in codes)


def rule_matches(rule: RoutingRule, facts: StudyFacts) -> bool:
    """Whether every filled-in criterion of `rule` matches the study."""
    if rule.modality and rule.modality.strip().upper() not in facts.modalities:
        return False
    if rule.body_part and rule.body_part.strip().upper() not in facts.body_parts:
        return False
    if rule.sop_class_uid and rule.sop_class_uid.strip() not in facts.sop_class_uids:
        return False
    if rule.calling_ae and rule.calling_ae.strip() != facts.calling_ae:
        return False
    return not (rule.order_code and not _order_code_matches(rule.order_code, facts.order_codes))


def applies_to(model: AIModel, facts: StudyFacts) -> bool:
    """Whether the model's manifest applicability admits the study."""
    applicability = manifest_of(model).applicability
    if applicability.modalities and not set(applicability.modalities) & set(facts.modalities):
        return False
    if applicability.sop_classes and not set(applicability.sop_classes) & set(facts.sop_class_uids):
        return False
    # Body Part Examined is often empty: only a study that names other body parts is excluded.
    return not (
        applicability.body_parts
        and facts.body_parts
        and not set(applicability.body_parts) & set(facts.body_parts)
    )


def select_models(facts: StudyFacts) -> list[RoutedModel]:
    routed: dict[tuple[str, str], RoutedModel] = {}
    for rule in RoutingRule.objects.filter(enabled=True).order_by("name"):
        if not rule_matches(rule, facts):
            continue
        try:
            model = get_runnable_model(rule.model_name, rule.model_version or None)
            applicable = applies_to(model, facts)
        except ModelUnavailableError as exc:
            logger.info("routing rule %s matches study %s, but: %s", rule, facts.study_instance_uid, exc)
            continue
        except RegistryError as exc:
            logger.error("routing rule %s: %s", rule, exc)
            continue
        if not applicable:
            logger.info(
                "routing rule %s: model %s does not apply to study %s", rule, model, facts.study_instance_uid
            )
            continue
        key = (model.name, model.version)
        if key not in routed:
            routed[key] = RoutedModel(model, rule, rule.specialty or model.specialty or "default")
    return list(routed.values())
