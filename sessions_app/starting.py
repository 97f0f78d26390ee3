"""Starting a session: the one service behind the upload and master commands, the admin's Start
sync and Import from Roboflow, import_roboflow and the upload queue.

1. Its kind checks both ends (source, destination) before anything is written: StartError.
2. The effective config is recorded (ConfigHistory) and the session created, with any extra
   fields (e.g. auto_retry) set before a worker can see it.
3. Its scan is queued. If the broker refuses, the session is marked failed with the reason, so
   nothing is left `queued` forever, and the caller gets a StartError saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import F

from projects.models import ConfigHistory, Project
from sessions_app import enqueue, kinds, lifecycle
from sessions_app.errors import EnqueueError, StartError
from sessions_app.models import SessionStatus, SyncSession

log = logging.getLogger(__name__)


def create_session(project: Project, config: ConfigHistory | None = None, created_by: str = "", *,
                   kind: kinds.Kind = kinds.SYNC, config_source: str = ConfigHistory.Source.ADMIN,
                   **fields: Any) -> SyncSession:
    """A queued session (no checks, nothing queued): the step start() takes after the checks."""
    config = config or project.record_config(config_source, created_by)
    return SyncSession.objects.create(project=project, config=config, kind=kind.name, created_by=created_by,
                                      **fields)


def start(project: Project, *, kind: kinds.Kind = kinds.SYNC, params: dict[str, Any] | None = None,
          config: ConfigHistory | None = None, config_source: str = ConfigHistory.Source.ADMIN,
          created_by: str = "", enqueue_scan: bool = True, **fields: Any) -> SyncSession:
    """Check, create and queue a session; raises StartError, leaving no session `queued`.
    enqueue_scan=False: the caller runs it here (pipeline.run_here)."""
    params = params or {}
    kind.preflight(project, params).close()
    session = create_session(project, config, created_by, kind=kind, config_source=config_source,
                             params=params, **fields)
    if enqueue_scan:
        try:
            enqueue.scan(session.pk)
        except EnqueueError as exc:
            lifecycle.fail(session, str(exc))
            raise StartError(f"session {session.pk} failed to start: {exc.message}") from exc
    log.info("session %s started: %s", session.pk, kinds.of(session).describe(session))
    return session


def start_receiving(project: Project, fill: Callable[[SyncSession], Any], *, created_by: str = "",
                    params: dict[str, Any] | None = None) -> SyncSession:
    """A browser upload: checked and created like any session, `fill`ed with its manifest's rows
    while it is still scanning (so no sweep can find it empty and end it), then open for bytes.
    Nothing is queued: each received file wakes a drainer."""
    kind = kinds.BROWSER
    kind.preflight(project, params or {}).close()
    session = create_session(project, None, created_by, kind=kind, config_source=ConfigHistory.Source.API,
                             params=params or {})
    session.mark_scanning()
    fill(session)
    session.mark_scan_finished()
    SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=None)  # no drainer yet
    session.refresh_from_db()
    lifecycle.end_if_settled(session)  # every file refused: nothing will come
    log.info("session %s started: %s", session.pk, kind.describe(session))
    return session


def stream_session(project: Project) -> SyncSession:
    """The project's open upload-queue session; created on first use, and anew after a cancel."""
    session = _open_stream(project)
    if session is not None:
        return session
    with transaction.atomic():
        # Lock the project row: producers starting at once create one session, not one each.
        Project.objects.filter(pk=project.pk).update(queue_limit=F("queue_limit"))
        session = _open_stream(project)
        if session is None:
            kinds.STREAM.preflight(project).close()
            session = create_session(project, None, "upload queue", kind=kinds.STREAM,
                                     config_source=ConfigHistory.Source.API)
            # Nothing to scan: it takes files at once, and lives on until cancelled.
            session.mark_scanning()
            session.mark_scan_finished()
            SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=None)  # no drainer yet
            session.refresh_from_db()
    return session


def _open_stream(project: Project) -> SyncSession | None:
    return kinds.STREAM.sessions().filter(project=project, status=SessionStatus.UPLOADING).order_by("id").first()
