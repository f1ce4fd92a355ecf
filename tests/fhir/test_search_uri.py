"""URI search: exact, :below (prefix), :above (ancestors), _profile, :missing."""

from __future__ import annotations

import pytest

from tests.fhir.test_search_support import create, ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def value_sets() -> None:
    for vid, url in [
        ("vs1", "http://acme.org/fhir/ValueSet/123"),
        ("vs2", "http://acme.org/fhir/ValueSet/1234"),
        ("vs3", "http://acme.org/other/ValueSet/9"),
        ("vs4", "http://acme.org/fhir"),
    ]:
        create({"resourceType": "ValueSet", "id": vid, "status": "active", "url": url})
    create({"resourceType": "ValueSet", "id": "vs-nourl", "status": "draft"})


def test_exact(value_sets):
    assert ids("ValueSet", "url=http://acme.org/fhir/ValueSet/123") == {"vs1"}
    assert ids("ValueSet", "url=http://acme.org/fhir/ValueSet/12") == set()


def test_below(value_sets):
    assert ids("ValueSet", "url:below=http://acme.org/fhir/") == {"vs1", "vs2"}
    assert ids("ValueSet", "url:below=http://acme.org/fhir/ValueSet/123") == {"vs1", "vs2"}


def test_above(value_sets):
    assert ids("ValueSet", "url:above=http://acme.org/fhir/ValueSet/123/_history/5") == {"vs1", "vs4"}


def test_missing(value_sets):
    assert ids("ValueSet", "url:missing=true") == {"vs-nourl"}


def test_profile_on_any_type():
    profile = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
    create({"resourceType": "Patient", "id": "pp", "meta": {"profile": [profile]}})
    create({"resourceType": "Patient", "id": "np"})
    assert ids("Patient", f"_profile={profile}") == {"pp"}
