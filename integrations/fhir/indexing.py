"""Search indexing: turns a resource's search values into rows of the index tables.

The store calls these inside its write transaction, so the index always matches the current
version of every record. On PostgreSQL the rows travel inside the statement that writes the
record(s), one array parameter per column:
- `write_clauses(record, resource)`: a single-record create/update/patch (or, with `resource`
  None, a delete) as clauses of that statement;
- `bulk_insert_clauses(pairs, records_sql=...)`: the rows of many new records (transaction
  Bundles), each joined to its record by type and id.
Elsewhere (SQLite) the store calls
- `index_resource(record, resource)` after a create/update/patch (replaces the record's rows),
- `index_resources(pairs)` for many records at once: one DELETE and one multi-row INSERT per
  table for the whole batch,
- `clear_index(record)` on delete.

Values come from `searchparams.extract_search_values` (the `search_values` contract); a parameter
without values writes nothing, which is what `:missing=true` looks for.

Rows are built as plain tuples rather than model instances: building and compiling tens of
thousands of model objects cost more than the database work when ingesting transaction Bundles.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache

from django.db import connection

from integrations.fhir.models import ResourceRecord
from integrations.fhir.models.search_index import (
    PARAM_LEN,
    STRING_LEN,
    TOKEN_LEN,
    TYPE_LEN,
    UNIT_LEN,
    URL_LEN,
    DateIndex,
    NumberIndex,
    QuantityIndex,
    ReferenceIndex,
    StringIndex,
    TokenIndex,
    UriIndex,
    clip,
)
from integrations.fhir.search_values import (
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SearchValue,
    SimpleValue,
    StringValue,
    TokenValue,
    UriValue,
)

# Open period ends are stored as these bounds so that every date comparison is a plain indexed
# column comparison (no NULL handling in the queries).
DATE_MIN = datetime(1, 1, 1, tzinfo=UTC)
DATE_MAX = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)

INDEX_MODELS = (TokenIndex, StringIndex, ReferenceIndex, DateIndex, NumberIndex, QuantityIndex, UriIndex)

# The value columns of each table, in the order `_values` builds them (after the common
# record_id, resource_type, param, group_no).
_VALUE_FIELDS = {
    TokenIndex: ("system", "code", "text"),
    StringIndex: ("value", "exact"),
    ReferenceIndex: ("target_type", "target_id", "url", "identifier_system", "identifier_value"),
    DateIndex: ("low", "high"),
    NumberIndex: ("value", "low", "high"),
    QuantityIndex: ("value", "low", "high", "system", "code", "unit"),
    UriIndex: ("uri",),
}
_BATCH = 2000


def index_resource(record: ResourceRecord, resource: dict) -> None:
    """Replace `record`'s index rows with the search values of `resource` (its current version)."""
    index_resources([(record, resource)])


def index_resources(pairs: list[tuple[ResourceRecord, dict]]) -> None:
    """`index_resource` for many records: one DELETE and at most one INSERT per index table."""
    if not pairs:
        return
    rows = _index_rows(pairs)
    # A first version (version_id 1) has never been indexed: nothing to delete for it.
    _delete_rows([record.pk for record, _ in pairs if record.version_id > 1])
    for model, model_rows in rows.items():
        if model_rows:
            _insert(model, model_rows)


def clear_index(record: ResourceRecord) -> None:
    """Remove every index row of `record` (it was deleted, so no search may find it)."""
    _delete_rows([record.pk])


def write_clauses(
    record: ResourceRecord, resource: dict | None, *, record_id_sql: str | None = None
) -> tuple[list[str], list]:
    """PostgreSQL: what `index_resource` (or, with `resource` None, `clear_index`) writes, as
    data-modifying clauses `name AS (statement)` for a `WITH` and their parameters, so the store
    writes a record, its version and its index rows in one statement (one round trip).

    Old rows are deleted when the record had a version before (`record.version_id > 1`). All the
    clauses of one statement see the same snapshot, so the DELETEs remove only the rows written
    before the statement, never the ones its INSERTs add. `record_id_sql` is an SQL expression
    for the record id when it is not known yet (`(SELECT id FROM rec)`: the record the statement
    inserts); else `record.pk` is used.
    """
    clauses: list[str] = []
    params: list = []
    if record.version_id > 1:
        for number, model in enumerate(INDEX_MODELS):
            table = connection.ops.quote_name(model._meta.db_table)
            clauses.append(f"idx_del{number} AS (DELETE FROM {table} WHERE record_id = %s)")
            params.append(record.pk)
    if resource is None:
        return clauses, params
    for number, (model, rows) in enumerate(_index_rows([(record, resource)]).items()):
        if not rows:
            continue
        # One array parameter per column (unnest zips them into rows), so the statement's text
        # depends on which tables get rows, not on how many: few shapes to prepare.
        clauses.append(f"idx_ins{number} AS ({_insert_unnest_sql(model, record_id_sql or '%s::bigint')})")
        if not record_id_sql:
            params.append(record.pk)
        params.extend(_array_literal(column) for column in zip(*(row[1:] for row in rows), strict=True))
    return clauses, params


