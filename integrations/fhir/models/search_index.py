"""Search index tables (owned by integrations/fhir/indexing.py). Placeholder until written."""
