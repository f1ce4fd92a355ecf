"""Validation of incoming resources against the FHIR R4 structure definitions.

The models come from `fhir.resources` (pydantic), whose R4B package is the nearest to R4 4.0.1 that
it ships: the wire format of the resources EHRs exchange (Patient, Observation, Encounter,
DiagnosticReport, ImagingStudy, ServiceRequest, ...) is the same in both. The eleven R4 resource
types that R4B dropped (MedicinalProduct*, EffectEvidenceSynthesis, RiskEvidenceSynthesis,
SubstanceSpecification) are checked structurally only (a JSON object with a valid id and meta).

Errors are reported as OperationOutcome issues whose `expression` is the FHIRPath of the element
at fault (`Patient.name[0].given`), as clients expect from HAPI FHIR.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from integrations.fhir.outcomes import FhirError, Issue
from integrations.fhir.searchparams import resource_types

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

# R4 resource types without an R4B model: validated structurally only.
_STRUCTURAL_ONLY = frozenset(
    {
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductInteraction",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceSpecification",
    }
)

# Types that exist in R4B but not in R4: refused, this is an R4 server.
_NOT_IN_R4 = frozenset(
    {
        "AdministrableProductDefinition",
        "Citation",
        "ClinicalUseDefinition",
        "EvidenceReport",
        "Ingredient",
        "ManufacturedItemDefinition",
        "MedicinalProductDefinition",
        "NutritionProduct",
        "PackagedProductDefinition",
        "RegulatedAuthorization",
        "SubscriptionStatus",
        "SubscriptionTopic",
    }
)


@functools.cache
def is_known_resource_type(resource_type: str) -> bool:
    """Whether `resource_type` is a FHIR R4 resource type this server stores."""
    return resource_type in resource_types() and resource_type not in _NOT_IN_R4


def check_resource_type(resource_type: str) -> None:
    """Raise 404 (as HAPI does) for a URL naming a type that is not an R4 resource type."""
    if not is_known_resource_type(resource_type):
        raise FhirError.single(404, "not-supported", f"'{resource_type}' is not a FHIR R4 resource type")


# The model class of each type, looked up once (fhir.resources imports it by name on every call).
_model_class = functools.cache(get_fhir_model_class)


def _element_path(resource_type: str, loc: tuple[Any, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # pydantic reports a choice or primitive extension under its JSON key; FHIRPath keeps it.
            path += f".{part}"
    return path


def validate_resource(resource: Any, *, expected_type: str | None = None) -> None:
    """Check `resource` is a valid R4 resource (of `expected_type` when given); raise FhirError.

    400 with one issue per problem, each naming the element in `expression`. The dict itself is
    not modified: the server stores what the client sent, plus `id` and `meta`.
    """
    if not isinstance(resource, dict):
        raise FhirError.single(400, "structure", "the body must be a JSON object holding a FHIR resource")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirError.single(
            400, "required", "the resource has no resourceType", expression=("resourceType",)
        )
    if expected_type is not None and resource_type != expected_type:
        raise FhirError.single(
            400,
            "invalid",
            f"resourceType '{resource_type}' does not match the type '{expected_type}' in the URL",
            expression=("resourceType",),
        )
    if not is_known_resource_type(resource_type):
        raise FhirError.single(
            400,
            "not-supported",
            f"'{resource_type}' is not a FHIR R4 resource type",
            expression=("resourceType",),
        )
    logical_id = resource.get("id")
    if logical_id is not None and (not isinstance(logical_id, str) or not ID_PATTERN.match(logical_id)):
        raise FhirError.single(
            400,
            "value",
            f"id {logical_id!r} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)",
            expression=(f"{resource_type}.id",),
        )
    if resource_type in _STRUCTURAL_ONLY:
        meta = resource.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise FhirError.single(
                400, "structure", "meta must be an object", expression=(f"{resource_type}.meta",)
            )
        return
    model = _model_class(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            path = _element_path(resource_type, tuple(error["loc"]))
            code = "structure" if error["type"] == "extra_forbidden" else "value"
            message = "unknown element" if error["type"] == "extra_forbidden" else error["msg"]
            issues.append(Issue(code=code, diagnostics=f"{path}: {message}", expression=(path,)))
        raise FhirError(400, issues) from None
    except (ValueError, TypeError) as exc:
        raise FhirError.single(400, "structure", f"{resource_type}: {exc}") from None