def _array_literal(values: tuple) -> str:
    """The PostgreSQL array literal (`{"a","b"}`) of one column's values (str, int, float,
    datetime), for a `%s::<type>[]` parameter: psycopg2 quotes one string, where a list costs it
    about a microsecond per item (a Patient's write had ~150 µs of parameter adaptation)."""
    kinds = {value.__class__ for value in values}
    if kinds == {str}:
        joined = "".join(values)  # probed without the separators, which hold quotes themselves
        if "\\" in joined or '"' in joined:
            values = tuple(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
        return '{"' + '","'.join(values) + '"}'
    if kinds == {int}:
        return "{" + ",".join(map(str, values)) + "}"
    return "{" + ",".join(map(_array_element, values)) + "}"


def _array_element(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return f'"{value.isoformat()}"'
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        # repr: the shortest exact form ('inf', 'nan' and '1e+300' included), which float8in
        # reads back as the same double.
        return repr(value)
    raise TypeError(f"no array literal for {type(value).__name__} values")


def bulk_insert_clauses(
    pairs: list[tuple[ResourceRecord, dict]], *, records_sql: str
) -> tuple[list[str], list]:
    """PostgreSQL: the INSERTs of the index rows of many new records as clauses of a `WITH`
    that inserts the records themselves as `records_sql` (a clause name whose rows have `id`,
    `resource_type` and `logical_id`): each row finds its record id by (type, logical id).

    One array parameter per column, as in `write_clauses`.
    """
    clauses: list[str] = []
    params: list = []
    for number, (model, rows) in enumerate(_index_rows(pairs, key=lambda r: r.logical_id).items()):
        if not rows:
            continue
        names = ", ".join(f"c{i}" for i in range(3 + len(_VALUE_FIELDS[model])))
        clauses.append(
            f"idx_ins{number} AS ({_insert_head(model)}SELECT {records_sql}.id, {names} "
            f"FROM unnest(%s::text[], {_column_arrays(model)}) AS u(lid, {names}) "
            f"JOIN {records_sql} ON {records_sql}.logical_id = u.lid AND {records_sql}.resource_type = u.c0)"
        )
        params.extend(_array_literal(column) for column in zip(*rows, strict=True))
    return clauses, params


def _index_rows(
    pairs: list[tuple[ResourceRecord, dict]], key=lambda record: record.pk
) -> dict[type, list[tuple]]:
    """The index rows of each record's resource, by index table (the first column: `key(record)`)."""
    from integrations.fhir.searchparams import extract_search_values

    rows: dict[type, list[tuple]] = {model: [] for model in INDEX_MODELS}
    for record, resource in pairs:
        for model, row in _rows_for(record, extract_search_values(resource, indexed=True), key(record)):
            rows[model].append(row)
    return rows


# --- database writes ------------------------------------------------------------------------------


@cache
def _insert_sql(model: type) -> str:
    return _insert_head(model) + "VALUES "


@cache
def _insert_head(model: type) -> str:
    meta = model._meta
    columns = ["record_id", "resource_type", "param", "group_no", *_VALUE_FIELDS[model]]
    quoted = ", ".join(
        connection.ops.quote_name(meta.get_field(c).column if c != "record_id" else c) for c in columns
    )
    return f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({quoted}) "


# PostgreSQL array types of the index columns, by Django field type.
_ARRAY_TYPES = {
    "CharField": "text[]",
    "TextField": "text[]",
    "PositiveIntegerField": "integer[]",
    "FloatField": "double precision[]",
    "DateTimeField": "timestamptz[]",
}


@cache
def _column_arrays(model: type) -> str:
    """`%s::<type>[]` for each column of `model`'s rows after the record id (PostgreSQL)."""
    columns = ["resource_type", "param", "group_no", *_VALUE_FIELDS[model]]
    return ", ".join(f"%s::{_ARRAY_TYPES[model._meta.get_field(c).get_internal_type()]}" for c in columns)


@cache
def _insert_unnest_sql(model: type, record_id_sql: str) -> str:
    """INSERT of a record's rows given as one array per column after the record id (PostgreSQL)."""
    return f"{_insert_head(model)}SELECT {record_id_sql}, * FROM unnest({_column_arrays(model)})"


def _insert(model: type, rows: list[tuple]) -> None:
    """One multi-row INSERT (`index_resources`, the non-PostgreSQL path)."""
    placeholders = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    with connection.cursor() as cursor:
        cursor.executemany(_insert_sql(model) + placeholders, rows)


def _delete_rows(record_ids: list[int]) -> None:
    """Delete the index rows of these records: one statement per table and batch.

    Records created together have consecutive ids; then a range condition replaces the long
    IN list (one index range scan instead of an index probe per id).
    """
    ids = sorted(set(record_ids))
    if not ids:
        return
    if ids[-1] - ids[0] + 1 == len(ids):
        condition, params = "record_id BETWEEN %s AND %s", [ids[0], ids[-1]]
        batches = [(condition, params)]
    else:
        batches = []
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            batches.append((f"record_id IN ({', '.join(['%s'] * len(chunk))})", chunk))
    with connection.cursor() as cursor:
        for model in INDEX_MODELS:
            table = connection.ops.quote_name(model._meta.db_table)
            for condition, params in batches:
                cursor.execute(f"DELETE FROM {table} WHERE {condition}", params)


# --- rows -----------------------------------------------------------------------------------------


def _rows_for(
    record: ResourceRecord, values: dict[str, list[SearchValue]], record_id: object
) -> Iterable[tuple[type, tuple]]:
    """(model, row tuple starting with `record_id`) for each distinct value of each parameter of
    one resource."""
    from integrations.fhir.searchparams import normalize_string

    resource_type = clip(record.resource_type, TYPE_LEN)
    adapt = connection.ops.adapt_datetimefield_value
    for code, param_values in values.items():
        seen: set[tuple] = set()
        group_no = 0
        for value in param_values:
            if isinstance(value, CompositeValue):
                group_no += 1
                for index, component_values in enumerate(value.components):
                    param = clip(f"{code}${index}", PARAM_LEN)
                    for component in component_values:
                        built = _values(component, normalize_string, adapt)
                        if built is not None:
                            yield built[0], (record_id, resource_type, param, group_no, *built[1])
                continue
            built = _values(value, normalize_string, adapt)
            # Duplicates (the same coding twice, a name given twice) add nothing to a search.
            if built is not None and built not in seen:
                seen.add(built)
                yield built[0], (record_id, resource_type, clip(code, PARAM_LEN), 0, *built[1])


def _float(value) -> float:
    # Range bounds may be Decimal('±Infinity'); doubles hold infinities in both databases.
    return float(value)


def _values(value: SimpleValue, normalize, adapt) -> tuple[type, tuple] | None:
    """(model, value columns) for one simple value, or None when it holds nothing searchable."""
    if isinstance(value, TokenValue):
        if not value.code and not value.system and not value.text:
            return None
        text = clip(normalize(value.text), STRING_LEN) if value.text else ""
        return TokenIndex, (clip(value.system, TOKEN_LEN), clip(value.code, TOKEN_LEN), text)
    if isinstance(value, StringValue):
        if not value.value:
            return None
        return StringIndex, (clip(normalize(value.value), STRING_LEN), value.value)
    if isinstance(value, ReferenceValue):
        if not (value.target_id or value.url or value.identifier_value):
            return None
        return ReferenceIndex, (
            clip(value.target_type, TYPE_LEN),
            clip(value.target_id, TYPE_LEN),
            clip(value.url, URL_LEN),
            clip(value.identifier_system, TOKEN_LEN),
            clip(value.identifier_value, TOKEN_LEN),
        )
    if isinstance(value, DateValue):
        if value.low is None and value.high is None:
            return None
        low = value.low if value.low is not None else DATE_MIN
        high = value.high if value.high is not None else DATE_MAX
        return DateIndex, (adapt(low), adapt(high))
    if isinstance(value, QuantityValue):
        return QuantityIndex, (
            _float(value.value),
            _float(value.low),
            _float(value.high),
            clip(value.system, TOKEN_LEN),
            clip(value.code, UNIT_LEN),
            clip(value.unit, UNIT_LEN),
        )
    if isinstance(value, NumberValue):
        return NumberIndex, (_float(value.value), _float(value.low), _float(value.high))
    if isinstance(value, UriValue):
        if not value.uri:
            return None
        return UriIndex, (clip(value.uri, URL_LEN),)
    return None
