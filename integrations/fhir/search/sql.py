"""Search conditions as SQL text with parameters, rather than ORM expressions.

Building a search's conditions as Django `Q`/`Exists` trees and compiling them cost several times
what PostgreSQL spends answering the query (each lookup is resolved and compiled on every
request). A search condition is instead an `Sql`: a boolean SQL fragment about one resource
record, written with the placeholder `{rec}` for that record's table alias and `%s` for its
parameters. Fragments combine with `&`, `|` and `~`. `as_expression()` turns one into an ORM
expression for querysets (counts, `_sort`, `find_matches`), and the search engine puts the text
straight into its own statements for the default-order pages.

Only portable SQL (PostgreSQL and SQLite): values go through Django's adapters (`adapt_datetime`)
and LIKE patterns through its escaping (`like`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import BooleanField, Expression

RECORDS_TABLE = "fhir_resourcerecord"
REC = "{rec}"


@dataclass(frozen=True, slots=True)
class Sql:
    """A boolean SQL condition on the record `{rec}`, with its `%s` parameters in order.

    `records`, when set, is a SELECT of the ids (as `id`) of the live records the condition
    matches, from one index table that keeps them in record order (see `ConditionBuilder`): a
    page can walk that index alone. Combining conditions drops it.
    """

    text: str
    params: tuple = ()
    records: Sql | None = None

    def __and__(self, other: Sql) -> Sql:
        return Sql(f"({self.text} AND {other.text})", self.params + other.params)

    def __or__(self, other: Sql) -> Sql:
        return Sql(f"({self.text} OR {other.text})", self.params + other.params)

    def __invert__(self) -> Sql:
        return Sql(f"NOT ({self.text})", self.params)

    def on(self, alias: str) -> Sql:
        """This condition about the record whose table is known as `alias`."""
        return Sql(self.text.replace(REC, alias), self.params)

    def as_expression(self) -> SqlCondition:
        """This condition for `ResourceRecord.objects.filter(...)`."""
        return SqlCondition(self)


NOTHING = Sql("1 = 0")
EVERYTHING = Sql("1 = 1")


def all_of(conditions: list[Sql]) -> Sql:
    """The AND of `conditions` (at least one)."""
    return _joined(conditions, " AND ")


def any_of(conditions: list[Sql]) -> Sql:
    """The OR of `conditions` (at least one)."""
    return _joined(conditions, " OR ")


def _joined(conditions: list[Sql], operator: str) -> Sql:
    if len(conditions) == 1:
        return conditions[0]
    return Sql(
        "(" + operator.join(c.text for c in conditions) + ")",
        tuple(p for c in conditions for p in c.params),
    )


def equals(column: str, value: object) -> Sql:
    return Sql(f"{column} = %s", (value,))


def one_of(column: str, values: list) -> Sql:
    """`column` equal to one of `values` (nothing matches an empty list)."""
    if not values:
        return NOTHING
    if len(values) == 1:
        return equals(column, values[0])
    return Sql(f"{column} IN ({', '.join(['%s'] * len(values))})", tuple(values))


def like(column: str, value: str, *, kind: str) -> Sql:
    """`column` starting with (`kind="startswith"`) or containing (`"contains"`) `value` literally."""
    pattern = connection.ops.prep_for_like_query(value)
    pattern = f"{pattern}%" if kind == "startswith" else f"%{pattern}%"
    return Sql(f"{column} {connection.operators[kind]}", (pattern,))


def adapt_datetime(value: datetime) -> object:
    """`value` as the database driver takes it for a datetime column."""
    return connection.ops.adapt_datetimefield_value(value)


class SqlCondition(Expression):
    """An `Sql` condition usable in `ResourceRecord.objects.filter(...)`, also inside subqueries:
    `{rec}` becomes whatever alias the records table has in the statement being compiled."""

    conditional = True
    output_field = BooleanField()

    def __init__(self, sql: Sql, pk_column: Expression | None = None) -> None:
        super().__init__()
        self.sql = sql
        self.pk_column = pk_column

    def __repr__(self) -> str:
        return f"SqlCondition({self.sql.text!r})"

    def get_source_expressions(self) -> list:
        return [self.pk_column] if self.pk_column is not None else []

    def set_source_expressions(self, exprs: list) -> None:
        if exprs:
            (self.pk_column,) = exprs

    def resolve_expression(self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False):
        resolved = self.copy()
        # The records table's own id column: relabelled with the statement when it becomes a subquery.
        resolved.pk_column = query.resolve_ref("pk")
        return resolved

    def as_sql(self, compiler, connection):
        alias = compiler.quote_name_unless_alias(self.pk_column.alias)
        return self.sql.on(alias).text, list(self.sql.params)
