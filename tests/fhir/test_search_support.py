"""Helpers shared by the tests/fhir/test_search_*.py files (no tests here).

Resources are written through the store (`store.create_resource` / `update_resource`), so the
search index is the one production writes; searches call the search service functions directly.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from integrations.fhir import search, store

BASE = "http://testserver/fhir"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def create(resource: dict) -> str:
    """Create `resource` (a PUT when it carries an id, so tests can name resources); its id."""
    if "id" in resource:
        return store.update_resource(resource["resourceType"], resource["id"], resource).stored.logical_id
    return store.create_resource(resource).stored.logical_id


def params_of(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def run(resource_type: str | None, query: str, *, strict: bool = False) -> dict:
    """The searchset Bundle for `resource_type?query`."""
    return search.search_bundle(resource_type, params_of(query), base_url=BASE, strict=strict)


def match_ids(bundle: dict) -> list[str]:
    """Ids of the `match` entries, in order."""
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def include_refs(bundle: dict) -> set[str]:
    """`Type/id` of the `include` entries."""
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "include"
    }


def ids(resource_type: str | None, query: str, **kwargs) -> set[str]:
    """The set of matching ids of `resource_type?query` (asserting they fit in one page)."""
    bundle = run(resource_type, query + ("&" if query else "") + "_count=1000", **kwargs)
    assert not any(link["relation"] == "next" for link in bundle["link"]), "more than one page"
    return set(match_ids(bundle))


def link(bundle: dict, relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


def follow(url: str) -> dict:
    """The page a paging link names (the view routes `?_getpages=` to `search.page_bundle`)."""
    return search.page_bundle(parse_qsl(urlsplit(url).query), base_url=BASE)


def outcome_issues(bundle: dict) -> list[dict]:
    entries = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    return entries[0]["resource"]["issue"] if entries else []


def patient(pid: str, family: str = "Doe", **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}], **extra}


def observation(
    oid: str, *, code: str = "8867-4", system: str = LOINC, subject: str | None = None, **extra
) -> dict:
    body = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }
    if subject:
        body["subject"] = {"reference": subject}
    return body
