"""The MLLP listener's database sessions: a bounded set of Django connections, each lent to one
connection thread at a time for the database work of one message.

`DatabaseSessions(size)`: `with sessions.lend(prefer=previous) as session:` makes `session` the
calling thread's `django.db.connection` for the block, then takes it back.

- At most `size` sessions (`BTT_MLLP_WORKERS`) are ever opened, whatever the number of MLLP
  connections. A thread gets the session it names in `prefer` (the one its connection used for
  its previous message) when that is free, else the one freed last, else a new one while there
  are fewer than `size`, else it waits until one is given back. So a busy connection keeps to one
  PostgreSQL session, whose caches and prepared statements are warm (a connection whose messages
  went to two sessions in turn was about a quarter slower).
- Lending replaces a hand-off to a worker thread: the connection's own thread does the work, so
  no thread waits to be woken between the socket and the database. Each session is a Django
  `DatabaseWrapper` marked for thread sharing; it is only ever used by the thread it is lent to.
  One that an earlier failure left unusable (a database restart) is closed on lending and
  reconnects on its first query.
- `close()`: closes every session (for a listener that stopped; lending afterwards is an error).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper


class DatabaseSessions:
    def __init__(self, size: int) -> None:
        self.size = size
        self._ready = threading.Condition()
        self._sessions: list[BaseDatabaseWrapper] = []
        self._free: list[BaseDatabaseWrapper] = []  # a stack: the session freed last is lent first
        self._closed = False

    @contextmanager
    def lend(self, prefer: BaseDatabaseWrapper | None = None) -> Iterator[BaseDatabaseWrapper]:
        """A session as this thread's default database connection for the block (see the module
        docstring); waits while all `size` are lent."""
        session = self._take(prefer)
        own = connections[DEFAULT_DB_ALIAS]
        connections[DEFAULT_DB_ALIAS] = session
        try:
            session.close_if_unusable_or_obsolete()
            yield session
        finally:
            connections[DEFAULT_DB_ALIAS] = own
            with self._ready:
                self._free.append(session)
                self._ready.notify()

    def _take(self, prefer: BaseDatabaseWrapper | None) -> BaseDatabaseWrapper:
        with self._ready:
            while True:
                if self._closed:
                    raise RuntimeError("the listener's database sessions are closed")
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
