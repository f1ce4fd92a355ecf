"""_sort: several keys, descending, any indexed parameter, _id, _lastUpdated, missing values last."""

from __future__ import annotations

import time

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, match_ids, observation, patient, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def patients() -> None:
    create(patient("a", "Smith", birthDate="1980-01-01", gender="male"))
    create(patient("b", "Jones", birthDate="1970-05-05", gender="female"))
    create(patient("c", "Smith", birthDate="1990-01-01", gender="female"))
    create({"resourceType": "Patient", "id": "d", "gender": "male"})


def test_string(patients):
    assert match_ids(run("Patient", "_sort=family")) == ["b", "a", "c", "d"]
    assert match_ids(run("Patient", "_sort=-family")) == ["a", "c", "b", "d"]


def test_several_keys(patients):
    assert match_ids(run("Patient", "_sort=family,-birthdate")) == ["b", "c", "a", "d"]
    assert match_ids(run("Patient", "_sort=gender,birthdate")) == ["b", "c", "a", "d"]


def test_date(patients):
    assert match_ids(run("Patient", "_sort=birthdate")) == ["b", "a", "c", "d"]
    assert match_ids(run("Patient", "_sort=-birthdate")) == ["c", "a", "b", "d"]


def test_id_and_last_updated(patients):
    assert match_ids(run("Patient", "_sort=-_id")) == ["d", "c", "b", "a"]
    time.sleep(0.01)
    create(patient("a", "Smith"))  # updated last
    assert match_ids(run("Patient", "_sort=-_lastUpdated"))[0] == "a"
    assert match_ids(run("Patient", "_sort=_lastUpdated"))[-1] == "a"


def test_multi_valued_parameter_sorts_by_lowest_or_highest_value():
    create({"resourceType": "Patient", "id": "x", "name": [{"given": ["Bob", "Zed"]}]})
    create({"resourceType": "Patient", "id": "y", "name": [{"given": ["Carl"]}]})
    assert match_ids(run("Patient", "_sort=given")) == ["x", "y"]
    assert match_ids(run("Patient", "_sort=-given")) == ["x", "y"]


def test_token_quantity_and_reference():
    create(patient("p1"))
    create(patient("p2"))
    create(observation("o1", code="b", subject="Patient/p2", valueQuantity={"value": 5}))
    create(observation("o2", code="a", subject="Patient/p1", valueQuantity={"value": 50}))
    create(observation("o3", code="c", valueQuantity={"value": 0.5}))
    assert match_ids(run("Observation", "_sort=code")) == ["o2", "o1", "o3"]
    assert match_ids(run("Observation", "_sort=-value-quantity")) == ["o2", "o1", "o3"]
    assert match_ids(run("Observation", "_sort=value-quantity")) == ["o3", "o1", "o2"]
    assert match_ids(run("Observation", "_sort=subject")) == ["o2", "o1", "o3"]


@pytest.mark.parametrize("value", ["nonsense", "-nonsense", "code-value-quantity"])
def test_bad_sort_is_400(value):
    with pytest.raises(FhirError) as error:
        run("Observation", f"_sort={value}")
    assert error.value.status == 400
