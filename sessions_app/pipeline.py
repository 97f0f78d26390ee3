"""A session's run: scan + plan (its kind fills the rows), hand out upload tasks, resume after a
crash, and run a whole session in this process (`--sync`). Tasks in tasks.py are thin wrappers."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from projects.models import Project
from projects.sources.local import LocalSource
from projects.walking import Problem
from sessions_app import enqueue, files, following, kinds, leases, lifecycle, logcontext, pacing, planning, uploading
from sessions_app.errors import ResumeError, StartError
from sessions_app.models import ACTIVE_STATUSES, SessionStatus, SyncSession
from sessions_app.planning import ScanStats

log = logging.getLogger(__name__)


@logcontext.about_session
def scan_session(session_id: int, *, start_uploads: bool = True, send: bool = False) -> ScanStats:
    """Fill the session's rows in batches; start upload tasks after the first batch. `send`: the
    scan sends the files it can itself (--sync, see sending.py)."""
    session = SyncSession.objects.select_related("project").get(pk=session_id)
    if session.status == SessionStatus.QUEUED:
        session.mark_scanning()
    elif session.status != SessionStatus.SCANNING:
        return ScanStats()  # a redelivered task for a session that moved on
    with leases.Lease(session.pk):
        return _scan(session, start_uploads, send)


def _scan(session: SyncSession, start_uploads: bool, send: bool) -> ScanStats:
    kind = kinds.of(session)
    try:
        dest = kind.preflight(session.project, session.params)
    except StartError as exc:
        lifecycle.fail(session, str(exc))
        return ScanStats()
    try:
        stats = kind.plan(session, dest, start_uploads, send)
    except Exception as exc:
        log.exception("scan of session %s failed", session.pk)
        lifecycle.fail(session, f"scan failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        dest.close()
    if planning.cancelled(session):
        lifecycle.end_if_settled(session)  # the rows of the last batch came in after the cancel
        return stats
    if not stats.counted:
        files.recount(session)  # a re-run scan: the rows of the crashed one are counted again
    session.mark_scan_finished()
    if not lifecycle.end_if_settled(session) and start_uploads and not stats.pending:
        enqueue.uploads(session.pk, session.project.upload_tasks)  # resumed: rows inserted before the crash
    return stats


def continue_uploads(session_id: int, deadline_seconds: float | None, destination: str | None = None) -> str:
    """One upload task's work; it queues its own successor when it ran out of time. A task for no
    destination in particular, of a session with several, hands one task to each instead: every
    destination drains on its own (one failing or slow does not hold up the others)."""
    names = files.destination_names(session_id)
    if destination is None and len(names) > 1:
        for name in names:
            enqueue.uploads(session_id, 1, name)
        return f"handed to {len(names)} destinations"
    outcome = uploading.drain(session_id, deadline_seconds, destination)
    if outcome == "handover":
        enqueue.uploads(session_id, 1, destination)
    return outcome


def run_here(session: SyncSession) -> list[threading.Thread]:
    """--sync: the scan in one thread, uploads in another, while the caller follows (and then
    joins them: the one that ends the session runs its follow-ups, e.g. the notification)."""
    session.mark_scanning()
    scan = following.run_in_thread(functools.partial(scan_session, session.pk, start_uploads=False, send=True))
    # One drain per destination suffices: it waits for rows while the scan runs; the last one to
    # finish ends the session (start() opened the destinations' counters).
    names = files.destination_names(session) or [None]
    return [scan, *(following.run_in_thread(uploading.drain, session.pk, None, name) for name in names)]


# -- crash recovery ---------------------------------------------------------------------------


def resume(session: SyncSession, force: bool = False) -> str:
    """Pick up a session whose workers vanished: rows cut off mid-upload are checked at the
    destination before any re-upload; the scan restarts if it had not finished."""
    if not session.is_active:
        raise ResumeError(f"session {session.pk} is {session.status}, not running; retry its failed files instead")
    if not force and not lifecycle.is_stale(session) and not pacing.is_paused(session):
        age = session.heartbeat_age().total_seconds()
        raise ResumeError(
            f"session {session.pk} is alive (last heartbeat {age:.0f}s ago); use --force if its workers are gone"
        )
    if not session.take_over():
        raise ResumeError(f"session {session.pk} was resumed by another worker just now")
    keys = files.recover(session)
    reset = len(keys)
    _remove_unfinished(session, keys)
    if pacing.clear_pause(session):
        session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} pause lifted")
    if session.status in (SessionStatus.QUEUED, SessionStatus.SCANNING):
        enqueue.scan(session.pk)
        what = "scan restarted"
    else:
        enqueue.uploads(session.pk, session.project.upload_tasks)
        what = "uploads restarted"
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} resumed: {what}, {reset} interrupted uploads to verify")
    return f"session {session.pk}: {what}; {reset} interrupted uploads will be verified"


def resumable() -> list[SyncSession]:
    """Running sessions of the kinds whose workers can vanish unnoticed."""
    return list(SyncSession.objects.filter(status__in=ACTIVE_STATUSES, kind__in=kinds.that_can_go_stale()))


def _remove_unfinished(session: SyncSession, keys: list[tuple[str, str]]) -> None:
    """Temporary files the vanished workers left at each destination for these (destination, key) go."""
    by_name: dict[str, list[str]] = {}
    for name, key in keys:
        by_name.setdefault(name, []).append(key)
    named = bool(files.destination_names(session))  # else the rows are all of the first destination
    removed = 0
    for name, named_keys in by_name.items():
        try:
            dest = session.project.destination_named(name) if named else session.project.destination()
            with dest:
                removed += dest.remove_unfinished(named_keys)
        except Exception as exc:  # the destination away: the files stay, the resume goes on
            log.warning("session %s: temporary files of interrupted uploads not removed: %s", session.pk, exc)
    if removed:
        session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} removed {removed} temporary files of "
                           f"interrupted uploads")


def _take_back_expired(session: SyncSession) -> str | None:
    """A live session whose other task vanished: the rows that task claimed go back to pending and
    one more upload task takes them."""
    keys = files.recover(session, lifecycle.lease_cutoff())
    if not keys:
        return None
    _remove_unfinished(session, keys)
    enqueue.uploads(session.pk, 1)
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} {len(keys)} interrupted uploads of a vanished worker "
                       f"taken back, to verify")
    return f"session {session.pk}: {len(keys)} uploads of a vanished worker taken back"


def sweep() -> list[str]:
    """Resume every stale session; take back the claims of vanished tasks of live ones; end
    uploading sessions with nothing left open."""
    done = []
    for session in resumable():
        if session.status == SessionStatus.UPLOADING and lifecycle.end_if_settled(session):
            done.append(f"session {session.pk}: finished")
        elif lifecycle.is_stale(session) and not pacing.is_paused(session):  # a pause waits for `resume`
            try:
                done.append(resume(session, force=True))
            except ResumeError:  # another sweep won it
                continue
        elif line := _take_back_expired(session):
            done.append(line)
    for line in done:
        log.info("sweep: %s", line)
    return done


def recover_at_start(started: datetime) -> list[str]:
    """Queued once a cluster starts: what a killed cluster left is resumed as soon as its leases
    run out (at most LEASE_SECONDS), not at the sweep schedule's next round. One sweep per call;
    while sessions are undecided it queues itself again a second later, so the worker is free for
    the queued work in between (a one-worker cluster would otherwise idle for a whole lease)."""
    done = sweep()
    deadline = started + timedelta(seconds=settings.LEASE_SECONDS + 2 * leases.renew_every())
    if _undecided(started) and timezone.now() < deadline:
        time.sleep(RECOVER_EVERY_SECONDS)
        enqueue.recover(started)
    return done


RECOVER_EVERY_SECONDS = 1.0


def _undecided(started: datetime) -> bool:
    """Running sessions no worker has renewed a lease of since `started`: their workers may be alive
    elsewhere, or may have died with the last cluster."""
    return SyncSession.objects.filter(
        status__in=(SessionStatus.SCANNING, SessionStatus.UPLOADING), kind__in=kinds.that_can_go_stale(),
        heartbeat_at__lt=started).exists()


def preview(project: Project, on_problem: Problem | None = None, *,
            check_destination: bool = False) -> Iterator[planning.Decision]:
    """--dry-run: what a sync session of the (possibly unsaved) project would decide, file by
    file; changes nothing. Raises StartError like a start."""
    if project.pk is None:
        project.pk = Project.objects.filter(name=project.name).values_list("id", flat=True).first()
    with kinds.SYNC.preflight(project) as group:
        for name, dest in group:  # one destination after the other (a dry run may scan twice)
            source = LocalSource.of(project, dest.default_extensions)
            decisions = planning.preview(project, dest, lambda sort: source.entries(sort=sort, on_problem=on_problem),
                                         check=check_destination)
            for decision in decisions:
                yield dataclasses.replace(decision, destination=name) if len(group) > 1 else decision
