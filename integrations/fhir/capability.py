"""The CapabilityStatement, generated from what the server actually implements.

Resource types and their search parameters come from the same registry that drives indexing
(`searchparams`), and the interactions listed are the ones `interactions.dispatch` routes, so
the statement cannot drift from the code.
"""

from __future__ import annotations

import functools

from integrations.fhir.searchparams import resource_types, search_params_for
from integrations.fhir.validation import is_known_resource_type

SOFTWARE_VERSION = "0.1.0"

# The type-level and instance-level interactions `interactions.dispatch` implements for every type.
TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "search-system", "history-system")
# Search parameters every type has that are not indexed from definitions but handled directly.
COMMON_SEARCH_PARAMS = ("_id", "_lastUpdated")
RESULT_PARAMETERS = (
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_has",
)


@functools.cache
def _rest_resources() -> tuple[dict, ...]:
    resources = []
    for resource_type in sorted(t for t in resource_types() if is_known_resource_type(t)):
        params = search_params_for(resource_type)
        search_params = [
            {"name": code, "type": "token" if code == "_id" else "date"} for code in COMMON_SEARCH_PARAMS
        ]
        for code, definition in sorted(params.items()):
            if code in COMMON_SEARCH_PARAMS or definition.type == "special":
                continue
            search_params.append({"name": code, "definition": definition.url, "type": definition.type})
        reference_params = sorted(code for code, d in params.items() if d.type == "reference")
        resource = {
            "type": resource_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
            "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "enforced", "local"],
            "searchInclude": ["*", *(f"{resource_type}:{code}" for code in reference_params)],
            "searchRevInclude": ["*"],
            "searchParam": search_params,
        }
        if resource_type == "Patient":
            resource["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                }
            ]
        resources.append(resource)
    return tuple(resources)


def capability_statement(base_url: str) -> dict:
    """The server's CapabilityStatement (R4), as answered at /fhir/metadata."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
        "publisher": "BTT Health",
        "kind": "instance",
        "software": {"name": "BTT Health integration server", "version": SOFTWARE_VERSION},
        "implementation": {"description": "BTT Health FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "OAuth",
                                }
                            ],
                            "text": "Bearer tokens issued to API clients (create_api_client)",
                        }
                    ],
                    "description": "Every interaction except /metadata needs 'Authorization: Bearer <token>'.",
                },
                "resource": list(_rest_resources()),
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": [
                    {"name": name, "type": "special" if name.startswith("_") else "string"}
                    for name in RESULT_PARAMETERS
                ],
                "operation": [
                    {
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    }
                ],
            }
        ],
    }
