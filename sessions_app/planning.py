"""Decide, in batches, what a scan's files need: upload, or skip because it is already done.

Already done means uploaded by an earlier session of the project (same path, size and mtime;
one indexed query per batch) or present at the destination (same key and size; the remote
listing is streamed once and merged with the scan, both in key order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from django.db.models import Q

from projects.destinations import Destination, RemoteObject
from projects.walking import Entry
from sessions_app import enqueue, files
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession

SKIP_EARLIER = "uploaded earlier"
SKIP_REMOTE = "already at destination"


@dataclass(frozen=True, slots=True)
class Decision:
    entry: Entry
    key: str
    skip_reason: str  # "" means upload


class RemoteCursor:
    """Walks a key-ordered remote listing alongside a key-ordered scan."""

    def __init__(self, objects: Iterable[RemoteObject]):
        self._it = iter(objects)
        self._current: RemoteObject | None = next(self._it, None)

    @property
    def empty(self) -> bool:
        return self._current is None

    def size_of(self, key: str) -> int | None:
        while self._current is not None and self._current.key < key:
            self._current = next(self._it, None)
        if self._current is not None and self._current.key == key:
            return self._current.size
        return None


def remote_cursor(destination: Destination) -> RemoteCursor:
    if not destination.supports_listing:
        return RemoteCursor(())
    return RemoteCursor(destination.list_existing())


def plan(
    entries: Iterable[Entry],
    destination: Destination,
    project_id: int,
    session_id: int,
    remote: RemoteCursor,
    batch_size: int = 5000,
) -> Iterator[list[Decision]]:
    it = iter(entries)
    while batch := list(islice(it, batch_size)):
        earlier = _uploaded_earlier(project_id, session_id, [e.relative_path for e in batch])
        decisions = []
        for entry in batch:
            key = destination.key_for(entry.relative_path)
            reason = ""
            if (entry.relative_path, entry.size, entry.mtime) in earlier:
                reason = SKIP_EARLIER
            elif not remote.empty and remote.size_of(key) == entry.size:
                reason = SKIP_REMOTE
            decisions.append(Decision(entry, key, reason))
        yield decisions


def _uploaded_earlier(project_id: int, session_id: int, paths: list[str]) -> set[tuple[str, int, float]]:
    # A remote's "duplicate" answer means it has the file: as good as an upload of ours.
    done = Q(status=FileStatus.UPLOADED) | Q(status=FileStatus.SKIPPED, skip_reason="duplicate")
    rows = (
        FileUpload.objects.filter(done, project_id=project_id, relative_path__in=paths)
        .exclude(session_id=session_id)
        .values_list("relative_path", "size", "mtime")
    )
    return set(rows)


def rows_for(decisions: list[Decision], session: SyncSession) -> list[FileUpload]:
    return [
        files.planned_row(session, relative_path=d.entry.relative_path, remote_key=d.key, size=d.entry.size,
                          mtime=d.entry.mtime, skip_reason=d.skip_reason, device=d.entry.device,
                          inode=d.entry.inode)
        for d in decisions
    ]


@dataclass
class ScanStats:
    files: int = 0
    pending: int = 0
    skipped: int = 0


def fill(session: SyncSession, batches: Iterable[list[FileUpload]], start_uploads: bool) -> ScanStats:
    """Insert planned rows batch by batch; upload tasks start with the first pending rows. Stops
    early when the session is cancelled."""
    stats, uploads_started = ScanStats(), False
    for rows in batches:
        new = files.add_planned(session, rows)
        pending = sum(1 for r in new if r.status == FileStatus.PENDING)
        stats.files += len(new)
        stats.pending += pending
        stats.skipped += len(new) - pending
        if start_uploads and pending and not uploads_started:
            enqueue.uploads(session.pk, session.project.upload_tasks)
            uploads_started = True
        if cancelled(session):
            break
    return stats


def cancelled(session: SyncSession) -> bool:
    return SyncSession.objects.filter(pk=session.pk, status=SessionStatus.CANCELLED).exists()
