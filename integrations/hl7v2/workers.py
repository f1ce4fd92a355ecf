"""The MLLP listener's worker threads: where each message's database work runs.

`WorkerPool(size, name)` is a thread pool like `concurrent.futures.ThreadPoolExecutor` (at most
`size` threads, made as needed, each keeping its own database connection), except in which thread
a job runs:

- `submit(fn, *args, prefer=worker)` runs the job on `prefer` (the worker that ran the connection's
  previous message) when that one is idle, else on the worker that became idle last, else on a
  new thread while there are fewer than `size`, else it waits in a FIFO backlog for the first
  worker to finish. The future's result is `(worker, fn's result)`.
- So one connection's messages keep to one thread and one database session, whose caches and
  prepared statements are warm. ThreadPoolExecutor hands each job to the thread that has waited
  longest: one connection's messages went to two threads in turn (and two PostgreSQL sessions),
  which made a single connection about a quarter slower.
- A worker counts as idle before its job's future is resolved, so the next message of the same
  connection, submitted as soon as the answer is out, finds it idle.
- `shutdown()`: jobs already submitted (the backlog too) are run, then the threads end.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future


class Worker:
    """One thread of a pool, with its own job queue."""

    def __init__(self, pool: WorkerPool, name: str) -> None:
        self.pool = pool
        self.name = name
        self._jobs: deque = deque()
        self._ready = threading.Condition(pool._lock)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        job = self._take()
        while job is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    following = self.pool._finished(self)
                    future.set_exception(exc)
                else:
                    following = self.pool._finished(self)
                    future.set_result((self, result))
            else:
                following = self.pool._finished(self)
            job = following if following is not None else self._take()

    def _take(self):
        """The next job given to this worker; None when the pool shuts down."""
        with self._ready:
            while not self._jobs:
                if self.pool._shutdown:
                    return None
                self._ready.wait()
            return self._jobs.popleft()

    def _give(self, job) -> None:  # with the pool's lock held
        self._jobs.append(job)
        self._ready.notify()


class WorkerPool:
    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._workers: list[Worker] = []
        self._idle: list[Worker] = []  # a stack: the worker idle last is taken first
        self._backlog: deque = deque()
        self._shutdown = False

    def submit(self, fn: Callable, *args, prefer: Worker | None = None) -> Future:
        """Run `fn(*args)` on a worker (see the module docstring); a future of (worker, result)."""
        future: Future = Future()
        job = (future, fn, args)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the worker pool is shut down")
            if prefer is not None and prefer in self._idle:
                self._idle.remove(prefer)
                worker = prefer
            elif self._idle:
                worker = self._idle.pop()
            elif len(self._workers) < self.size:
                worker = Worker(self, f"{self.name}_{len(self._workers)}")
                self._workers.append(worker)
                worker.thread.start()
            else:
                self._backlog.append(job)
                return future
            worker._give(job)
        return future

    def shutdown(self) -> None:
        """Run what was submitted, then end the threads (waits for them)."""
        with self._lock:
            self._shutdown = True
            for worker in self._workers:
                worker._ready.notify()
            workers = list(self._workers)
        for worker in workers:
            worker.thread.join()

    def _finished(self, worker: Worker):
        """A worker finished a job: the next job of the backlog for it, else it is idle (None)."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            if not self._shutdown:
                self._idle.append(worker)
            return None
