"""Database sessions lent to threads (btt_health/db_sessions.py, what the MLLP listener and the
DICOM node use): a lent session is the borrowing thread's `django.db.connection` for the block
and works from that thread; a thread keeps to one session while it is free; no more than `size`
sessions are ever opened, and a borrower beyond them waits until one is given back (or, not
waiting, runs on its own connection); no more than `keep_idle` stay open while free, and one
given back inside a transaction is closed; after `close()` nothing is lent."""

from __future__ import annotations

import threading

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections

from btt_health.db_sessions import DatabaseSessions

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT 1")
        return cursor.fetchone()[0]


def _in_thread(fn, *args):
    result: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]
    return result[0]


def test_a_lent_session_is_the_threads_connection_for_the_block() -> None:
    sessions = DatabaseSessions(2)
    try:

        def borrow():
            own = connections[DEFAULT_DB_ALIAS]
            with sessions.lend() as session:
                assert connections[DEFAULT_DB_ALIAS] is session
                _backend_pid()  # a query, from a thread that did not open the session
            assert connections[DEFAULT_DB_ALIAS] is own
            return session

        first = _in_thread(borrow)
        second = _in_thread(borrow)
        assert first is second  # given back, then lent again: no second session opened
        assert sessions.opened == 1
    finally:
        sessions.close()


def test_one_connections_messages_keep_to_its_session() -> None:
    sessions = DatabaseSessions(4)
    release = threading.Event()
    lent = threading.Event()
    try:
        with sessions.lend() as mine:
            pass

        def hold_another() -> None:
            with sessions.lend():
                lent.set()
                release.wait(10)

        # Another connection takes the session freed last (mine); mine is free again after it.
        holder = threading.Thread(target=hold_another)
        holder.start()
        assert lent.wait(10)
        with sessions.lend(prefer=mine) as session:
            other_while_busy = session
        release.set()
        holder.join(10)
        assert other_while_busy is not mine  # a busy preferred session is not waited for
        for _ in range(20):
            with sessions.lend(prefer=mine) as session:
                assert session is mine
        assert sessions.opened == 2
    finally:
        sessions.close()


def test_no_more_than_size_sessions_and_a_borrower_beyond_them_waits() -> None:
    sessions = DatabaseSessions(1)
    got_it = threading.Event()
    try:
        with sessions.lend() as held:
            waiter = threading.Thread(target=lambda: _lend_and_signal(sessions, got_it))
            waiter.start()
            assert not got_it.wait(0.3)  # all sessions are lent: it waits
            assert sessions.opened == 1
        assert got_it.wait(10)  # given back: now it has it
        waiter.join(10)
        assert sessions.opened == 1
        with sessions.lend() as again:
            assert again is held
    finally:
        sessions.close()


def test_without_waiting_a_borrower_beyond_size_runs_on_its_own_connection() -> None:
    sessions = DatabaseSessions(1)
    try:
        with sessions.lend() as held:

            def borrow_without_waiting():
                own = connections[DEFAULT_DB_ALIAS]
                with sessions.lend(wait=False) as session:
                    assert session is own
                    _backend_pid()
                own.close()
                return session

            assert _in_thread(borrow_without_waiting) is not held
            assert sessions.opened == 1
    finally:
        sessions.close()


def _lend_and_signal(sessions: DatabaseSessions, event: threading.Event) -> None:
    with sessions.lend():
        event.set()


def test_sessions_beyond_keep_idle_are_closed_when_given_back() -> None:
    sessions = DatabaseSessions(3, keep_idle=1)
    try:
        with sessions.lend() as first:
            _backend_pid()
            with sessions.lend() as second:
                _backend_pid()
                assert sessions.opened == 2
        # `second` came back first and stays; `first` came back beyond keep_idle and was closed.
        assert second.connection is not None
        assert first.connection is None
        assert sessions.opened == 1
        with sessions.lend() as again:
            assert again is second
    finally:
        sessions.close()


def test_a_session_given_back_inside_a_transaction_is_closed_not_lent_again() -> None:
    sessions = DatabaseSessions(2)
    try:
        with sessions.lend() as session:
            session.set_autocommit(False)  # a borrower that left its transaction open
            _backend_pid()
        assert session.connection is None  # closed: PostgreSQL rolled the transaction back
        assert sessions.opened == 0
        with sessions.lend() as fresh:
            assert fresh is not session
            assert fresh.get_autocommit()
    finally:
        sessions.close()


def test_closed_sessions_are_closed_and_not_lent() -> None:
    sessions = DatabaseSessions(2)
    session = _in_thread(_lend_and_query, sessions)
    assert session.connection is not None
    sessions.close()
    assert session.connection is None
    with pytest.raises(RuntimeError, match="closed"), sessions.lend():
        pass


def _lend_and_query(sessions: DatabaseSessions):
    with sessions.lend() as session:
        _backend_pid()
    return session
