"""Python work done while this thread's database round trip is in flight.

A message on one MLLP connection is a chain: parse, look the patient up (a round trip), build the
write, send it (a round trip), answer. With psycopg2's wait callback installed (`install()`, in
the MLLP listener's process) every query is sent asynchronously and psycopg2 calls back to wait
for its result; `meanwhile(work)` hands `work` to the next such wait of this thread, so the
Python builds the likely write on one core while PostgreSQL runs the look-up on the other.

    with overlap.meanwhile(lambda: prepare(...)) as prepared:
        found = look_up(...)            # work runs while this query is in flight
    value = prepared.result()           # (runs it now if no query waited; raises what it raised)

`work` must not use the database: the connection is busy with the query. It goes to the first
wait, so the block's first query should be the slow one (with the driver in autocommit, as the
listener applies messages: in a transaction the driver opens itself, its BEGIN comes first).
Without the callback (tests, other processes) the work runs when its result is asked for, or
never when it is not.

Measured in-process (PostgreSQL on the same 2-core machine): the Python between the look-up and
the write of a new patient's ADT went from ~0.8 to ~0.2 ms per message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import psycopg2.extensions
import psycopg2.extras

T = TypeVar("T")

_pending = threading.local()


class Deferred(Generic[T]):
    """Work to run once, during a wait or when its result is asked for."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._work: Callable[[], T] | None = work
        self._value: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        work, self._work = self._work, None
        if work is None:
            return
        try:
            self._value = work()
        except Exception as exc:  # raised again by `result()`, in the caller's context
            self._error = exc

    def result(self) -> T:
        self.run()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def install() -> None:
    """Make psycopg2 wait for every query of this process through `_wait` (process-wide)."""
    psycopg2.extensions.set_wait_callback(_wait)


def _wait(conn) -> None:
    deferred = getattr(_pending, "deferred", None)
    if deferred is not None:
        _pending.deferred = None
        deferred.run()
    psycopg2.extras.wait_select(conn)


@contextmanager
def meanwhile(work: Callable[[], T]) -> Iterator[Deferred[T]]:
    """`work` offered to this thread's next wait for a query within the block (module docstring)."""
    deferred = Deferred(work)
    _pending.deferred = deferred
    try:
        yield deferred
    finally:
        if getattr(_pending, "deferred", None) is deferred:
            _pending.deferred = None
