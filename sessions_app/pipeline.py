"""A session's life: create, scan + plan (inserting pending rows), hand out upload tasks,
resume after a crash. Tasks in tasks.py are thin wrappers around these verbs."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from projects.config import check_source_dir
from projects.destinations import ConfigError, Destination, DestinationError
from projects.models import ConfigHistory, Project
from sessions_app import bulk, planning, scanning
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from sessions_app.planning import ScanStats

log = logging.getLogger(__name__)

MAX_LOGGED_PROBLEMS = 1000


class StartError(Exception):
    """A session cannot start: bad source folder, destination refused, ..."""


def preflight(project: Project) -> Destination:
    """Everything that can be checked before a session exists: source folder and destination."""
    try:
        check_source_dir(project.source_dir)
        dest = project.destination()
    except ConfigError as exc:
        raise StartError(str(exc)) from exc
    try:
        dest.check()
    except DestinationError as exc:
        dest.close()
        raise StartError(f"destination {project.destination_kind}: {exc.message}") from exc
    return dest


def create_session(project: Project, config: ConfigHistory | None = None, created_by: str = "",
                   params: dict | None = None) -> SyncSession:
    config = config or project.record_config(ConfigHistory.Source.ADMIN, created_by)
    return SyncSession.objects.create(project=project, config=config, created_by=created_by, params=params or {})


def scan_session(session_id: int, *, start_uploads: bool = True) -> ScanStats:
    """Scan the source, plan, insert rows in batches; start upload tasks after the first batch."""
    session = SyncSession.objects.select_related("project").get(pk=session_id)
    if session.status == SessionStatus.QUEUED:
        session.mark_scanning()
    elif session.status != SessionStatus.SCANNING:
        return ScanStats()  # a redelivered task for a session that moved on
    check, fill = _steps(session)
    try:
        dest = check()
    except StartError as exc:
        session.mark_failed(str(exc))
        return ScanStats()
    try:
        stats = fill(session, dest, start_uploads)
    except Exception as exc:
        log.exception("scan of session %s failed", session_id)
        session.mark_failed(f"scan failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        dest.close()
    if _cancelled(session):
        from sessions_app.cancelling import settle

        settle(session)  # the rows of the last batch came in after the cancel
        return stats
    session.recount()
    session.mark_scan_finished()
    if not session.files.filter(status__in=(FileStatus.PENDING, FileStatus.UPLOADING)).exists():
        session.finish()
    elif start_uploads and not stats.pending:
        _start_uploads(session)  # resumed scan: the rows were inserted before the crash
    return stats


def _steps(session: SyncSession) -> tuple[Callable[[], Destination], Callable[..., ScanStats]]:
    """How a session of its kind checks both ends and fills its rows: scanning the source folder,
    or, for an import, listing the Roboflow project's image ids."""
    if session.kind == SyncSession.Kind.IMPORT:
        from sessions_app import importing

        return functools.partial(importing.preflight, session.project, session.params), importing.list_into
    return functools.partial(preflight, session.project), _scan_into


def _scan_into(session: SyncSession, dest: Destination, start_uploads: bool) -> ScanStats:
    project = session.project
    problems = _ProblemLog(session)
    scan = functools.partial(
        scanning.scan,
        project.source_dir,
        scanning.ScanFilter(project.extensions or list(dest.default_extensions), project.exclude),
        method=settings.SCAN_METHOD,
        follow_symlinks=project.follow_symlinks,
        on_problem=problems.add,
        on_progress=lambda n: log.info("session %s: scanned %d files", session.pk, n),
        progress_every=settings.SCAN_PROGRESS_EVERY,
    )
    stats = planning.plan_session(session, dest, lambda sort: scan(sort=sort), batch_size=settings.SCAN_BATCH_SIZE,
                                  on_first_rows=functools.partial(_start_uploads, session) if start_uploads else None)
    problems.save()
    return stats


