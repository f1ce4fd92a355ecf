"""Date search: precision ranges, every prefix with R4 range semantics, periods, _lastUpdated."""

from __future__ import annotations

import time

import pytest

from integrations.fhir import store
from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import create, ids, observation, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def observations() -> None:
    create(observation("o-day", effectiveDateTime="2020-01-15"))
    create(observation("o-instant", effectiveDateTime="2020-01-31T23:30:00Z"))
    create(observation("o-feb", effectiveDateTime="2020-02-01T00:00:00Z"))
    create(observation("o-period", effectivePeriod={"start": "2019-12-20", "end": "2020-01-10"}))
    create(observation("o-open", effectivePeriod={"start": "2020-03-01"}))
    create(observation("o-2019", effectiveDateTime="2019-06-01"))
    create(observation("o-far", effectiveDateTime="2000-01-01"))
    create(observation("o-none"))


def test_eq_means_contained_in_the_precision_range(observations):
    assert ids("Observation", "date=2020-01") == {"o-day", "o-instant"}
    assert ids("Observation", "date=eq2020-01-15") == {"o-day"}
    assert ids("Observation", "date=2020") == {"o-day", "o-instant", "o-feb"}


def test_range_by_two_parameters(observations):
    assert ids("Observation", "date=ge2020-01-01&date=lt2020-02-01") == {"o-day", "o-instant", "o-period"}


def test_gt_and_sa(observations):
    assert ids("Observation", "date=gt2020-01-31") == {"o-feb", "o-open"}
    assert ids("Observation", "date=sa2020-01-31") == {"o-feb", "o-open"}
    # A period overlapping the boundary is "greater" (part of it is after) but does not start after.
    assert ids("Observation", "date=gt2020-01-05") == {"o-day", "o-instant", "o-feb", "o-period", "o-open"}
    assert ids("Observation", "date=sa2020-01-05") == {"o-day", "o-instant", "o-feb", "o-open"}


def test_lt_and_eb(observations):
    assert ids("Observation", "date=lt2020-01-01") == {"o-period", "o-2019", "o-far"}
    assert ids("Observation", "date=eb2020-01-01") == {"o-2019", "o-far"}


def test_ge_and_le(observations):
    assert ids("Observation", "date=ge2020-02-01") == {"o-feb", "o-open"}
    assert ids("Observation", "date=le2020-01-15") == {"o-period", "o-2019", "o-far", "o-day"}


def test_ne(observations):
    assert ids("Observation", "date=ne2020-01") == {"o-feb", "o-period", "o-open", "o-2019", "o-far"}


def test_ap_is_approximately(observations):
    found = ids("Observation", "date=ap2020-01-15")
    assert {"o-day", "o-instant"} <= found
    assert "o-far" not in found


def test_time_zones_and_seconds(observations):
    assert ids("Observation", "date=2020-01-31T23:30:00Z") == {"o-instant"}
    assert ids("Observation", "date=2020-02-01T01:00:00+01:00") == {"o-feb"}
    assert ids("Observation", "date=2020-01-31T23:30") == {"o-instant"}


def test_or_values(observations):
    assert ids("Observation", "date=2019,2000") == {"o-2019", "o-far"}


def test_missing(observations):
    assert ids("Observation", "date:missing=true") == {"o-none"}


def test_birthdate_date_parameter():
    create({"resourceType": "Patient", "id": "p74", "birthDate": "1974-12-25"})
    create({"resourceType": "Patient", "id": "p80", "birthDate": "1980"})
    assert ids("Patient", "birthdate=1974-12-25") == {"p74"}
    assert ids("Patient", "birthdate=1974") == {"p74"}
    assert ids("Patient", "birthdate=lt1975") == {"p74"}
    assert ids("Patient", "birthdate=ge1980-06-01") == {"p80"}  # the year 1980 reaches past June 1st


@pytest.mark.parametrize(
    "value", ["2020-13-01", "2020-1", "xx2020", "gt", "2020-02-30", "yesterday", "2020-01-01T25:00"]
)
def test_bad_dates_are_400_naming_parameter_and_value(value):
    with pytest.raises(FhirError) as error:
        run("Observation", f"date={value}")
    assert error.value.status == 400
    assert "date" in str(error.value)
    assert value in str(error.value)


def test_last_updated():
    first = store.create_resource(observation("lu-1"))
    time.sleep(0.01)
    store.create_resource(observation("lu-2"))
    stamp = store.format_instant(first.stored.last_updated)
    ids_after = ids("Observation", f"_lastUpdated=gt{stamp}")
    assert len(ids_after) == 1
    assert first.stored.logical_id not in ids_after
    assert ids("Observation", f"_lastUpdated={stamp}") == {first.stored.logical_id}
    assert len(ids("Observation", "_lastUpdated=gt2000-01-01")) == 2
    assert ids("Observation", "_lastUpdated=lt2000-01-01") == set()
    with pytest.raises(FhirError):
        run("Observation", "_lastUpdated=banana")
