"""Starting a session: the one service behind the upload and master commands, the admin's Start
sync and Import from Roboflow, import_roboflow and the upload queue.

1. Its kind checks both ends (source, destination) before anything is written: StartError. A
   config given by a command (`apply_config`) is checked as an unsaved project: the project's
   stored config and its ConfigHistory change only once the check passed (or with save_config).
2. The lease: one active session per project and destination, for the kinds that hold it
   (kinds.Kind.lease), enforced by a unique index over active sessions. A running holder refuses
   the start (LeaseHeld, naming it) or, with `wait_for_lock`, is waited for; a holder whose
   workers are gone (lifecycle.is_stale) is cancelled, as `cancel` would, and the lease taken.
3. In one transaction: the config applied and recorded (ConfigHistory), the session created
   with its lease and any extra fields (e.g. auto_retry) set before a worker can see it.
4. Its scan is queued. If the broker refuses, the session is marked failed with the reason, so
   nothing is left `queued` forever, and the caller gets a StartError saying so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from projects import config as config_mod
from projects.destinations import Destination
from projects.models import ConfigHistory, Project
from sessions_app import enqueue, kinds, lifecycle
from sessions_app.errors import EnqueueError, LeaseHeld, StartError
from sessions_app.models import ACTIVE_STATUSES, SessionStatus, SyncSession

log = logging.getLogger(__name__)


def create_session(project: Project, config: ConfigHistory | None = None, created_by: str = "", *,
                   kind: kinds.Kind = kinds.SYNC, config_source: str = ConfigHistory.Source.ADMIN,
                   **fields: Any) -> SyncSession:
    """A queued session (no checks, no lease unless given, nothing queued): the step start() takes
    after the checks."""
    config = config or project.record_config(config_source, created_by)
    return SyncSession.objects.create(project=project, config=config, kind=kind.name, created_by=created_by,
                                      **fields)


LEASE_POLL_SECONDS = 1.0
LEASE_TRIES = 5  # conflicts over the lease with no holder to show for them, before giving up

Applied = tuple[Project, ConfigHistory]


def start(project: Project, *, kind: kinds.Kind = kinds.SYNC, params: dict[str, Any] | None = None,
          config: ConfigHistory | None = None, config_source: str = ConfigHistory.Source.ADMIN,
          created_by: str = "", enqueue_scan: bool = True, wait_for_lock: bool = False,
          on_wait: Callable[[SyncSession], None] | None = None, **fields: Any) -> SyncSession:
    """Check, take the lease, create and queue a session; raises StartError (LeaseHeld when
    another session holds the lease), leaving no session `queued`. enqueue_scan=False: the caller
    runs it here (pipeline.run_here)."""
    params = params or {}
    with kind.preflight(project, params) as dest:
        session = _create_leased(kind, dest, project, lambda: (project, config), wait_for_lock, on_wait,
                                 created_by=created_by,
                                 config_source=config_source, params=params, **fields)
    return _queue_scan(session, enqueue_scan)


def start_from_config(clean: dict[str, Any], config_source: str, *, created_by: str, save_config: bool = False,
                      wait_for_lock: bool = False, on_wait: Callable[[SyncSession], None] | None = None,
                      params: dict[str, Any] | None = None, enqueue_scan: bool = True,
                      **fields: Any) -> SyncSession:
    """A sync session of the project a command's validated config describes. The config is applied
    (project updated, ConfigHistory row) only with the session, once the preflight passed and the
    lease was taken; a refused start changes nothing, unless save_config asks to keep it anyway."""
    params = params or {}

    def apply() -> Applied:
        return config_mod.apply(clean, config_source, created_by=created_by)

    candidate = config_mod.unsaved_project(clean)
    try:
        dest = kinds.SYNC.preflight(candidate, params)
    except StartError:
        if save_config:
            apply()
        raise
    with dest:
        session = _create_leased(kinds.SYNC, dest, candidate, apply, wait_for_lock, on_wait, created_by=created_by,
                                 config_source=config_source, params=params, **fields)
    return _queue_scan(session, enqueue_scan)


def _create_leased(kind: kinds.Kind, dest: Destination, candidate: Project,
                   prepare: Callable[[], tuple[Project, ConfigHistory | None]], wait: bool,
                   on_wait: Callable[[SyncSession], None] | None, **create: Any) -> SyncSession:
    """The session, created with the lease in the transaction that `prepare`s its project and
    config; a conflict rolls both back. A holder is looked for (by `candidate`, the project as
    stored) before any write, so a refused start takes no lock."""
    waited_for, conflicts = None, 0
    while conflicts < LEASE_TRIES:
        holder = _holder(kind, dest, candidate)
        if holder is not None:  # seen before any write: a refused start takes no lock
            waited_for = _refuse_or_wait(holder, dest, wait, on_wait, waited_for)
            continue
        try:
            with transaction.atomic():
                project, config = prepare()
                session = create_session(project, config, kind=kind, lease=kind.lease(project, dest), **create)
                kind.opened(session, dest)
                return session
        except IntegrityError:  # a start racing this one took the lease (or made the new project) first
            conflicts += 1
    raise StartError(f"project {candidate.name}: could not take the lease of {dest.identity()}")


def _active(lease: str | None):
    return SyncSession.objects.filter(lease=lease, status__in=ACTIVE_STATUSES).select_related("project")


def _holder(kind: kinds.Kind, dest: Destination, project: Project) -> SyncSession | None:
    """The session holding the lease the start would take, if any (a new project has none)."""
    project = _saved(project)
    lease = kind.lease(project, dest) if project.pk else None
    return _active(lease).first() if lease else None


def _refuse_or_wait(holder: SyncSession, dest: Destination, wait: bool,
                    on_wait: Callable[[SyncSession], None] | None, waited_for: int | None) -> int | None:
    """Take over a stale holder, else refuse (LeaseHeld) or wait a while; the holder waited for."""
    if lifecycle.is_stale(holder):
        _take_over(holder)
        return waited_for
    if not wait:
        raise LeaseHeld(holder, f"project {holder.project.name}: session {holder.pk} "
                                f"({kinds.of(holder).describe(holder)}, {holder.status} since "
                                f"{holder.created_at:%Y-%m-%d %H:%M:%S}) is running to {dest.identity()}; one session "
                                f"per project and destination: wait for it (--wait-for-lock) or cancel it")
    if on_wait and waited_for != holder.pk:
        on_wait(holder)
    time.sleep(LEASE_POLL_SECONDS)
    return holder.pk


def _saved(project: Project) -> Project:
    """The project as the database has it (its pk): a rolled-back prepare may have made it."""
    if project.pk and Project.objects.filter(pk=project.pk).exists():
        return project
    return Project.objects.filter(name=project.name).first() or project


def _take_over(holder: SyncSession) -> None:
    """A holder whose workers are gone would block the lease until the sweep resumes it (never,
    without a cluster): it is cancelled, its claimed rows too, and their objects checked by the
    next plan (catalog.in_doubt)."""
    age = holder.heartbeat_age().total_seconds()
    holder.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} no heartbeat for {age:.0f}s while another session "
                      f"asked for its lease: cancelled")
    log.warning("session %s: no heartbeat for %.0fs: cancelled, its lease taken over", holder.pk, age)
    lifecycle.cancel(holder)


def _queue_scan(session: SyncSession, enqueue_scan: bool) -> SyncSession:
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
