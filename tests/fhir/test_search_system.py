"""System-level search: _type, _id, _lastUpdated and shared parameters across types."""

from __future__ import annotations

import pytest

from integrations.fhir.outcomes import FhirError
from tests.fhir.test_search_support import BASE, create, ids, observation, patient, run

pytestmark = pytest.mark.django_db

TAG = {"system": "http://btt.health/tags", "code": "imported"}


@pytest.fixture
def data() -> None:
    create(patient("p1", "Smith", meta={"tag": [TAG]}))
    create(patient("p2", "Jones"))
    create({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Smith"}]})
    create(observation("o1", code="x", meta={"tag": [TAG]}))
    create({"resourceType": "Organization", "id": "org", "name": "Smith & Co"})


def full_urls(bundle: dict) -> set[str]:
    return {e["fullUrl"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def test_type_lists_the_types(data):
    bundle = run(None, "_type=Patient,Observation&_count=50")
    assert full_urls(bundle) == {f"{BASE}/Patient/p1", f"{BASE}/Patient/p2", f"{BASE}/Observation/o1"}


def test_everything_without_type(data):
    assert len(ids(None, "")) == 5


def test_id_across_types(data):
    assert full_urls(run(None, "_id=p1,o1,dr")) == {
        f"{BASE}/Patient/p1",
        f"{BASE}/Observation/o1",
        f"{BASE}/Practitioner/dr",
    }


def test_shared_parameter_across_all_types(data):
    assert full_urls(run(None, f"_tag={TAG['system']}|imported")) == {
        f"{BASE}/Patient/p1",
        f"{BASE}/Observation/o1",
    }


def test_parameter_of_some_types_only_matches_those(data):
    assert full_urls(run(None, "_type=Patient,Practitioner,Observation&name=smith")) == {
        f"{BASE}/Patient/p1",
        f"{BASE}/Practitioner/dr",
    }
    assert full_urls(run(None, "_type=Patient,Observation&code=x")) == {f"{BASE}/Observation/o1"}
    assert full_urls(run(None, "name=smith")) == {
        f"{BASE}/Patient/p1",
        f"{BASE}/Practitioner/dr",
        f"{BASE}/Organization/org",
    }


def test_last_updated_across_types(data):
    assert len(ids(None, "_lastUpdated=gt2000-01-01")) == 5
    assert ids(None, "_lastUpdated=lt2000-01-01") == set()


def test_unknown_type_is_400(data):
    with pytest.raises(FhirError) as error:
        run(None, "_type=Patient,Nope")
    assert error.value.status == 400
    assert "Nope" in str(error.value)
