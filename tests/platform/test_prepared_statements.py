"""btt_health/prepared.py on PostgreSQL (the suite's database): a statement is prepared the second
time a connection runs it, then executed by name with the same results; the least recently used
one is deallocated past the limit."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from django.db import connection

from btt_health import prepared

pytestmark = pytest.mark.django_db

SQL = "SELECT %s::int + %s::int, %s::text"


def _prepared_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


def _run(sql: str, params: list) -> tuple:
    with connection.cursor() as cursor:
        prepared.execute(cursor, sql, params)
        return cursor.fetchone()


def test_prepared_the_second_time_with_the_same_results() -> None:
    connection.ensure_connection()
    before = _prepared_names()

    assert _run(SQL, [1, 2, "a"]) == (3, "a")
    assert _prepared_names() == before  # run once: not prepared
    assert _run(SQL, [3, 4, "b"]) == (7, "b")
    [name] = _prepared_names() - before
    with connection.cursor() as cursor:
        assert prepared.statement(cursor, SQL, 3) == f"EXECUTE {name}(%s, %s, %s)"
    assert _run(SQL, [5, 6, "it's"]) == (11, "it's")


def test_the_least_recently_used_statement_is_deallocated(monkeypatch) -> None:
    connection.ensure_connection()
    # Counted from none: the statements earlier tests prepared on this connection are left alone.
    monkeypatch.setattr(
        connection, "_btt_prepared", (connection.connection, OrderedDict(), OrderedDict()), raising=False
    )
    monkeypatch.setattr(prepared, "MAX_STATEMENTS", 2)
    before = _prepared_names()
    statements = [f"SELECT %s::int + {n}" for n in range(3)]
    for sql in statements[:2]:
        _run(sql, [1])
        _run(sql, [1])
    _run(statements[0], [1])  # now the second one is the least recently used
    assert len(_prepared_names() - before) == 2

    assert _run(statements[2], [1]) == (3,)
    assert _run(statements[2], [1]) == (3,)

    names = _prepared_names() - before
    assert len(names) == 2
    with connection.cursor() as cursor:
        kept = {
            prepared.statement(cursor, sql, 1).split("(")[0].removeprefix("EXECUTE ")
            for sql in statements[::2]
        }
    assert names == kept
    assert _run(statements[1], [1]) == (2,)  # deallocated: runs plainly again
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f"DEALLOCATE {name}")
