"""`_summary` and `_elements`: which top-level elements of a resource a search returns.

The element flags (isSummary, min >= 1) come from the `fhir.resources` R4B models, the nearest
to R4 4.0.1 that the package ships (their flags agree with R4 for the resources EHRs exchange).
Approximation, as the spec allows servers: only top-level elements are filtered; a kept complex
element is returned whole (R4 would also drop its non-summary children). Types without an R4B
model (the eleven R4-only MedicinalProduct*/...Synthesis types) fall back to dropping `text`,
`contained` and `extension`, which are never summary elements.
"""

from __future__ import annotations

from functools import cache

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
SUMMARY_MODES = ("true", "text", "data", "count", "false")

# Kept whatever is asked: they identify the resource.
_ALWAYS = frozenset({"resourceType", "id", "meta"})
_NEVER_SUMMARY = frozenset({"text", "contained", "extension"})


@cache
def _element_flags(resource_type: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(summary element names, mandatory element names) of a type, or None if unknown."""
    try:
        from fhir.resources.R4B import get_fhir_model_class

        model = get_fhir_model_class(resource_type)
    except (ValueError, ImportError):
        return None
    summary: set[str] = set()
    mandatory: set[str] = set()
    for field in model.model_fields.values():
        alias = field.alias
        if not alias or alias.startswith("_") or alias == "resource_type":
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            summary.add(alias)
        if extra.get("element_required") or field.is_required():
            mandatory.add(alias)
    # Mandatory elements are part of every summary (R4 marks them isSummary anyway).
    return frozenset(summary | mandatory), frozenset(mandatory)


def _keep(resource: dict, wanted: frozenset[str] | set[str]) -> dict:
    kept = {}
    for key, value in resource.items():
        # A primitive's extension sibling (`_birthDate`) follows its element.
        name = key[1:] if key.startswith("_") else key
        if key in _ALWAYS or name in wanted:
            kept[key] = value
    return kept


def _mark_subsetted(resource: dict) -> dict:
    meta = dict(resource.get("meta") or {})
    tags = [tag for tag in meta.get("tag", []) if tag.get("code") != "SUBSETTED"]
    tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    resource["meta"] = meta
    if "id" in resource:
        # Keep resourceType, id, meta first, as stored.
        return {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta, **resource}
    return resource


def shape(resource: dict, summary: str | None, elements: tuple[str, ...] | None) -> dict:
    """The resource as `_summary` / `_elements` ask (unchanged when neither applies).

    Any subset is tagged SUBSETTED in meta.tag, as the spec requires.
    """
    if summary in (None, "false") and not elements:
        return resource
    resource_type = resource.get("resourceType", "")
    flags = _element_flags(resource_type)
    if summary == "true":
        if flags is None:
            kept = {k: v for k, v in resource.items() if k.lstrip("_") not in _NEVER_SUMMARY}
        else:
            kept = _keep(resource, flags[0])
    elif summary == "text":
        wanted = {"text"} | (set(flags[1]) if flags else set())
        kept = _keep(resource, wanted)
    elif summary == "data":
        kept = {k: v for k, v in resource.items() if k != "text"}
    elif elements:
        names = {name.split(".", 1)[1] if "." in name else name for name in elements}
        # Servers SHOULD return mandatory elements whether asked or not.
        if flags is not None:
            names |= flags[1]
        kept = _keep(resource, names)
    else:
        return resource
    return _mark_subsetted(kept)
