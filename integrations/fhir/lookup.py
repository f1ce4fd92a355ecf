"""Fast look-ups the FHIR store offers other parts: resources by business identifier.

`find_by_identifiers(resource_type, identifiers)` answers "which current resources carry any of
these identifiers" in one indexed query over the token index (the rows the `identifier` search
parameter writes), without compiling a search: the HL7 v2 interface asks it for every message.
It reads the same rows as `Patient?identifier=system|value` and agrees with it; a value without
a system matches any system, as the search does.
"""

from __future__ import annotations

from django.db import connection

from integrations.fhir.models import ResourceRecord
from integrations.fhir.models.search_index import TOKEN_LEN, TokenIndex, clip


def find_by_identifiers(
    resource_type: str, identifiers: list[tuple[str | None, str]]
) -> list[tuple[str, str, str]]:
    """(logical id, system, value) for each current `resource_type` having one of `identifiers`
    ((system or None, value) pairs), oldest resource first; [] for no identifiers."""
    wanted = {(clip(system, TOKEN_LEN) or None, clip(value, TOKEN_LEN)) for system, value in identifiers}
    values = sorted({value for _, value in wanted if value})
    if not values:
        return []
    # `code IN (...)` keeps the look-up on the (resource_type, param, code, ...) index; the systems
    # are checked below (an OR of (code, system) pairs made PostgreSQL scan every identifier row).
    sql = (
        f"SELECT r.logical_id, t.system, t.code FROM {TokenIndex._meta.db_table} t "
        f"JOIN {ResourceRecord._meta.db_table} r ON r.id = t.record_id "
        f"WHERE t.resource_type = %s AND t.param = 'identifier' "
        f"AND t.code IN ({', '.join(['%s'] * len(values))}) AND NOT r.deleted ORDER BY r.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [resource_type, *values])
        rows = cursor.fetchall()
    return [
        (logical_id, system, code)
        for logical_id, system, code in rows
        if (system, code) in wanted or (None, code) in wanted
    ]
