"""Cancel a session: no new claims, transfers in flight finish, what is left becomes `cancelled`.

The status change is what stops the workers: the scan checks it after each batch and upload tasks
before each claim (uploading.Drainer). Rows already claimed but not yet started are dropped by
their task; rows mid-transfer finish and are recorded as usual. The last task to see nothing in
flight settles the session (lifecycle.end_if_settled), which announces its end, once.
"""

from __future__ import annotations

from sessions_app import lifecycle, retrying
from sessions_app.models import SyncSession


def cancel(session: SyncSession) -> str:
    """Cancel a running session, or stop the automatic rounds of an ended one. Returns what was
    done: "cancelled", "stopped automatic retries" or "" (nothing to cancel)."""
    session.refresh_from_db()
    if not session.is_active:
        return "stopped automatic retries" if retrying.stop_automatic(session) else ""
    if not lifecycle.cancel(session):
        return ""
    retrying.drop_scheduled_rounds(session)
    return "cancelled"
