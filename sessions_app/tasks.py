"""django-q2 task functions: thin wrappers around the services, queued by dotted name
(sessions_app.enqueue). The top of sessions_app's import tree: nothing imports this module."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from sessions_app import catalog, health, notifying, pipeline, queueing, receiving, retrying, shutdown
from sessions_app.models import SyncSession


def scan(session_id: int) -> str:
    stats = pipeline.scan_session(session_id)
    return f"scanned {stats.files} files: {stats.pending} to upload, {stats.skipped} skipped"


def upload(session_id: int, destination: str | None = None) -> str:
    with shutdown.graceful():
        return pipeline.continue_uploads(session_id, settings.UPLOAD_TASK_SECONDS, destination)


def sweep() -> str:
    found = (pipeline.sweep() + queueing.sweep() + receiving.expire() + health.enqueue_due_checks()
             + catalog.tally_changed())
    return "; ".join(found) or "nothing to do"


def recover(started: datetime) -> str:
    """Queued once when a cluster starts (signals.recover_at_cluster_start)."""
    return "; ".join(pipeline.recover_at_start(started)) or "nothing to recover"


def check_health(project_id: int) -> str:
    return health.check_project(project_id)


def retry_round(session_id: int, round_number: int) -> str:
    """Run by the one-off Schedule an automatic retry round leaves for the next one."""
    return retrying.run_scheduled_round(session_id, round_number)


def notify(session_id: int, trigger: str, url: str = "") -> str:
    session = SyncSession.objects.select_related("project").get(pk=session_id)
    try:
        row = notifying.deliver(session, url or None, trigger)
    except notifying.NotifyError as exc:
        return f"session {session_id}: not notified: {exc}"
    return notifying.outcome_text(row)
