"""The AI pipeline's `study_received` subscriber: route the study, record its jobs, queue the runs.

`on_study_received(payload)` is subscribed in `AiPipelineConfig.ready()` (so every process that
emits, i.e. every Celery worker, has it without configuration). It runs inside the emitting task's
transaction (btt_health/events.py) and only:

1. reads the orders of the study (the ServiceRequests of the event: their codes for routing, their
   `priority` for the job's priority; the most urgent wins, and a routing rule with a `priority`
   raises its jobs to at least that: a rule for a stroke CT can make its model run STAT),
2. selects the models (`routing.select_models`). With no RoutingRule row at all (a fresh install)
   and `BTT_AI_ROUTE_WITHOUT_RULES` (default on), every enabled, available model whose manifest
   applicability admits the study runs instead, so the out-of-the-box stack reports on a CT study
   with the demo model. Once any rule exists (even a disabled one) only rules route.
3. creates one `queued` InferenceJob per (study, model, version) (`services.create_job`; the unique
   key makes a second delivery find the same row), flagged `outside` when its rule sends the model
   to a worker outside the hospital (it then runs on a de-identified copy), and
4. queues `ai_pipeline.run_inference` with `transaction.on_commit` on `BTT_INFERENCE_QUEUE` with the
   job's priority, so nothing is queued if the emission rolls back.

Idempotent on `event_id`: a job already created for this event (same `event_id`) is not queued
again, nor is a job that succeeded (exactly one report per study, model and version). A job of an
earlier completion that is still queued or failed is queued again for the new event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import transaction

from ai_pipeline import services
from ai_pipeline.models import AIModel, InferenceJob, RoutingRule
from ai_pipeline.registry import RegistryError, get_runnable_model
from ai_pipeline.routing import StudyFacts, applies_to, select_models

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    model: AIModel
    rule: RoutingRule | None
    specialty: str

    def priority(self, ordered: str) -> str:
        """The more urgent of the order's priority and the routing rule's (when it sets one)."""
        ranks = InferenceJob.PRIORITY_RANK
        if self.rule is not None and self.rule.priority in ranks:
            return min(ordered, self.rule.priority, key=ranks.__getitem__)
        return ordered

    @property
    def outside(self) -> bool:
        return bool(self.rule is not None and self.rule.outside)


def _orders(payload: Mapping) -> list[dict]:
    """The ServiceRequests named by the event (those that can be read)."""
    ids = list(payload.get("fhir_service_request_ids") or [])
    if not ids:
        return []
    from integrations.fhir import store

    orders = []
    for logical_id in ids:
        try:
            orders.append(store.read_resource("ServiceRequest", logical_id).as_dict())
        except Exception as exc:  # a deleted or unreadable order does not stop the routing
            logger.warning(
                "study %s: ServiceRequest/%s: %s", payload.get("study_instance_uid"), logical_id, exc
            )
    return orders


def order_codes(orders: list[dict]) -> list[tuple[str, str]]:
    codes = []
    for order in orders:
        for coding in (order.get("code") or {}).get("coding") or []:
            if coding.get("code"):
                codes.append((coding.get("system") or "", coding["code"]))
    return codes


def order_priority(orders: list[dict]) -> str:
    """The most urgent `priority` of the orders (FHIR request-priority), `routine` without one."""
    ranks = InferenceJob.PRIORITY_RANK
    found = [o.get("priority") for o in orders if o.get("priority") in ranks]
    return min(found, key=ranks.__getitem__) if found else InferenceJob.Priority.ROUTINE


def route(facts: StudyFacts) -> list[Route]:
    """The models to run on the study: the routing rules, or (no rule at all) the manifests."""
    if RoutingRule.objects.exists() or not settings.BTT_AI_ROUTE_WITHOUT_RULES:
        return [Route(r.model, r.rule, r.specialty) for r in select_models(facts)]
    routes = []
    names = AIModel.objects.filter(enabled=True, status=AIModel.Status.AVAILABLE)
    for name in sorted(set(names.values_list("name", flat=True))):
        try:
            model = get_runnable_model(name)
            if applies_to(model, facts):
                routes.append(Route(model, None, model.specialty or "default"))
        except RegistryError as exc:
            logger.error("model %s: %s", name, exc)
    return routes


def on_study_received(payload: dict) -> list[InferenceJob]:
    """Record and queue the inference jobs of a completed study; the jobs queued by this delivery."""
    from ai_pipeline.tasks import queue_inference

    uid = payload["study_instance_uid"]
    event_id = str(payload.get("event_id") or "")
    orders = _orders(payload)
    facts = StudyFacts.from_event(payload, order_codes(orders))
    ordered = order_priority(orders)
    queued = []
    for chosen in route(facts):
        priority = chosen.priority(ordered)
        job, created = services.create_job(
            uid,
            chosen.model,
            priority=priority,
            event_id=event_id,
            accession_number=str(payload.get("accession_number") or ""),
            routing_rule=chosen.rule,
            outside=chosen.outside,
        )
        if not created:
            if job.state == InferenceJob.State.SUCCEEDED or job.event_id == event_id:
                logger.info("study %s: job %s already there for %s (%s)", uid, job.pk, event_id, job.state)
                continue
            job.event_id, job.priority, job.outside = event_id, priority, chosen.outside
            job.published_at = None
            job.save(update_fields=["event_id", "priority", "outside", "published_at", "updated_at"])
        transaction.on_commit(
            partial(queue_inference, job.pk, payload, specialty=chosen.specialty), robust=True
        )
        queued.append(job)
        logger.info("study %s: %s queued (job %s, %s)", uid, chosen.model, job.pk, priority)
    if not queued:
        logger.info("study %s (%s): no model to run", uid, event_id)
    return queued
