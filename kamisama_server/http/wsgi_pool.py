"""A fixed pool of threads that run WSGI app calls.

Not ``concurrent.futures.ThreadPoolExecutor``: a job here is a plain callable
that reports back to the loop by itself (one ``call_soon_threadsafe``), so the
executor's Future, its condition variable and ``wrap_future``'s second
callback hop would be pure per-request overhead. Threads start on first use,
so a pool made before ``fork`` starts its threads in the worker.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from queue import SimpleQueue

log = logging.getLogger("kamisama.wsgi")

Job = Callable[[], None]

_pools: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


class ThreadPool:
    """``size`` daemon threads taking jobs from one queue, in order."""

    def __init__(self, size: int, name: str = "wsgi") -> None:
        if size < 1:
            raise ValueError(f"a thread pool needs at least one thread, got {size}")
        self.size = size
        self._name = name
        self._queue: SimpleQueue[Job | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        _pools.add(self)

    def submit(self, job: Job) -> None:
        """Run ``job`` in a pool thread; it must not raise (log and swallow inside)."""
        if not self._threads:
            self._start()
        self._queue.put(job)

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self.size):
                t = threading.Thread(target=self._run, name=f"{self._name}-{i + 1}", daemon=True)
                t.start()
                self._threads.append(t)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            try:
                job()
            except BaseException:  # a job should never raise; keep the thread alive anyway
                log.exception("unexpected error in a WSGI thread")
            # Not held while waiting for the next one: it holds its request's connection.
            job = None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Let queued jobs finish, then stop the threads (waits up to ``timeout`` each)."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout)

    def _forget_threads(self) -> None:
        # After fork only the forking thread exists in the child: the others are gone.
        self._threads = []
        self._queue = SimpleQueue()
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._forget_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
