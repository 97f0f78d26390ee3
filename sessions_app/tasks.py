"""django-q2 task functions (thin) and the helpers that enqueue them.

The database is the truth, not the broker: every task is safe to run twice, and a session
whose tasks were lost is resumed from its rows (pipeline.resume / the sweep schedule).
"""

from __future__ import annotations

from django.conf import settings
from django_q.tasks import async_task


class EnqueueError(Exception):
    """The broker refused or could not be reached."""


def _enqueue(func: str, *args, name: str) -> str:
    try:
        return async_task(func, *args, task_name=name, group=name.split(":")[0])
    except Exception as exc:  # redis down, database locked, ...
        raise EnqueueError(f"cannot queue {name}: {type(exc).__name__}: {exc}") from exc


def enqueue_scan(session_id: int) -> str:
    return _enqueue("sessions_app.tasks.scan", session_id, name=f"session-{session_id}:scan")


def enqueue_uploads(session_id: int, count: int) -> list[str]:
    return [
        _enqueue("sessions_app.tasks.upload", session_id, name=f"session-{session_id}:upload")
        for _ in range(max(1, count))
    ]


def enqueue_health_check(project_id: int) -> str:
    return _enqueue("sessions_app.tasks.check_health", project_id, name=f"project-{project_id}:health")


def enqueue_notify(session_id: int, trigger: str, url: str = "") -> str:
    return _enqueue("sessions_app.tasks.notify", session_id, trigger, url, name=f"session-{session_id}:notify")


# -- the tasks ----------------------------------------------------------------------------------


def scan(session_id: int) -> str:
    from sessions_app.pipeline import scan_session

    stats = scan_session(session_id)
    return f"scanned {stats.files} files: {stats.pending} to upload, {stats.skipped} skipped"


def upload(session_id: int) -> str:
    from sessions_app import shutdown
    from sessions_app.pipeline import continue_uploads

    with shutdown.graceful():
        return continue_uploads(session_id, settings.UPLOAD_TASK_SECONDS)


def sweep() -> str:
    from sessions_app import health, queueing
    from sessions_app.pipeline import sweep as run_sweep

    return "; ".join(run_sweep() + queueing.sweep() + health.enqueue_due_checks()) or "nothing to do"


def check_health(project_id: int) -> str:
    from sessions_app import health

    return health.check_project(project_id)


def retry_round(session_id: int, round_number: int) -> str:
    """Run by the one-off Schedule an automatic retry round leaves for the next one."""
    from sessions_app.retrying import run_scheduled_round

    return run_scheduled_round(session_id, round_number)


def notify(session_id: int, trigger: str, url: str = "") -> str:
    from sessions_app import notifying
    from sessions_app.models import SyncSession

    session = SyncSession.objects.select_related("project").get(pk=session_id)
    try:
        row = notifying.deliver(session, url or None, trigger)
    except notifying.NotifyError as exc:
        return f"session {session_id}: not notified: {exc}"
    return notifying.outcome_text(row)
