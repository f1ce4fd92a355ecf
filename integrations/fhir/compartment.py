"""The Patient compartment (R4 CompartmentDefinition `patient`, from spec/).

A resource is in Patient/123's compartment when one of the reference parameters listed for its
type refers to Patient/123; the Patient itself is in its own compartment. Used by
`Patient/$everything` and compartment searches (`Patient/123/Observation`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from integrations.fhir.models.search_index import ReferenceIndex
from integrations.fhir.search.sql import NOTHING, Sql, all_of, any_of, equals, one_of

COMPARTMENT_FILE = Path(__file__).resolve().parent / "spec" / "compartmentdefinition-patient.json"


@cache
def patient_compartment_params() -> dict[str, tuple[str, ...]]:
    """Resource type -> the search parameters that put it in a patient's compartment.

    Types the definition lists without parameters (never in the compartment) are left out.
    """
    with COMPARTMENT_FILE.open(encoding="utf-8") as f:
        definition = json.load(f)
    return {
        entry["code"]: tuple(entry["param"]) for entry in definition.get("resource", ()) if entry.get("param")
    }


def in_compartment(patient_id: str, resource_types: tuple[str, ...] | None = None) -> Sql:
    """The condition that the record `{rec}` is in Patient/`patient_id`'s compartment: one of its
    compartment reference parameters refers to the patient, or it is the patient.

    `resource_types` limits the member types (None: every type the definition lists).
    """
    params = patient_compartment_params()
    wanted = [t for t in (resource_types or tuple(params)) if t in params]
    conditions = []
    if wanted:
        # Parameters a type shares with others are grouped, which keeps the OR short.
        by_params: dict[tuple[str, ...], list[str]] = {}
        for resource_type in wanted:
            by_params.setdefault(params[resource_type], []).append(resource_type)
        membership = any_of(
            [
                one_of("cm.resource_type", types) & one_of("cm.param", list(codes))
                for codes, types in by_params.items()
            ]
        )
        conditions.append(
            Sql(
                f"{{rec}}.id IN (SELECT cm.record_id FROM {ReferenceIndex._meta.db_table} cm"
                f" WHERE cm.target_type = %s AND cm.target_id = %s AND {membership.text})",
                ("Patient", patient_id, *membership.params),
            )
        )
    if resource_types is None or "Patient" in resource_types:
        conditions.append(
            all_of([equals("{rec}.resource_type", "Patient"), equals("{rec}.logical_id", patient_id)])
        )
    return any_of(conditions) if conditions else NOTHING
