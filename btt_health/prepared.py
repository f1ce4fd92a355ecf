"""Server-side prepared statements for the hottest statements on PostgreSQL.

`execute(cursor, sql, params)` runs `sql` (Django's `%s` placeholders, no literal `%`) as a
prepared statement of the cursor's connection: the second time a connection runs a statement it
sends `PREPARE`, and from then on `EXECUTE name(...)`, so PostgreSQL parses and plans it once per
connection (it keeps a generic plan after five executions when that plan costs no more) instead
of on every call; on this machine planning a multi-table write took longer than running it. A
statement run once is not prepared (a write's text depends on how many index rows it has: some
shapes come once). Elsewhere (SQLite) the statement runs as it is.

- Statements are told apart by their text: write the parameter types where PostgreSQL cannot infer
  them from the context (`%s::timestamptz` in a SELECT list).
- Each connection keeps at most `MAX_STATEMENTS` prepared; the least recently used one is
  deallocated. A prepared statement outlives a rolled-back transaction; a new connection (after
  a database restart, say) starts with none. Not for connection poolers that hand a session's
  statements to other clients (PgBouncer in transaction mode), like the store's prepared read.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from django.db import connection

MAX_STATEMENTS = 100
# Statements run once on a connection, remembered to prepare them the second time.
MAX_SEEN = 1000


def execute(cursor, sql: str, params: Sequence) -> None:
    """Run `sql` with `params` on `cursor` (of `django.db.connection`), prepared on PostgreSQL."""
    cursor.execute(statement(cursor, sql, len(params)), params)


def execute_named(cursor, sql: str, params: Mapping) -> None:
    """`execute` for a statement written with named placeholders (`%(name)s`, a name may repeat)."""
    positional, names = _positional(sql)
    execute(cursor, positional, [params[name] for name in names])


_NAMED = re.compile(r"%\((\w+)\)s")


@functools.lru_cache(maxsize=256)
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with `%s` for each `%(name)s`, and the names in the order they appear."""
    return _NAMED.sub("%s", sql), tuple(_NAMED.findall(sql))


def statement(cursor, sql: str, param_count: int) -> str:
    """What to run for `sql` (with `param_count` `%s` placeholders) with the same parameters:
    `EXECUTE name(%s, ...)` on PostgreSQL (preparing it on this connection now if it ran before),
    else `sql` itself. For callers that send it along with other statements in one round trip."""
    if connection.vendor != "postgresql":
        return sql
    statements, seen = _state()
    name = statements.get(sql)
    if name is None:
        if sql not in seen:
            seen[sql] = None
            if len(seen) > MAX_SEEN:
                seen.popitem(last=False)
            return sql
        del seen[sql]
        name = "btt_" + hashlib.blake2b(sql.encode(), digest_size=8).hexdigest()
        if len(statements) >= MAX_STATEMENTS:
            _, oldest = statements.popitem(last=False)
            cursor.execute(f"DEALLOCATE {oldest}")
        cursor.execute(f"PREPARE {name} AS {_numbered(sql)}")
        statements[sql] = name
    else:
        statements.move_to_end(sql)
    if param_count:
        return f"EXECUTE {name}({', '.join(['%s'] * param_count)})"
    return f"EXECUTE {name}"


def _state() -> tuple[OrderedDict[str, str], OrderedDict[str, None]]:
    """The statements prepared on the current database connection, and those seen once (Django's
    connection objects are per thread; the underlying connection changes when Django reconnects)."""
    raw = connection.connection
    state = getattr(connection, "_btt_prepared", None)
    if state is None or state[0] is not raw:
        state = (raw, OrderedDict(), OrderedDict())
        connection._btt_prepared = state
    return state[1], state[2]


def _numbered(sql: str) -> str:
    """`%s` placeholders as PostgreSQL's `$1, $2, ...`."""
    parts = sql.split("%s")
    out = [parts[0]]
    for number, part in enumerate(parts[1:], start=1):
        out.append(f"${number}{part}")
    return "".join(out)
