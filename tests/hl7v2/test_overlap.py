"""`overlap.meanwhile`: with psycopg2's wait callback installed, the work runs while the block's
query is in flight on PostgreSQL; without it, the work runs when its result is asked for, and not
at all when it is not; what the work raised is raised by `result()`. (The MLLP listener installs
the callback for its process: every test through the listener runs with it.) The work goes to
the first wait: in a transaction the driver opened itself, that is its BEGIN's; the listener
applies messages with the driver in autocommit, its BEGIN in the first statement's text."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2.extensions
import pytest
from django.db import connection

from integrations.hl7v2 import overlap

pytestmark = pytest.mark.django_db


@pytest.fixture
def wait_callback() -> Iterator[None]:
    if connection.vendor != "postgresql":
        pytest.fail("psycopg2's wait callback needs PostgreSQL: run with DATABASE_URL on PostgreSQL")
    overlap.install()  # from the next query on
    try:
        yield
    finally:
        psycopg2.extensions.set_wait_callback(None)


@pytest.mark.django_db(transaction=True)  # autocommit, as the listener applies messages: no BEGIN first
def test_the_work_runs_while_the_query_is_in_flight(wait_callback) -> None:
    ran_at: list[float] = []

    def work() -> str:
        ran_at.append(time.perf_counter())
        time.sleep(0.3)  # as long as the query: done in parallel, the block takes ~0.3 s, not 0.6
        return "built"

    connection.ensure_connection()  # the block's first wait is then its query's, not connecting's
    began = time.perf_counter()
    with overlap.meanwhile(work) as deferred, connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.3), 42")
        answer = cursor.fetchone()[1]
    elapsed = time.perf_counter() - began
    assert answer == 42
    assert ran_at  # during the query's wait, before the block ended
    assert deferred.result() == "built"
    assert len(ran_at) == 1  # once
    assert elapsed < 0.5


def test_without_the_callback_the_work_runs_when_asked_for_or_never() -> None:
    runs: list[int] = []
    with overlap.meanwhile(lambda: runs.append(1) or "value") as deferred:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert runs == []
    assert deferred.result() == "value"
    assert deferred.result() == "value"
    assert runs == [1]

    with overlap.meanwhile(lambda: runs.append(2)), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert runs == [1]  # never asked for: never run


def test_what_the_work_raised_is_raised_by_result(wait_callback) -> None:
    def work() -> None:
        raise ValueError("no such patient field")

    with overlap.meanwhile(work) as deferred, connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # the wait runs the work; its error does not break the query
        assert cursor.fetchone() == (1,)
    with pytest.raises(ValueError, match="no such patient field"):
        deferred.result()
