"""_include and _revinclude: Type:param, Type:param:Target, *, :iterate, with paging."""

from __future__ import annotations

import pytest

from integrations.fhir import store
from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import (
    create,
    follow,
    include_refs,
    link,
    match_ids,
    observation,
    patient,
    run,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def graph() -> None:
    create({"resourceType": "Organization", "id": "org", "name": "Acme"})
    create({"resourceType": "Organization", "id": "parent-org", "name": "Acme Group"})
    store.update_resource(
        "Organization",
        "org",
        {
            "resourceType": "Organization",
            "id": "org",
            "name": "Acme",
            "partOf": {"reference": "Organization/parent-org"},
        },
    )
    create({"resourceType": "Practitioner", "id": "doc", "name": [{"family": "House"}]})
    create(patient("p1", managingOrganization={"reference": "Organization/org"}))
    create(patient("p2"))
    create(patient("p3"))
    create(observation("o1", subject="Patient/p1", performer=[{"reference": "Practitioner/doc"}]))
    create(observation("o2", subject="Patient/p2"))
    create(observation("o3", subject="Patient/p1", code="other"))
    create(
        {
            "resourceType": "Provenance",
            "id": "prov",
            "target": [{"reference": "Patient/p1"}],
            "recorded": "2020-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/doc"}}],
        }
    )


def test_include(graph):
    bundle = run("Observation", "code=8867-4&_include=Observation:subject")
    assert set(match_ids(bundle)) == {"o1", "o2"}
    assert include_refs(bundle) == {"Patient/p1", "Patient/p2"}


def test_include_with_target_type(graph):
    bundle = run("Observation", "_include=Observation:performer:Practitioner")
    assert include_refs(bundle) == {"Practitioner/doc"}
    bundle = run("Observation", "_include=Observation:performer:Organization")
    assert include_refs(bundle) == set()


def test_include_star_follows_every_reference(graph):
    bundle = run("Observation", "_id=o1&_include=*")
    assert include_refs(bundle) == {"Patient/p1", "Practitioner/doc"}


def test_include_iterate(graph):
    plain = run("Observation", "_id=o1&_include=Observation:subject&_include=Patient:organization")
    assert include_refs(plain) == {"Patient/p1"}
    iterated = run(
        "Observation",
        "_id=o1&_include=Observation:subject&_include:iterate=Patient:organization"
        "&_include:iterate=Organization:partof",
    )
    assert include_refs(iterated) == {"Patient/p1", "Organization/org", "Organization/parent-org"}


def test_revinclude(graph):
    bundle = run("Patient", "_id=p1,p3&_revinclude=Observation:subject")
    assert set(match_ids(bundle)) == {"p1", "p3"}
    assert include_refs(bundle) == {"Observation/o1", "Observation/o3"}
    bundle = run("Patient", "_id=p1&_revinclude=Provenance:target")
    assert include_refs(bundle) == {"Provenance/prov"}


def test_revinclude_star_and_iterate(graph):
    bundle = run("Patient", "_id=p1&_revinclude=*")
    assert include_refs(bundle) == {"Observation/o1", "Observation/o3", "Provenance/prov"}
    bundle = run(
        "Organization", "_id=org&_revinclude=Patient:organization&_revinclude:iterate=Observation:subject"
    )
    assert include_refs(bundle) == {"Patient/p1", "Observation/o1", "Observation/o3"}


def test_a_resource_is_never_both_match_and_include(graph):
    bundle = run("Patient", "_revinclude=Observation:subject&_include=Patient:organization&_id=p1,p2")
    modes = {}
    for entry in bundle["entry"]:
        key = f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
        assert key not in modes
        modes[key] = entry["search"]["mode"]
    assert modes == {
        "Patient/p1": "match",
        "Patient/p2": "match",
        "Observation/o1": "include",
        "Observation/o2": "include",
        "Observation/o3": "include",
        "Organization/org": "include",
    }


def test_includes_are_per_page(graph):
    page1 = run("Observation", "_count=1&_include=Observation:subject")
    assert match_ids(page1) == ["o1"]
    assert include_refs(page1) == {"Patient/p1"}
    page2 = follow(link(page1, "next"))
    assert match_ids(page2) == ["o2"]
    assert include_refs(page2) == {"Patient/p2"}


def test_deleted_targets_are_not_included(graph):
    store.delete_resource("Observation", "o3")
    bundle = run("Patient", "_id=p1&_revinclude=Observation:subject")
    assert include_refs(bundle) == {"Observation/o1"}


@pytest.mark.parametrize(
    "value", ["Observation", "Observation:code", "Nope:subject", "Observation:subject:Nope", "a:b:c:d"]
)
def test_bad_include_is_400(value, graph):
    with pytest.raises(FhirError) as error:
        run("Observation", f"_include={value}")
    assert error.value.status == 400
