"""Stopping a qcluster without cutting uploads off: transfers in flight finish, claimed rows
not yet started go back to pending, and a successor task waits in the broker for the restart.

A cluster is told to stop in one of two ways, and django-q2 tells its workers nothing:
- SIGTERM to the main process only (`kill <pid>`, `docker stop` of a qcluster running as PID 1):
  the cluster stops fetching tasks and waits, for as long as it takes, for each worker's current
  task. The cluster's status in the cache turns "Stopping"; an upload task reads it.
- SIGTERM to the whole process group (systemd's default KillMode, `kill -TERM -<pgid>`): each
  worker gets the signal itself, and django-q2 leaves its default action (die at once) in place.
  An upload task catches it for its duration (`graceful()`), winds down, then lets it act.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from django_q.conf import Conf
from django_q.status import Stat

log = logging.getLogger(__name__)

# Seconds between two looks at the cluster's status: a cache read each.
STATUS_CHECK_SECONDS = 0.5

_signalled = threading.Event()
_in_task = threading.Event()
_last_look = 0.0
_stopping = False
_cluster_id: str | None = None


@contextmanager
def graceful() -> Iterator[None]:
    """Around one task: a SIGTERM only asks it to wind down; it takes effect when the task ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _in_task.set()
    try:
        yield
    finally:
        _in_task.clear()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if _signalled.is_set():
            _signalled.clear()
            log.info("upload task wound down after SIGTERM; exiting")
            os.kill(os.getpid(), signal.SIGTERM)


def requested() -> bool:
    """Should upload tasks stop claiming? True once this process got SIGTERM or its cluster is stopping."""
    return _signalled.is_set() or (_in_task.is_set() and _cluster_stopping())


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _signalled.set()


def _cluster_stopping() -> bool:
    global _last_look, _stopping
    now = time.monotonic()
    if now - _last_look >= STATUS_CHECK_SECONDS:
        _last_look = now
        _stopping = _parent_cluster_status() == str(Conf.STOPPING)
    return _stopping


def _parent_cluster_status() -> str:
    """The status of the cluster whose sentinel forked this worker; "" outside a cluster."""
    global _cluster_id
    try:
        if _cluster_id is None:  # found once per worker; later looks read one cache key
            parent = os.getppid()
            _cluster_id = next((s.cluster_id for s in Stat.get_all() if s.sentinel == parent), None)
            if _cluster_id is None:
                return ""
        return str(Stat.get(pid=0, cluster_id=_cluster_id).status)
    except Exception:  # the cache is unreachable: keep working, as without this check
        log.warning("cannot read the cluster status", exc_info=True)
        return ""
