"""Plain creates of a transaction take the bulk path: the query count does not grow with size."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.fhir.models import ResourceRecord

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


def patient_with_observations(count: int, tag: str) -> dict:
    urn = f"urn:uuid:6a1d0c8e-5555-4eee-8fff-{tag:0>12}"
    entries = [
        {
            "fullUrl": urn,
            "resource": {"resourceType": "Patient", "identifier": [{"system": "http://x", "value": tag}]},
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    entries += [
        {
            "fullUrl": f"urn:uuid:6a1d0c8e-5555-4eee-9fff-{tag:0>6}{i:06d}",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": urn},
                "effectiveDateTime": "2024-03-01T09:05:00Z",
                "valueQuantity": {
                    "value": 60 + i,
                    "unit": "/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            },
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(count)
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def queries_for(client, bundle: dict) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.post("/fhir", json.dumps(bundle), content_type=FHIR_JSON)
    assert response.status_code == 200, response.content
    return [query["sql"] for query in captured.captured_queries]


def without_index_inserts(queries: list[str]) -> list[str]:
    # Index rows are inserted by `indexing` in batches sized by the driver's parameter limit
    # (SQLite: 999), so their count may grow with the rows; everything else must not. A PREPARE is
    # sent once per connection and statement shape (btt_health.prepared), whatever the size.
    return [sql for sql in queries if not sql.startswith(('INSERT INTO "fhir_idx_', "PREPARE "))]


def test_query_count_does_not_depend_on_the_number_of_entries(api_client):
    queries_for(api_client, patient_with_observations(1, "1"))  # Warm caches (the token lookup).

    small = queries_for(api_client, patient_with_observations(10, "2"))
    large = queries_for(api_client, patient_with_observations(100, "3"))

    assert len(without_index_inserts(large)) == len(without_index_inserts(small))
    if connection.vendor == "postgresql":
        # One statement writes the records, their first versions and their index rows.
        writes = [sql for sql in without_index_inserts(large) if "SAVEPOINT" not in sql]
        assert len(writes) == 1, writes
    else:
        assert sum(sql.startswith('INSERT INTO "fhir_resourcerecord"') for sql in large) == 1
        assert sum(sql.startswith('INSERT INTO "fhir_resourceversion"') for sql in large) == 1
    assert ResourceRecord.objects.count() == 2 + 11 + 101
