"""A thread that writes to the database on a connection of its own, one batch at a time, while the
caller goes on (the upload loop claims, the plan sends the next part)."""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from django.db import connection


def _close_connection() -> None:
    connection.close()  # looked up in the calling thread: its own connection


class Recorder:
    """Writes in a thread of its own, on a database connection of its own, one batch at a time: the
    upload loop claims the next rows while a batch of outcomes is written. When one thread took
    turns at both, the transfers waited for a third of the time (py-spy, 50,000 files)."""

    def __init__(self, name: str, depth: int = 1):
        # Inside a caller's transaction (a test's), another connection would not see the rows it
        # wrote: then the writes stay in this thread.
        self._pool = None if connection.in_atomic_block else ThreadPoolExecutor(1, thread_name_prefix=name)
        self._queued: deque[Future] = deque()
        self._depth = depth

    def submit(self, write: Callable[..., None], *args: object) -> None:
        """Queue a write, after the ones before it: at most `depth` batches wait, and the error
        of a write comes out of a later submit (or wait)."""
        while len(self._queued) >= self._depth:
            self._queued.popleft().result()
        if self._pool is None:
            write(*args)
            return
        self._queued.append(self._pool.submit(contextvars.copy_context().run, write, *args))

    def wait(self) -> None:
        """Until every write queued is done (the first error raised)."""
        while self._queued:
            self._queued.popleft().result()

    def close(self) -> None:
        """Wait for the last write (its error raised), then end the thread and its connection."""
        self.__exit__(None)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self._pool is None:
            return
        try:
            if exc_type is None:  # else the queued write still runs (shutdown), its error not over the task's
                self.wait()
        finally:
            self._pool.submit(_close_connection).result()
            self._pool.shutdown()
