"""Union parameters: no index rows of their own, searched through their members'.

`searchparams.UNION_PARAMS` says Observation's `combo-code` is `code` | `component-code` (and so
on), and that `phonetic` is `name` on Patient, Person, Practitioner and RelatedPerson; these tests
check those claims against the definitions' own expressions, and that every kind of search on a
union parameter (plain, OR, :missing, :not, composite, _sort) finds what it would find if its
values were indexed under its own code.
"""

from __future__ import annotations

import pytest

from integrations.fhir.models.search_index import QuantityIndex, StringIndex, TokenIndex
from integrations.fhir.searchparams import UNION_PARAMS, extract_search_values
from tests.fhir.test_search_composite import bp, mmhg
from tests.fhir.test_search_support import LOINC, UCUM, create, ids, match_ids, observation, run

pytestmark = pytest.mark.django_db

SNOMED = "http://snomed.info/sct"


def samples() -> list[dict]:
    absent = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]
    }
    return [
        bp("bp-high-sys", 150, 80),
        bp("bp-high-dia", 110, 95),
        observation("sys-120", code="8480-6", valueQuantity=mmhg(120)),
        observation(
            "smoker",
            code="72166-2",
            valueCodeableConcept={"coding": [{"system": SNOMED, "code": "449868002"}]},
        ),
        observation("no-value", code="8310-5", dataAbsentReason=absent),
        observation(
            "component-concept",
            code="55284-4",
            component=[
                {
                    "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                    "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "260385009"}]},
                },
                {"code": {"coding": [{"system": LOINC, "code": "9279-1"}]}, "dataAbsentReason": absent},
            ],
        ),
    ]


@pytest.fixture
def observations() -> None:
    for resource in samples():
        create(resource)


PEOPLE = ("Patient", "Person", "Practitioner", "RelatedPerson")


def person(resource_type: str, logical_id: str, **content) -> dict:
    if resource_type == "RelatedPerson":  # required: whose related person
        content["patient"] = {"reference": "Patient/patient-named"}
    return {"resourceType": resource_type, "id": logical_id, **content}


def people() -> list[dict]:
    names = [
        {"use": "official", "family": "Chalmers", "given": ["Peter", "James"], "prefix": ["Mr."]},
        {"text": "Jimmy Chémers", "suffix": ["Jr"]},
    ]
    return [
        *(person(resource_type, f"{resource_type.lower()}-named", name=names) for resource_type in PEOPLE),
        *(person(resource_type, f"{resource_type.lower()}-unnamed") for resource_type in PEOPLE),
    ]


def test_each_union_is_the_union_of_its_members_values():
    """Against the R4 definitions: the union parameter's extracted values are its members'."""
    assert set(UNION_PARAMS) == {"Observation", *PEOPLE}
    for resource in [*samples(), *people()]:
        values = extract_search_values(resource)
        for code, members in UNION_PARAMS[resource["resourceType"]].items():
            expected = {value for member in members for value in values.get(member, [])}
            assert set(values.get(code, [])) == expected, (resource["id"], code)


def test_union_parameters_write_no_index_rows(observations):
    assert not TokenIndex.objects.filter(param__startswith="combo-").exists()
    assert not QuantityIndex.objects.filter(param__startswith="combo-").exists()
    assert TokenIndex.objects.filter(param="component-code").exists()


def test_token_and_quantity_searches_find_the_observation_and_its_components(observations):
    assert ids("Observation", f"combo-code={LOINC}|8480-6") == {"bp-high-sys", "bp-high-dia", "sys-120"}
    assert ids("Observation", "combo-code=85354-9,72166-2") == {"bp-high-sys", "bp-high-dia", "smoker"}
    assert ids("Observation", f"combo-value-quantity=gt140|{UCUM}|mm[Hg]") == {"bp-high-sys"}
    assert ids("Observation", "combo-value-quantity=120") == {"sys-120"}
    assert ids("Observation", "combo-value-concept=260385009") == {"component-concept"}
    assert ids("Observation", "combo-data-absent-reason=unknown") == {"no-value", "component-concept"}


def test_composite_pairs_stay_within_one_element(observations):
    assert ids("Observation", f"combo-code-value-quantity={LOINC}|8480-6$gt100") == {
        "bp-high-sys",
        "bp-high-dia",
        "sys-120",
    }
    # bp-high-sys's diastolic component is 80: its systolic 150 must not pair with that code.
    assert ids("Observation", f"combo-code-value-quantity={LOINC}|8462-4$gt100") == set()
    assert ids("Observation", f"combo-code-value-concept={LOINC}|8867-4${SNOMED}|260385009") == {
        "component-concept"
    }


def test_missing_and_not(observations):
    everything = {resource["id"] for resource in samples()}
    assert ids("Observation", "combo-value-quantity:missing=true") == {
        "smoker",
        "no-value",
        "component-concept",
    }
    assert ids("Observation", "combo-value-quantity:missing=false") == {
        "bp-high-sys",
        "bp-high-dia",
        "sys-120",
    }
    assert ids("Observation", "combo-code-value-quantity:missing=false") == {
        "bp-high-sys",
        "bp-high-dia",
        "sys-120",
    }
    assert ids("Observation", f"combo-code:not={LOINC}|8480-6") == everything - {
        "bp-high-sys",
        "bp-high-dia",
        "sys-120",
    }


def test_sort_by_a_union_parameter(observations):
    bundle = run("Observation", "combo-value-quantity:missing=false&_sort=-combo-value-quantity&_count=10")
    # Highest value of each: bp-high-sys 150, sys-120 120, bp-high-dia 110.
    assert match_ids(bundle) == ["bp-high-sys", "sys-120", "bp-high-dia"]


@pytest.fixture
def named_people() -> None:
    for resource in people():
        create(resource)


def test_phonetic_writes_no_index_rows(named_people):
    assert not StringIndex.objects.filter(param="phonetic").exists()
    assert StringIndex.objects.filter(resource_type="Practitioner", param="name").exists()


@pytest.mark.parametrize("resource_type", PEOPLE)
def test_phonetic_searches_find_what_name_finds(named_people, resource_type):
    named, unnamed = f"{resource_type.lower()}-named", f"{resource_type.lower()}-unnamed"
    for query in ("=chalm", "=jimmy%20chem", "=nobody,james", ":exact=Peter"):
        assert ids(resource_type, f"phonetic{query}") == ids(resource_type, f"name{query}") == {named}, query
    assert ids(resource_type, "phonetic=nobody") == set()
    assert ids(resource_type, "phonetic:missing=true") == {unnamed}
    assert ids(resource_type, "phonetic:contains=emer") == {named}
    bundle = run(resource_type, "_sort=phonetic")
    assert match_ids(bundle) == [named, unnamed]
