"""A lower and an upper bound on one date parameter form one range that the same value must meet.

This is HAPI FHIR's reading of `date=ge...&date=lt...` (and the spec's own example of a two-year
period); it lets the database answer both bounds from one index row.
"""

from __future__ import annotations

import pytest

from tests.fhir.test_search_support import create, ids

pytestmark = pytest.mark.django_db


def goal(goal_id: str, *due_dates: str) -> dict:
    return {
        "resourceType": "Goal",
        "id": goal_id,
        "lifecycleStatus": "active",
        "description": {"text": "keep HbA1c down"},
        "subject": {"reference": "Patient/p1"},
        "target": [{"dueDate": due} for due in due_dates],
    }


@pytest.fixture
def goals() -> None:
    create({"resourceType": "Patient", "id": "p1"})
    create(goal("due-in-2020", "2020-06-01"))
    create(goal("due-before-and-after-2020", "2019-01-01", "2022-01-01"))
    create(goal("due-2021", "2021-03-01"))


def test_both_bounds_apply_to_the_same_value(goals):
    assert ids("Goal", "target-date=ge2020-01-01&target-date=lt2021-01-01") == {"due-in-2020"}


def test_each_bound_alone_matches_any_value(goals):
    assert ids("Goal", "target-date=ge2020-01-01") == {"due-in-2020", "due-before-and-after-2020", "due-2021"}
    assert ids("Goal", "target-date=lt2021-01-01") == {"due-in-2020", "due-before-and-after-2020"}


def test_bounds_on_a_number_parameter_stay_independent(db):
    create({"resourceType": "Patient", "id": "p2"})
    assessment = {
        "resourceType": "RiskAssessment",
        "id": "two-predictions",
        "status": "final",
        "subject": {"reference": "Patient/p2"},
        "prediction": [{"probabilityDecimal": 0.1}, {"probabilityDecimal": 0.9}],
    }
    create(assessment)

    assert ids("RiskAssessment", "probability=gt0.5&probability=lt0.5") == {"two-predictions"}
