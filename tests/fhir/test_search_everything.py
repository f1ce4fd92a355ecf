"""Patient/$everything: the compartment, referenced resources, _type, _since, paging."""

from __future__ import annotations

import time

import pytest

from integrations.fhir import search, store
from tests.fhir.test_search_support import BASE, create, follow, include_refs, link, observation, patient

pytestmark = pytest.mark.django_db


def everything(pid: str, query: str = "") -> dict:
    from tests.fhir.test_search_support import params_of

    return search.everything_bundle(pid, params_of(query), base_url=BASE)


def matches(bundle: dict) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    }


@pytest.fixture
def chart() -> None:
    create({"resourceType": "Practitioner", "id": "doc"})
    create({"resourceType": "Organization", "id": "org"})
    create(patient("p1", managingOrganization={"reference": "Organization/org"}))
    create(patient("p2"))
    create(observation("o1", subject="Patient/p1", performer=[{"reference": "Practitioner/doc"}]))
    create(observation("o2", subject="Patient/p2"))
    create(
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/p1"},
        }
    )
    create(
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
        }
    )
    create({"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"}})


def test_everything_returns_the_compartment_and_what_it_refers_to(chart):
    bundle = everything("p1")
    assert matches(bundle) == {
        "Patient/p1",
        "Observation/o1",
        "Encounter/e1",
        "Condition/c1",
        "AllergyIntolerance/a1",
    }
    assert {"Practitioner/doc", "Organization/org"} <= include_refs(bundle)
    assert bundle["total"] == 5
    assert link(bundle, "self") == f"{BASE}/Patient/p1/$everything"


def test_type_filter(chart):
    bundle = everything("p1", "_type=Observation,Condition")
    assert matches(bundle) == {"Observation/o1", "Condition/c1"}
    assert include_refs(bundle) == set()


def test_since(chart):
    time.sleep(0.01)
    late = store.update_resource("Observation", "o-late", observation("o-late", subject="Patient/p1"))
    moment = store.format_instant(late.stored.last_updated)
    store.update_resource(
        "Condition", "c1", {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}
    )
    bundle = everything("p1", f"_since={moment}")
    assert matches(bundle) == {"Observation/o-late", "Condition/c1"}


def test_paging(chart):
    for i in range(5):
        create(observation(f"more{i}", subject="Patient/p1"))
    page = everything("p1", "_count=4")
    seen = list(matches(page))
    assert page["total"] == 10
    while link(page, "next"):
        page = follow(link(page, "next"))
        seen += list(matches(page))
    assert len(seen) == len(set(seen)) == 10
    assert "Patient/p1" in seen
