"""Cancel a session: no new claims, transfers in flight finish, what is left becomes `cancelled`.

The status change is what stops the workers: the scan checks it after each batch and upload tasks
before each claim (uploading.Drainer). Rows already claimed but not yet started are dropped by
their task; rows mid-transfer finish and are recorded as usual. The last task to see nothing in
flight settles the session (final counts, finished_at) and announces its end, once.
"""

from __future__ import annotations

from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from sessions_app import retrying
from sessions_app.models import FileStatus, SessionStatus, SyncSession


def cancel(session: SyncSession) -> str:
    """Cancel a running session, or stop the automatic rounds of an ended one. Returns what was
    done: "cancelled", "stopped automatic retries" or "" (nothing to cancel)."""
    session.refresh_from_db()
    if not session.is_active:
        return "stopped automatic retries" if retrying.stop_automatic(session) else ""
    workers_gone = session.is_stale()
    if not session.mark_cancelled():
        return ""
    retrying.drop_scheduled_rounds(session)
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} cancelled")
    if workers_gone:  # nobody will finish the rows the dead workers claimed
        _cancel_rows(session, FileStatus.UPLOADING)
    settle(session)
    return "cancelled"


def settle(session: SyncSession) -> bool:
    """Cancel what is still pending; once nothing is in flight, recount and end the session.
    Safe to call from every task that notices the cancel; True for the one that ended it."""
    _cancel_rows(session, FileStatus.PENDING)
    if session.files.filter(status=FileStatus.UPLOADING).exists():
        return False  # a transfer is finishing; its task settles after it
    session.recount()
    won = SyncSession.objects.filter(
        pk=session.pk, status=SessionStatus.CANCELLED, finished_at__isnull=True
    ).update(finished_at=timezone.now()) == 1
    if won:
        from sessions_app.signals import session_finished

        session.refresh_from_db()
        session_finished.send(sender=SyncSession, session=session)
    return won


def _cancel_rows(session: SyncSession, status: str) -> int:
    n = session.files.filter(status=status).update(status=FileStatus.CANCELLED, claim_token=None)
    if n:  # incremental, like the upload tasks' own counter updates running alongside
        SyncSession.objects.filter(pk=session.pk).update(
            cancelled_count=F("cancelled_count") + n, pending_count=Greatest(F("pending_count") - n, 0)
        )
    return n
