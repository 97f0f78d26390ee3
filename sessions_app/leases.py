"""A running task's lease on its session and on the rows it claimed, renewed from a thread of its
own every LEASE_SECONDS / 3, whatever the task is busy with (listing a large bucket, one huge
file). A lease not renewed for LEASE_SECONDS means the task is gone (kill -9, a lost machine):
the sweep (pipeline.sweep) takes its rows back, so recovery waits for the lease, not for a
session-wide timeout."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from django.conf import settings
from django.db import connection

from sessions_app import files

log = logging.getLogger(__name__)


def renew_every() -> float:
    return max(0.5, settings.LEASE_SECONDS / 3)


class Lease:
    """with Lease(session_id) as lease: ... lease.hold(ids) ... lease.drop(ids)"""

    def __init__(self, session_id: int):
        self.session_id = session_id
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{session_id}", daemon=True)

    def hold(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._held.update(ids)

    def drop(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._held.difference_update(ids)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # Bounded: a renewal waiting on a lock must not hold the task's end.
        self._thread.join(timeout=renew_every())

    def _run(self) -> None:
        try:
            while not self._stop.wait(renew_every()):
                with self._lock:
                    held = list(self._held)
                try:
                    files.renew(self.session_id, held)
                except Exception:  # the database away for a moment: the next renewal may get through
                    log.warning("session %s: lease not renewed", self.session_id, exc_info=True)
        finally:
            connection.close()
