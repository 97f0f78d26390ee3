"""Browser uploads, phase 1: a manifest opens a session of files waiting for their bytes, and the
bytes arrive over tus 1.0 into a staging folder.

1. `open_upload()` checks every entry of the manifest (a safe relative path, a size, an allowed
   type, under the size limit and the project's quota, not twice), and starts a *browser upload*
   session (starting.start_receiving) with one `receiving` row and one Arrival per accepted file.
2. `append()` writes one PATCH's body at the staged file's end, streamed in blocks: the staged
   file's size is the offset, so an upload cut off anywhere resumes where the bytes stop. A lock
   on the staged file keeps two PATCHes of one upload from interleaving.
3. The last byte in, `finish()` moves the row to pending (files.received) and wakes a drainer,
   which processes it (processing.py). `expire()` (the sweep) fails uploads left unfinished.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, BinaryIO

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from projects.errors import NO_SPACE, UploaderError
from projects.models import Project
from projects.sources.local import LocalSource
from sessions_app import files, lifecycle, staging, starting, waking
from sessions_app.models import Arrival, FileStatus, FileUpload, SessionStatus, SyncSession

log = logging.getLogger(__name__)

MAX_PATH = 1024  # characters of a relative path; keys add a prefix within FileUpload's 4096
MAX_SEGMENT_BYTES = 255  # a file name on every common file system
BLOCK = 1024 * 1024  # bytes read from the request and written at once
MIB = 1024 * 1024


class TusError(UploaderError):
    """A tus or manifest request we refuse, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message, permanent=True)
        self.status = status


# -- the manifest -----------------------------------------------------------------------------------


def clean_path(raw: Any) -> str:
    """The relative path as stored (NFC, "/" separators), or TusError(400) saying what is wrong."""
    if not isinstance(raw, str) or not raw:
        raise TusError(400, "bad name: expected a non-empty relative path")
    if "\x00" in raw or any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise TusError(400, "bad name: control characters are not allowed")
    if "\\" in raw:
        raise TusError(400, "bad name: backslashes are not allowed (use /)")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise TusError(400, "bad name: absolute paths are not allowed")
    path = unicodedata.normalize("NFC", raw)
    if len(path) > MAX_PATH:
        raise TusError(400, f"bad name: longer than {MAX_PATH} characters")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise TusError(400, "bad name: empty, . or .. segments are not allowed")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise TusError(400, f"bad name: a name longer than {MAX_SEGMENT_BYTES} bytes")
    return path


