"""The listener's worker pool (integrations/hl7v2/workers.py): a connection's messages keep to one
thread while it is free, no job waits while a thread is idle or may still be made, jobs beyond
the pool's size wait in order, errors reach the caller, and shutting down runs what was queued."""

from __future__ import annotations

import threading
import time

import pytest

from integrations.hl7v2.workers import WorkerPool


def _name() -> str:
    return threading.current_thread().name


def test_one_connections_jobs_keep_to_its_worker() -> None:
    pool = WorkerPool(4, "t")
    try:
        worker = None
        names = []
        for _ in range(50):
            worker, name = pool.submit(_name, prefer=worker).result(5)
            names.append(name)
        assert set(names) == {"t_0"}
        # A second connection, while the first is idle, takes the idle worker too: no new thread.
        assert pool.submit(_name).result(5)[1] == "t_0"
    finally:
        pool.shutdown()


def test_a_busy_preferred_worker_is_not_waited_for() -> None:
    pool = WorkerPool(2, "t")
    release = threading.Event()
    try:
        first, _ = pool.submit(_name).result(5)
        blocked = pool.submit(release.wait, 5, prefer=first)  # the preferred worker is now busy
        other, name = pool.submit(_name, prefer=first).result(5)
        assert other is not first
        assert name == "t_1"
        release.set()
        assert blocked.result(5)[0] is first
    finally:
        release.set()
        pool.shutdown()


def test_jobs_beyond_the_size_wait_in_order_and_errors_reach_the_caller() -> None:
    pool = WorkerPool(1, "t")
    release = threading.Event()
    order: list[int] = []
    try:
        busy = pool.submit(release.wait, 5)
        queued = [pool.submit(order.append, n) for n in range(5)]
        failing = pool.submit(int, "not a number")
        time.sleep(0.05)
        assert order == []
        assert not failing.done()
        release.set()
        busy.result(5)
        for future in queued:
            future.result(5)
        assert order == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError, match="not a number"):
            failing.result(5)
        assert pool.submit(_name).result(5)[1] == "t_0"  # the worker goes on after an error
    finally:
        release.set()
        pool.shutdown()


def test_shutdown_runs_what_was_submitted_then_refuses_more() -> None:
    pool = WorkerPool(1, "t")
    release = threading.Event()
    done: list[int] = []
    pool.submit(release.wait, 5)
    queued = [pool.submit(done.append, n) for n in range(3)]
    threading.Timer(0.05, release.set).start()

    pool.shutdown()

    assert done == [0, 1, 2]
    assert all(f.done() for f in queued)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(_name)
