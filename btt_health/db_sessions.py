"""Database sessions lent to threads: a bounded set of Django connections, each lent to one thread
at a time, so that threads that come and go (an MLLP connection's, a DICOM association's) work
on warm PostgreSQL sessions instead of each opening its own.

`DatabaseSessions(size, keep_idle=None)`: `with sessions.lend(prefer=previous) as session:` makes
`session` the calling thread's `django.db.connection` for the block, then takes it back.

- At most `size` sessions are ever open at once. A thread gets the session it names in `prefer`
  (the one it used before) when that is free, else the one freed last, else a new one while
  fewer than `size` are open, else it waits until one is given back (with `wait=False` it runs
  on its own connection instead: a DICOM association beyond the limit, only to be rejected). So
  a busy MLLP connection keeps to one PostgreSQL session, whose caches and prepared statements
  are warm (a connection whose messages went to two sessions in turn was about a quarter
  slower), and a DICOM association starts on a session that is connected already (opening one
  cost ~5 ms, and its first statements ran on cold caches).
- `keep_idle`: at most this many sessions stay open while free; one given back beyond them is
  closed (a burst of associations does not leave its sessions open for ever).
- Lending replaces a hand-off to a worker thread: the borrowing thread does the work itself.
  Each session is a Django `DatabaseWrapper` marked for thread sharing; it is only ever used by
  the thread it is lent to. One that an earlier failure left unusable (a database restart) is
  closed on lending and reconnects on its first query; one given back inside a transaction
  (a thread that died half-way) is closed, which rolls the transaction back.
- `close()`: closes every session (lending afterwards is an error).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper


class DatabaseSessions:
    def __init__(self, size: int, keep_idle: int | None = None) -> None:
        self.size = size
        self.keep_idle = size if keep_idle is None else keep_idle
        self._ready = threading.Condition()
        self._sessions: list[BaseDatabaseWrapper] = []
        self._free: list[BaseDatabaseWrapper] = []  # a stack: the session freed last is lent first
        self._closed = False

    @contextmanager
    def lend(
        self, prefer: BaseDatabaseWrapper | None = None, *, wait: bool = True
    ) -> Iterator[BaseDatabaseWrapper]:
        """A session as this thread's default database connection for the block (see the module
        docstring); waits while all `size` are lent, or with `wait=False` lends none then: the
        block runs on the thread's own connection (which the caller closes)."""
        own = connections[DEFAULT_DB_ALIAS]
        session = self._take(prefer, wait)
        if session is None:
            yield own
            return
        connections[DEFAULT_DB_ALIAS] = session
        try:
            session.close_if_unusable_or_obsolete()
            yield session
        finally:
            connections[DEFAULT_DB_ALIAS] = own
            self._give_back(session)

    def _give_back(self, session: BaseDatabaseWrapper) -> None:
        with self._ready:
            in_transaction = session.connection is not None and (
                session.in_atomic_block or not session.autocommit
            )
            keep = not self._closed and not in_transaction and len(self._free) < self.keep_idle
            if keep:
                self._free.append(session)
            elif session in self._sessions:
                self._sessions.remove(session)
            self._ready.notify()
        if not keep:
            session.close()

    def _take(self, prefer: BaseDatabaseWrapper | None, wait: bool) -> BaseDatabaseWrapper | None:
        with self._ready:
            while True:
                if self._closed:
                    raise RuntimeError("these database sessions are closed")
                if prefer is not None and prefer in self._free:
                    self._free.remove(prefer)
                    return prefer
                if self._free:
                    return self._free.pop()
                if len(self._sessions) < self.size:
                    session = connections.create_connection(DEFAULT_DB_ALIAS)
                    session.inc_thread_sharing()
                    self._sessions.append(session)
                    return session
                if not wait:
                    return None
                self._ready.wait()

    @property
    def opened(self) -> int:
        """How many sessions exist (lent or free)."""
        with self._ready:
            return len(self._sessions)

    def close(self) -> None:
        """Close every session; lent ones too (call once no thread uses them)."""
        with self._ready:
            self._closed = True
            sessions, self._sessions, self._free = self._sessions, [], []
            self._ready.notify_all()
        for session in sessions:
            session.close()
