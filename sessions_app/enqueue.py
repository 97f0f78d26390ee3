"""Handing work to the django-q2 cluster. A leaf: tasks are named by dotted path, so nothing here
imports the modules that do the work (sessions_app.tasks is the top of the import tree).

The database is the truth, not the broker: every task is safe to run twice, and a session
whose tasks were lost is resumed from its rows (pipeline.resume / the sweep schedule).
"""

from __future__ import annotations

from datetime import datetime

from django_q.tasks import async_task

from sessions_app.errors import EnqueueError

TASKS = "sessions_app.tasks"
ROUND_TASK = f"{TASKS}.retry_round"
SWEEP_TASK = f"{TASKS}.sweep"


def _enqueue(func: str, *args, name: str) -> str:
    try:
        return async_task(f"{TASKS}.{func}", *args, task_name=name, group=name.split(":")[0])
    except Exception as exc:  # redis down, database locked, ...
        raise EnqueueError(f"cannot queue {name}: {type(exc).__name__}: {exc}") from exc


def scan(session_id: int) -> str:
    return _enqueue("scan", session_id, name=f"session-{session_id}:scan")


def uploads(session_id: int, count: int, destination: str | None = None) -> list[str]:
    """`count` upload tasks; without a destination, each one hands a task to every destination of
    the session (pipeline.continue_uploads)."""
    args = (session_id, destination) if destination else (session_id,)
    name = f"session-{session_id}:upload" + (f":{destination}" if destination else "")
    return [_enqueue("upload", *args, name=name) for _ in range(max(1, count))]


def recover(started: datetime) -> str:
    return _enqueue("recover", started, name="cluster:recover")


def health_check(project_id: int) -> str:
    return _enqueue("check_health", project_id, name=f"project-{project_id}:health")


def notify(session_id: int, trigger: str, url: str = "") -> str:
    return _enqueue("notify", session_id, trigger, url, name=f"session-{session_id}:notify")
