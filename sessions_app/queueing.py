"""The upload queue: producers hand over files one at a time and return at once; the workers
upload them in order. A queued file is a pending row of the project's long-lived "stream"
session (started by starting.stream_session), so the queue survives crashes and restarts, and the
producer's call does no upload work.

1. `queue_upload()` checks the path (inside the source folder once symlinks are followed, a
   regular file) and admits the row (files.admit_one) under a lock on the session row, so the
   backlog limit holds exactly however many producers call at once.
2. It wakes a drainer (waking.wake) with a conditional update of the session's heartbeat: an
   upload task is queued only when no drainer has shown life for QUEUE_WAKE_SECONDS, so a busy
   queue costs a few tasks, never one per file.
3. A drainer that runs dry lingers a little (the stream kind's more_may_come), then clears the
   heartbeat and looks once more (waking.went_idle): a file queued while it was finishing is
   never left without a drainer.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat as stat_mod
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from projects.destinations import ConfigError, Destination
from projects.models import Project
from projects.sources.local import LocalSource
from projects.walking import identity_of, mtime_of
from sessions_app import catalog, files, kinds, starting, waking
from sessions_app.errors import Refused, StartError
from sessions_app.files import OPEN
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession

log = logging.getLogger(__name__)

MAX_PATH = 4096  # FileUpload.relative_path and remote_key
MAX_TAG = 200


@dataclass(frozen=True)
class Answer:
    """What became of one request: a bool for Python producers, an HTTP status for the API."""

    queued: bool
    status: int
    message: str
    file_id: int | None = None
    duplicate: bool = False


class _Closed(Exception):
    """The stream session was cancelled between finding it and queueing into it."""


def queue_upload(project: Project | str, path: str | os.PathLike, remote_subdir: str | None = None,
                 tag: str | None = None) -> bool:
    """Queue one file of the project's source folder for upload: True if it is (or already was)
    queued. Returns at once; never waits for an upload or for room in the queue, never raises."""
    try:
        if not isinstance(project, Project):
            project = Project.objects.get(name=project)
        return submit(project, os.fspath(path), remote_subdir, tag).queued
    except Project.DoesNotExist:
        log.warning("upload queue: no project named %r; %s not queued", project, path)
    except Exception:
        log.exception("upload queue: %s not queued", path)
    return False


def submit(project: Project, path: str, remote_subdir: str | None = None, tag: str | None = None) -> Answer:
    """queue_upload() with the whole answer; raises only on a database failure."""
    try:
        relative_path, st = resolve(project.source_dir, path)
        dest = _destination(project)
        _check_filters(project, dest, relative_path)
        key = remote_key(dest, relative_path, remote_subdir)
        answer, session = _admit_into_stream(project, relative_path, key, st, _clean_tag(tag))
    except Refused as exc:
        log.warning("upload queue of %s: %s not queued: %s", project.name, path, exc.message)
        return Answer(False, exc.status, exc.message)
    waking.wake(session)
    return answer


# -- what may be queued ---------------------------------------------------------------------------


def resolve(source_dir: str, path: str) -> tuple[str, os.stat_result]:
    """The file's path relative to the source folder once every symlink is followed, and its stat.
    Refused when it leads out of the folder (../, an absolute path, a symlink) or is no regular file."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise Refused(400, "path: expected a file name")
    root = os.path.realpath(source_dir)
    # Symlinks are followed before the check, so what is uploaded is what was checked.
    full = os.path.realpath(os.path.join(root, path))
    if full == root or os.path.commonpath([root, full]) != root:
        raise Refused(400, f"path is outside the project's source folder: {path}")
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise Refused(400, f"file not found: {path}") from None
    except OSError as exc:
        raise Refused(400, f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat_mod.S_ISREG(st.st_mode):
        raise Refused(400, f"not a regular file: {path}")
    relative_path = os.path.relpath(full, root).replace(os.sep, "/")
    if len(relative_path) > MAX_PATH:
        raise Refused(400, f"path longer than {MAX_PATH} characters: {path}")
    return relative_path, st


def _destination(project: Project) -> Destination:
    try:
        return project.destination()
    except ConfigError as exc:
        raise Refused(503, f"the project's destination is misconfigured: {exc}") from None


def _check_filters(project: Project, dest: Destination, relative_path: str) -> None:
    """The project's extensions and exclude patterns, as its scans apply them."""
    refusal = LocalSource.of(project, dest.default_extensions).filter.refusal(relative_path)
    if refusal:
        raise Refused(400, f"{refusal}: {relative_path}")


def remote_key(dest: Destination, relative_path: str, remote_subdir: str | None) -> str:
    """Where the file goes: its relative path, or its name under remote_subdir."""
    if remote_subdir is not None and not isinstance(remote_subdir, str):
        raise Refused(400, "remote_subdir: expected a folder name")
    if not remote_subdir:
        return dest.key_for(relative_path)
    parts = remote_subdir.split("/")
    if any(part in (".", "..") for part in parts):
        raise Refused(400, f"remote_subdir may not contain '.' or '..': {remote_subdir}")
    key = dest.key_for("/".join([*parts, posixpath.basename(relative_path)]))
    if len(key) > MAX_PATH:
        raise Refused(400, f"remote path longer than {MAX_PATH} characters")
    return key


def _clean_tag(tag: str | None) -> str:
    if tag is not None and not isinstance(tag, str):
        raise Refused(400, "tag: expected a string")
    if tag and len(tag) > MAX_TAG:
        raise Refused(400, f"tag: at most {MAX_TAG} characters")
    return tag or ""


# -- admitting a file -------------------------------------------------------------------------------


def _admit_into_stream(project: Project, relative_path: str, key: str, st: os.stat_result,
                       tag: str) -> tuple[Answer, SyncSession]:
    for _ in range(3):
        try:
            session = starting.stream_session(project)
        except StartError as exc:
            raise Refused(503, f"the upload queue cannot start: {exc.message}") from None
        try:
            return _admit(session, project, relative_path, key, st, tag), session
        except _Closed:
            continue
    raise Refused(503, "the upload queue was cancelled while queueing; try again")


def _admit(session: SyncSession, project: Project, relative_path: str, key: str, st: os.stat_result,
           tag: str) -> Answer:
    with transaction.atomic():
        # Lock the session row first: producers take turns from here on, so the limit holds exactly.
        if not files.lock(session, SessionStatus.UPLOADING):
            raise _Closed
        old = FileUpload.objects.filter(session=session, relative_path=relative_path).first()
        if old is not None and (answer := _duplicate(old, key, st)) is not None:
            return answer
        if _at_destination(project, key, st):
            return Answer(True, 200, "already uploaded", old.pk if old else None, duplicate=True)
        backlog = FileUpload.objects.filter(session=session, status__in=OPEN).count()
        if backlog >= project.queue_limit:
            raise Refused(429, f"upload queue is full ({backlog} files waiting, limit {project.queue_limit})")
        if old is not None:
            files.forget(old)  # the new request joins the end of the queue
        device, inode = identity_of(st)
        row = files.admit_one(session, relative_path=relative_path, remote_key=key, size=st.st_size,
                              mtime=mtime_of(st), device=device, inode=inode, tag=tag)
    return Answer(True, 202, "queued", row.pk)


def _duplicate(old: FileUpload, key: str, st: os.stat_result) -> Answer | None:
    """The answer when this file already has a row in the queue; None if a new row should replace it."""
    unchanged = old.size == st.st_size and old.mtime == mtime_of(st)
    if old.status in OPEN:
        if old.remote_key != key:
            raise Refused(409, f"already queued for {old.remote_key}")
        if old.status == FileStatus.UPLOADING and not unchanged:
            raise Refused(409, "changed while being uploaded; queue it again once that upload is done")
        return Answer(True, 202, "already queued", old.pk, duplicate=True)
    return None


def _at_destination(project: Project, key: str, st: os.stat_result) -> bool:
    """Uploaded already, by this queue or any session, and unchanged since: the catalog says so."""
    return catalog.vouches_for(project, project.destination().identity(), key, st.st_size, mtime_of(st))


# -- drainers ---------------------------------------------------------------------------------------


def sweep() -> list[str]:
    """For the sweep schedule: files a killed drainer left claimed go back in the queue (checked at
    the destination before any re-upload); queues with files waiting but no drainer get one."""
    done = []
    stale = timezone.now() - timedelta(seconds=settings.SESSION_STALE_SECONDS)
    for session in kinds.STREAM.sessions().filter(status=SessionStatus.UPLOADING):
        if session.heartbeat_at is None or session.heartbeat_at < stale:
            n = files.recover_stale(session, claimed_before=stale)
            if n:
                done.append(f"upload queue {session.pk}: {n} interrupted uploads back in the queue")
        if files.has_pending(session) and waking.wake(session):
            done.append(f"upload queue {session.pk}: drainer woken")
    return done


# -- figures ----------------------------------------------------------------------------------------


def project_stats(project: Project) -> dict[str, Any]:
    """The upload queue of one project in figures, from its stream sessions (all of them)."""
    streams = kinds.STREAM.sessions().filter(project=project)
    totals = streams.aggregate(queued=Sum("found_count"), uploaded=Sum("uploaded_count"), failed=Sum("failed_count"))
    ids = list(streams.values_list("id", flat=True))
    files = FileUpload.objects.filter(session_id__in=ids)
    return {
        "total_queued": totals["queued"] or 0,
        "total_uploaded": totals["uploaded"] or 0,
        "total_failed": totals["failed"] or 0,
        "queue_size": files.filter(status__in=OPEN).count(),
        "queue_limit": project.queue_limit,
        "last_success_at": _latest(_last_row(sid, FileStatus.UPLOADED, "uploaded_at") for sid in ids),
        "last_error": _last_error(ids),
    }


def total_stats(per_project: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sums over projects; the latest success and error of any of them."""
    stats = list(per_project.values())
    errors = [dict(s["last_error"], project=name) for name, s in per_project.items() if s["last_error"]]
    return {
        **{k: sum(s[k] for s in stats) for k in ("total_queued", "total_uploaded", "total_failed", "queue_size")},
        "last_success_at": _latest(s["last_success_at"] for s in stats),
        "last_error": max(errors, key=lambda e: e["file_id"], default=None),  # ids grow with time
    }


def _last_row(session_id: int, status: str, *fields: str) -> Any:
    # Per session, so each lookup is one step down the (session, status, id) index.
    row = FileUpload.objects.filter(session_id=session_id, status=status).order_by("-id").values(*fields).first()
    if row is None:
        return None
    return row[fields[0]] if len(fields) == 1 else row


def _last_error(session_ids: list[int]) -> dict[str, Any] | None:
    fields = ("id", "relative_path", "last_error", "claimed_at")
    rows = [r for sid in session_ids if (r := _last_row(sid, FileStatus.FAILED, *fields))]
    if not rows:
        return None
    last = max(rows, key=lambda r: r["id"])
    return {"file_id": last["id"], "path": last["relative_path"], "message": last["last_error"],
            "at": last["claimed_at"]}


def _latest(times: Any) -> datetime | None:
    return max((t for t in times if t is not None), default=None)