def insert_rows(session: SyncSession, batches: Iterable[list[FileUpload]], start_uploads: bool) -> ScanStats:
    """Insert planned rows batch by batch, counting them on the session; upload tasks start with
    the first pending rows. Stops early when the session is cancelled."""
    stats, uploads_started = ScanStats(), False
    for rows in batches:
        bulk.insert_ignoring_existing(FileUpload, rows)
        pending = [r for r in rows if r.status == FileStatus.PENDING]
        _count_batch(session, rows, pending)
        stats.files += len(rows)
        stats.pending += len(pending)
        stats.skipped += len(rows) - len(pending)
        if start_uploads and pending and not uploads_started:
            _start_uploads(session)
            uploads_started = True
        if _cancelled(session):
            break
    return stats


def _count_batch(session: SyncSession, rows: list[FileUpload], pending: list[FileUpload]) -> None:
    SyncSession.objects.filter(pk=session.pk).update(
        found_count=F("found_count") + len(rows),
        pending_count=F("pending_count") + len(pending),
        skipped_count=F("skipped_count") + len(rows) - len(pending),
        bytes_total=F("bytes_total") + sum(r.size for r in rows),
        heartbeat_at=timezone.now(),
    )


def _cancelled(session: SyncSession) -> bool:
    return SyncSession.objects.filter(pk=session.pk, status=SessionStatus.CANCELLED).exists()


class _ProblemLog:
    """Scan problems (broken links, unreadable folders): counted, the first ones kept."""

    def __init__(self, session: SyncSession):
        self.session = session
        self.lines: list[str] = []
        self.count = 0

    def add(self, path: str, message: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_LOGGED_PROBLEMS:
            self.lines.append(f"{path}: {message}")
        log.warning("session %s: %s: %s", self.session.pk, path, message)

    def save(self) -> None:
        if not self.count:
            return
        if self.count > len(self.lines):
            self.lines.append(f"... and {self.count - len(self.lines)} more scan problems")
        SyncSession.objects.filter(pk=self.session.pk).update(scan_problems=self.count)
        self.session.append_log("\n".join(self.lines))


def _start_uploads(session: SyncSession) -> None:
    from sessions_app import tasks

    tasks.enqueue_uploads(session.pk, session.project.upload_tasks)


def continue_uploads(session_id: int, deadline_seconds: float | None) -> str:
    """One upload task's work; it queues its own successor when it ran out of time."""
    from sessions_app import tasks, uploading

    outcome = uploading.drain(session_id, deadline_seconds)
    if outcome == "handover":
        tasks.enqueue_uploads(session_id, 1)
    return outcome


# -- crash recovery ---------------------------------------------------------------------------


class ResumeError(Exception):
    pass


def resume(session: SyncSession, force: bool = False) -> str:
    """Pick up a session whose workers vanished: rows cut off mid-upload are checked at the
    destination before any re-upload; the scan restarts if it had not finished."""
    if not session.is_active:
        raise ResumeError(f"session {session.pk} is {session.status}, not running; retry its failed files instead")
    if not force and not session.is_stale():
        age = (timezone.now() - (session.heartbeat_at or session.created_at)).total_seconds()
        raise ResumeError(
            f"session {session.pk} is alive (last heartbeat {age:.0f}s ago); use --force if its workers are gone"
        )
    reset = session.files.filter(status=FileStatus.UPLOADING).update(
        status=FileStatus.PENDING, claim_token=None, verify_remote=True
    )
    session.touch()
    from sessions_app import tasks

    if session.status in (SessionStatus.QUEUED, SessionStatus.SCANNING):
        tasks.enqueue_scan(session.pk)
        what = "scan restarted"
    else:
        tasks.enqueue_uploads(session.pk, session.project.upload_tasks)
        what = "uploads restarted"
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} resumed: {what}, {reset} interrupted uploads to verify")
    return f"session {session.pk}: {what}; {reset} interrupted uploads will be verified"


def sweep() -> list[str]:
    """Resume every stale session; end uploading sessions with nothing left open."""
    done = []
    for session in SyncSession.objects.filter(status__in=(SessionStatus.QUEUED, SessionStatus.SCANNING,
                                                          SessionStatus.UPLOADING)).exclude(kind="stream"):
        if session.status == SessionStatus.UPLOADING and session.finish():
            done.append(f"session {session.pk}: finished")
        elif session.is_stale():
            done.append(resume(session, force=True))
    for line in done:
        log.info("sweep: %s", line)
    return done
