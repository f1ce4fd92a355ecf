"""String search: starts-with ignoring case and accents, :exact, :contains, :missing, OR/AND."""

from __future__ import annotations

import pytest

from tests.fhir.test_search_support import create, ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def patients() -> None:
    create(
        {
            "resourceType": "Patient",
            "id": "peter",
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        }
    )
    create({"resourceType": "Patient", "id": "pete", "name": [{"family": "Petersen", "given": ["Anna"]}]})
    create({"resourceType": "Patient", "id": "chloe", "name": [{"family": "Chémers", "given": ["Chloé"]}]})
    create({"resourceType": "Patient", "id": "noname", "gender": "other"})
    create(
        {
            "resourceType": "Patient",
            "id": "addr",
            "name": [{"text": "Mary Jane Smith"}],
            "address": [{"line": ["12 Main Street"], "city": "Springfield", "postalCode": "12345"}],
        }
    )


def test_default_is_case_insensitive_starts_with(patients):
    assert ids("Patient", "name=pete") == {"peter", "pete"}
    assert ids("Patient", "name=PETER") == {"peter", "pete"}
    assert ids("Patient", "family=chal") == {"peter"}


def test_accents_are_ignored(patients):
    assert ids("Patient", "name=chemers") == {"chloe"}
    assert ids("Patient", "given=chloe") == {"chloe"}
    assert ids("Patient", "given=CHLOÉ") == {"chloe"}


def test_exact_matches_the_whole_value_with_case_and_accents(patients):
    assert ids("Patient", "family:exact=Chémers") == {"chloe"}
    assert ids("Patient", "family:exact=Chemers") == set()
    assert ids("Patient", "family:exact=chémers") == set()
    assert ids("Patient", "given:exact=Peter") == {"peter"}
    assert ids("Patient", "given:exact=Pete") == set()


def test_contains_matches_anywhere(patients):
    assert ids("Patient", "name:contains=ters") == {"pete"}
    assert ids("Patient", "name:contains=EME") == {"chloe"}
    assert ids("Patient", "name:contains=jane") == {"addr"}


def test_name_covers_text_family_and_given(patients):
    assert ids("Patient", "name=mary") == {"addr"}
    assert ids("Patient", "name=james") == {"peter"}


def test_address_parts(patients):
    assert ids("Patient", "address=springf") == {"addr"}
    assert ids("Patient", "address-city=springfield") == {"addr"}
    assert ids("Patient", "address-postalcode=123") == {"addr"}
    assert ids("Patient", "address=12 main") == {"addr"}


def test_or_and(patients):
    assert ids("Patient", "name=anna,chloe") == {"pete", "chloe"}
    assert ids("Patient", "name=peter&name=james") == {"peter"}
    assert ids("Patient", "name=chalmers&name=anna") == set()


def test_missing(patients):
    assert ids("Patient", "name:missing=true") == {"noname"}
    assert ids("Patient", "family:missing=false") == {"peter", "pete", "chloe"}


def test_empty_value_is_ignored(patients):
    assert ids("Patient", "name=") == {"peter", "pete", "chloe", "noname", "addr"}
