"""The Patient compartment (R4 CompartmentDefinition `patient`, from spec/).

A resource is in Patient/123's compartment when one of the reference parameters listed for its
type refers to Patient/123; the Patient itself is in its own compartment. Used by
`Patient/$everything` and compartment searches (`Patient/123/Observation`).
"""

from __future__ import annotations

import json
import operator
from functools import cache, reduce
from pathlib import Path

from django.db.models import Q

from integrations.fhir.models.search_index import ReferenceIndex

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


def compartment_reference_rows(patient_id: str, resource_types: tuple[str, ...] | None = None):
    """ReferenceIndex rows that put a resource in Patient/`patient_id`'s compartment.

    `resource_types` limits the member types (None: every type the definition lists).
    """
    params = patient_compartment_params()
    wanted = [t for t in (resource_types or tuple(params)) if t in params]
    if not wanted:
        return ReferenceIndex.objects.none()
    # Parameters a type shares with others are grouped, which keeps the OR short.
    by_params: dict[tuple[str, ...], list[str]] = {}
    for resource_type in wanted:
        by_params.setdefault(params[resource_type], []).append(resource_type)
    membership = reduce(
        operator.or_,
        (Q(resource_type__in=types, param__in=codes) for codes, types in by_params.items()),
    )
    return ReferenceIndex.objects.filter(target_type="Patient", target_id=patient_id).filter(membership)
