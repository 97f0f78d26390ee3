"""The end of a session, decided in one place. `end_if_settled()` is the only function that
decides that a session has ended: a completed one once its rows are settled (if its kind ends by
itself), a cancelled one once nothing is in flight; `fail()` ends one that cannot go on. Each
sends `session_finished` exactly once, from the caller that won the move; its receivers
(followups.py) schedule retry rounds and notifications.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from sessions_app import files, kinds
from sessions_app.models import SessionStatus, SyncSession
from sessions_app.signals import session_finished

log = logging.getLogger(__name__)


def _announce(session: SyncSession) -> None:
    session.refresh_from_db()
    session_finished.send(sender=SyncSession, session=session)


def fail(session: SyncSession, error: str) -> bool:
    """A running session cannot go on (scan crashed, destination refused, broker unreachable)."""
    won = session.mark_failed(error)
    if won:
        _announce(session)
    return won


def end_if_settled(session: SyncSession) -> bool:
    """End the session if nothing is left to do: True for the one caller that ended it. Safe to
    call from every task that might be the last (scan, upload tasks, cancel, sweep)."""
    session.refresh_from_db()
    if session.status == SessionStatus.CANCELLED:
        return _settle_cancelled(session)
    if session.status != SessionStatus.UPLOADING or not kinds.of(session).ends_by_itself:
        return False
    if files.has_open(session):
        return False
    files.recount(session)
    # A folder the scan could not read holds files that were not synced.
    won = session.mark_completed(with_errors=bool(session.failed_count or session.unread_folders))
    if won:
        _announce(session)
    return won


def _settle_cancelled(session: SyncSession) -> bool:
    """Cancel what is still pending; once nothing is in flight, stamp the end."""
    files.cancel_rest(session)
    if files.in_flight(session):
        return False  # a transfer is finishing; its task settles after it
    files.recount(session)
    won = session.mark_cancel_settled()
    if won:
        _announce(session)
    return won


def is_stale(session: SyncSession) -> bool:
    """Active, of a kind that can go stale, and its workers are gone: a scan, or claimed rows,
    whose lease ran out (LEASE_SECONDS); or no sign of life for SESSION_STALE_SECONDS (tasks that
    were queued but never ran: the broker may be busy, or may have lost them)."""
    if not kinds.of(session).can_go_stale or not session.is_active:
        return False
    if session.heartbeat_lost():
        return True
    if session.heartbeat_age() <= timedelta(seconds=settings.LEASE_SECONDS):
        return False
    return session.status == SessionStatus.SCANNING or files.has_expired_claims(session, lease_cutoff())


def lease_cutoff() -> datetime:
    """A lease last renewed before this has run out."""
    return timezone.now() - timedelta(seconds=settings.LEASE_SECONDS)


def cancel(session: SyncSession) -> bool:
    """Stop a running session: no new claims; transfers in flight finish; the rest is cancelled
    (also rows claimed by workers that are gone). False if it was not running."""
    workers_gone = is_stale(session)
    if not session.mark_cancelled():
        return False
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} cancelled")
    if workers_gone:  # nobody will finish the rows the dead workers claimed
        files.cancel_rest(session, claimed_too=True)
    end_if_settled(session)
    return True