def _size(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise TusError(400, "bad size: expected a whole number of bytes")
    return raw


def max_file_bytes(project: Project) -> int:
    return project.upload_max_file_mb * MIB if project.upload_max_file_mb else settings.UPLOAD_MAX_FILE_BYTES


def staged_bytes(project: Project) -> int:
    """Bytes of the project's browser uploads in staging, or declared and on their way."""
    return FileUpload.objects.filter(
        project=project, session__kind=SyncSession.Kind.BROWSER, status__in=files.OPEN
    ).aggregate(n=Sum("size"))["n"] or 0


@dataclass
class Manifest:
    """The checked entries of a manifest: (path, size) accepted, {path, reason} refused."""

    accepted: list[tuple[str, int]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


def check_manifest(project: Project, entries: Any) -> Manifest:
    if not isinstance(entries, list):
        raise TusError(400, 'expected {"files": [{"path": ..., "size": ...}, ...]}')
    if len(entries) > settings.UPLOAD_MANIFEST_MAX_FILES:
        raise TusError(413, f"too many files in one manifest (limit {settings.UPLOAD_MANIFEST_MAX_FILES})")
    dest_class = type(project.destination())
    filters = LocalSource.of(project, dest_class.default_extensions).filter
    limit = max_file_bytes(project)
    room = project.upload_quota_mb * MIB - staged_bytes(project) if project.upload_quota_mb else None
    seen: set[str] = set()
    out = Manifest()
    for entry in entries:
        raw = entry.get("path") if isinstance(entry, dict) else None
        try:
            if not isinstance(entry, dict):
                raise TusError(400, "bad entry: expected an object with path and size")
            path, size = clean_path(raw), _size(entry.get("size"))
            if path in seen:
                raise TusError(400, "duplicate path")
            if refusal := filters.refusal(path):
                raise TusError(400, f"type not allowed: {refusal}")
            if size > limit:
                raise TusError(413, f"too large: {size} bytes (limit {limit})")
            if room is not None and size > room:
                raise TusError(413, f"over the project's quota of {project.upload_quota_mb} MiB")
        except TusError as exc:
            out.refused.append({"path": raw if isinstance(raw, str) else repr(raw), "reason": exc.message})
            continue
        seen.add(path)
        if room is not None:
            room -= size
        out.accepted.append((path, size))
    return out


def open_upload(project: Project, entries: Any, owner: str, created_by: str) -> tuple[SyncSession, Manifest]:
    """Check the manifest and start its session; StartError when the destination is misconfigured."""
    manifest = check_manifest(project, entries)
    dest = project.destination()
    expires = timezone.now() + timedelta(seconds=settings.UPLOAD_EXPIRE_SECONDS)

    def fill(session: SyncSession) -> None:
        rows = [FileUpload(session=session, project=project, relative_path=path, remote_key=dest.key_for(path),
                           size=size, status=FileStatus.RECEIVING) for path, size in manifest.accepted]
        rows = files.add_receiving(session, rows)
        Arrival.objects.bulk_create([Arrival(file=row, upload_id=uuid.uuid4(), owner=owner, expires_at=expires)
                                     for row in rows], batch_size=1000)

    session = starting.start_receiving(project, fill, created_by=created_by,
                                       params={"refused": len(manifest.refused)})
    if manifest.refused:
        session.append_log("\n".join(f"refused {r['path']!r}: {r['reason']}" for r in manifest.refused[:1000]))
    for arrival in Arrival.objects.filter(file__session=session, file__size=0).select_related("file__session"):
        _create_empty(arrival)  # no tus client sends a PATCH for an empty file
    return session, manifest


def _create_empty(arrival: Arrival) -> None:
    path = staging_path(arrival)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    finish(arrival)


def arrivals(session: SyncSession) -> Iterator[tuple[str, uuid.UUID]]:
    """(relative path, upload id) of each file of the session, in manifest order."""
    return (Arrival.objects.filter(file__session=session).order_by("file_id")
            .values_list("file__relative_path", "upload_id").iterator(chunk_size=2000))


# -- tus ---------------------------------------------------------------------------------------------


def staging_path(arrival: Arrival) -> str:
    return staging.upload_path(arrival.file.session_id, arrival.file_id)


def find(upload_id: Any) -> Arrival:
    """The arrival of an upload url's id: TusError 404 for an unknown one, 410 for one that expired."""
    try:
        arrival = Arrival.objects.select_related("file", "file__session").get(upload_id=uuid.UUID(str(upload_id)))
    except (ValueError, Arrival.DoesNotExist):
        raise TusError(404, "no such upload") from None
    if arrival.file.status == FileStatus.RECEIVING and arrival.expires_at <= timezone.now():
        raise TusError(410, "this upload expired; send a new manifest")
    return arrival


def offset(arrival: Arrival) -> int:
    """Bytes stored: the staged file's size (all of them once the file was received)."""
    if arrival.file.status != FileStatus.RECEIVING:
        return arrival.file.size if arrival.received_at else arrival.offset
    try:
        return os.path.getsize(staging_path(arrival))
    except FileNotFoundError:
        return 0


def append(arrival: Arrival, at: int, body: BinaryIO, length: int | None) -> int:
    """Write a PATCH's body at offset `at` (it must be the current offset: 409); the new offset.
    Refuses (413) a body that would pass the declared size before storing a byte of it."""
    row = arrival.file
    if row.status != FileStatus.RECEIVING:
        if arrival.received_at and at == row.size and not length:
            return row.size  # a client confirming the end after a lost answer
        raise TusError(409 if arrival.received_at else 404, "this upload is complete" if arrival.received_at
                       else f"this upload is {row.status}")
    if length is None:
        raise TusError(400, "Content-Length required")
    path = staging_path(arrival)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab", buffering=0) as staged:
        try:
            fcntl.flock(staged, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TusError(423, "another request is writing this upload") from None
        current = os.fstat(staged.fileno()).st_size
        if at != current:
            raise TusError(409, f"Upload-Offset {at} does not match the server's offset {current}")
        if current + length > row.size:
            raise TusError(413, f"{current + length} bytes would pass the declared size of {row.size}")
        written = _copy(body, staged, length, path, current)
    new_offset = current + written
    Arrival.objects.filter(pk=arrival.pk).update(
        offset=new_offset, expires_at=timezone.now() + timedelta(seconds=settings.UPLOAD_EXPIRE_SECONDS))
    arrival.offset = new_offset
    if new_offset == row.size:
        finish(arrival)
    return new_offset


def _copy(body: BinaryIO, staged: BinaryIO, length: int, path: str, start: int) -> int:
    """Copy up to `length` bytes in blocks (unbuffered: what is counted is on disk); a client that
    goes away leaves what came."""
    written = 0
    while written < length:
        try:
            block = memoryview(body.read(min(BLOCK, length - written)))
        except OSError:  # connection dropped: the bytes so far stay, the client resumes after them
            break
        if not block:
            break
        try:
            while block:
                n = staged.write(block)
                written += n
                block = block[n:]
        except OSError as exc:
            if exc.errno in NO_SPACE or exc.errno == errno.EFBIG:
                log.error("staging %s: %s", path, exc)
                raise TusError(507, "the staging disk is full; try again later") from None
            raise
    return written


def restart(arrival: Arrival, length: int) -> None:
    """tus creation for a manifest's file: its upload starts over, empty, at the declared size."""
    row = arrival.file
    if length != row.size:
        raise TusError(413 if length > row.size else 400,
                       f"Upload-Length {length} is not the size the manifest declared ({row.size})")
    if row.status != FileStatus.RECEIVING:
        raise TusError(409, f"this file is already {row.get_status_display().lower()}")
    if row.size == 0:
        return  # received with the manifest
    path = staging_path(arrival)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab") as staged:
        try:
            fcntl.flock(staged, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TusError(423, "another request is writing this upload") from None
        staged.truncate(0)
    Arrival.objects.filter(pk=arrival.pk).update(offset=0)


def finish(arrival: Arrival) -> None:
    """All the bytes are in: the file waits for processing, and a drainer is woken for it."""
    now = timezone.now()
    Arrival.objects.filter(pk=arrival.pk).update(received_at=now)
    arrival.received_at = now
    if files.received(arrival.file):
        waking.wake(arrival.file.session)


def terminate(arrival: Arrival) -> None:
    """tus termination: the upload's bytes go and its file is cancelled."""
    if not files.terminate(arrival.file):
        raise TusError(409 if arrival.received_at else 404, "this upload is no longer receiving")
    staging.remove(staging_path(arrival))
    lifecycle.end_if_settled(arrival.file.session)


# -- expiry (the sweep) -------------------------------------------------------------------------------


def expire(now: Any = None) -> list[str]:
    """Uploads left unfinished past their expiry: their staged bytes go, their files fail."""
    now = now or timezone.now()
    done = []
    stale = Arrival.objects.filter(expires_at__lte=now, file__status=FileStatus.RECEIVING)
    for session_id in stale.values_list("file__session_id", flat=True).distinct():
        expired = list(stale.filter(file__session_id=session_id).select_related("file"))
        for arrival in expired:
            staging.remove(staging_path(arrival))
        n = files.give_up_receiving(session_id, FileUpload.objects.filter(id__in=[a.file_id for a in expired]),
                                    "upload expired: its bytes did not all arrive")
        session = SyncSession.objects.get(pk=session_id)
        if session.status == SessionStatus.UPLOADING and files.has_pending(session):
            waking.wake(session)
        lifecycle.end_if_settled(session)
        done.append(f"session {session_id}: {n} unfinished uploads expired")
    return done
