from integrations.fhir.models.resources import ResourceRecord, ResourceVersion
from integrations.fhir.models.search_index import *  # noqa: F403  (index tables, owned by indexing.py)

__all__ = ["ResourceRecord", "ResourceVersion"]
