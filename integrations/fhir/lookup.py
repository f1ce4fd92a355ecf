"""Fast look-ups the FHIR store offers other parts: resources by business identifier.

`find_by_identifiers(resource_type, identifiers)` answers "which current resources carry any of
these identifiers" in one indexed query over the token index (the rows the `identifier` search
parameter writes), without compiling a search: the HL7 v2 interface asks it for every message.
It reads the same rows as `Patient?identifier=system|value` and agrees with it; a value without
a system matches any system, as the search does.
"""

from __future__ import annotations

from django.db import connection

from btt_health import prepared
from integrations.fhir import store
from integrations.fhir.models import ResourceRecord
from integrations.fhir.models.search_index import TOKEN_LEN, TokenIndex, clip

_TOKENS = TokenIndex._meta.db_table
_RECORDS = ResourceRecord._meta.db_table


def find_by_identifiers(
    resource_type: str,
    identifiers: list[tuple[str | None, str]],
    *,
    locks: list[list[tuple[str, str]]] | None = None,
) -> list[tuple[str, str, str]]:
    """(logical id, system, value) for each current `resource_type` having one of `identifiers`
    ((system or None, value) pairs), oldest resource first; [] for no identifiers.

    `locks`: search criteria whose conditional-write locks to take first, in the order given
    (`store.lock_all_criteria`), for a caller that creates the resource when none is found. On
    PostgreSQL the locks and the look-up go in one round trip as two statements, so the look-up
    (a statement of its own, with its own snapshot) sees everything committed before the locks
    were granted.
    """
    lock = store.lock_statement(resource_type, locks or [])
    wanted = {(clip(system, TOKEN_LEN) or None, clip(value, TOKEN_LEN)) for system, value in identifiers}
    values = sorted({value for _, value in wanted if value})
    if not values:
        if lock is not None:
            with connection.cursor() as cursor:
                cursor.execute(*lock)
        return []
    # One index probe on (resource_type, param, code, ...) per value; the systems are checked below
    # (an OR of (code, system) pairs made PostgreSQL scan every identifier row). Not `code IN (...)`:
    # on a table without statistics yet (a new database) PostgreSQL filtered every identifier row
    # of the type with it instead of probing the index; the LATERAL subquery (kept apart by
    # OFFSET 0) probes with `code = value` whatever the statistics say.
    if connection.vendor == "postgresql":
        # ARRAY[%s, ...] rather than one array parameter: prepared, its generic plan then knows
        # the number of values, and PostgreSQL keeps it instead of planning every execution.
        sql = (
            "SELECT t.logical_id, t.system, t.code "
            f"FROM unnest(ARRAY[{', '.join(['%s'] * len(values))}]::text[]) AS wanted(code) "
            f"CROSS JOIN LATERAL (SELECT r.id, r.logical_id, i.system, i.code FROM {_TOKENS} i "
            f"JOIN {_RECORDS} r ON r.id = i.record_id WHERE i.resource_type = %s "
            "AND i.param = 'identifier' AND i.code = wanted.code AND NOT r.deleted OFFSET 0) AS t "
            "ORDER BY t.id"
        )
        params: list = [*values, resource_type]
    else:
        sql = (
            f"SELECT r.logical_id, t.system, t.code FROM {_TOKENS} t JOIN {_RECORDS} r ON r.id = t.record_id "
            f"WHERE t.resource_type = %s AND t.param = 'identifier' "
            f"AND t.code IN ({', '.join(['%s'] * len(values))}) AND NOT r.deleted ORDER BY r.id"
        )
        params = [resource_type, *values]
    with connection.cursor() as cursor:
        query = prepared.statement(cursor, sql, len(params))
        if lock is not None:
            query, params = f"{lock[0]}; {query}", [*lock[1], *params]
        cursor.execute(query, params)
        rows = cursor.fetchall()
    return [
        (logical_id, system, code)
        for logical_id, system, code in rows
        if (system, code) in wanted or (None, code) in wanted
    ]
