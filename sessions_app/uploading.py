"""Upload a session's pending files: claim chunks, transfer concurrently, record in batches.

One `drain()` call is one django-q2 task. It claims pending rows with a conditional update
(safe when the broker delivers a task twice or two tasks race), keeps `upload_workers`
transfers in flight, writes outcomes and counters in batches, and hands over to a successor
task after UPLOAD_TASK_SECONDS so no task outlives the cluster's timeout.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from projects.destinations import Destination, DestinationError
from projects.walking import mtime_of
from sessions_app import bulk, catalog, shutdown
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession

log = logging.getLogger(__name__)

RECORD_FIELDS = [
    "status", "attempts", "uploaded_at", "checksum", "remote_id", "size", "mtime", "note",
    "last_error", "error_permanent", "skip_reason", "claim_token", "verify_remote",
]


@dataclass
class Outcome:
    row: FileUpload
    status: str
    bytes_sent: int = 0


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; never shorter than what the remote asked for."""
    base = settings.UPLOAD_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    delay = min(settings.UPLOAD_RETRY_CAP_SECONDS, base) * random.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


def with_retries(row: FileUpload, max_tries: int, once: Callable[[], Outcome], what: str) -> Outcome:
    """Run once() until it returns, retrying transient errors with backoff; never raises."""
    tries = 0
    while True:
        tries += 1
        row.attempts += 1
        try:
            return once()
        except DestinationError as exc:
            if exc.permanent or tries >= max_tries:
                return failed(row, exc, tries)
            time.sleep(backoff_seconds(tries, exc.retry_after))
        except Exception as exc:  # a bug in a backend must not take the whole chunk down
            log.exception("unexpected error: %s", what)
            return failed(row, DestinationError(f"unexpected error: {type(exc).__name__}: {exc}"), tries)


def transfer(dest: Destination, row: FileUpload, source_dir: str, max_tries: int) -> Outcome:
    """Upload one file, retrying transient errors; never raises."""
    path = os.path.join(source_dir, row.relative_path)
    if row.verify_remote and _already_there(dest, row, path):
        return Outcome(row, FileStatus.UPLOADED)
    return with_retries(row, max_tries, lambda: _upload_once(dest, row, path), f"uploading {row.relative_path}")


def _upload_once(dest: Destination, row: FileUpload, path: str) -> Outcome:
    _note_changes(row, path)
    result = dest.upload(path, row.remote_key)
    row.size = result.size
    row.checksum, row.remote_id = result.checksum[:200], result.remote_id[:200]
    row.note = (row.note + " " + result.note).strip()[:500]
    row.last_error, row.error_permanent = "", False
    row.uploaded_at = timezone.now()
    if result.duplicate:
        row.skip_reason = "duplicate"
        return Outcome(row, FileStatus.SKIPPED)
    return Outcome(row, FileStatus.UPLOADED, result.size)


Transfer = Callable[[Destination, FileUpload, str, int], Outcome]


def transfer_for(session: SyncSession) -> Transfer:
    """What moves one row of this session: uploading a local file, or (imports) fetching a
    Roboflow image into the destination."""
    if session.kind == SyncSession.Kind.IMPORT:
        from sessions_app.importing import Fetcher

        return Fetcher(session)
    return transfer


def _note_changes(row: FileUpload, path: str) -> None:
    """Record a size/mtime that changed since the scan, so no row keeps a stale size."""
    try:
        st = os.stat(path)
    except OSError:
        return  # the upload itself reports the missing file
    if st.st_size != row.size:
        row.note = f"size changed since scan: {row.size} -> {st.st_size}"
    row.size, row.mtime = st.st_size, mtime_of(st)


def _already_there(dest: Destination, row: FileUpload, path: str) -> bool:
    """For rows a crash left mid-upload: skip the transfer if the remote already has the file."""
    try:
        remote = dest.stat(row.remote_key)
        local_size = os.path.getsize(path)
    except (DestinationError, OSError):
        return False
    if remote is None or remote.size != local_size:
        return False
    row.size, row.uploaded_at, row.note = local_size, timezone.now(), "verified at destination after restart"
    row.last_error, row.error_permanent = "", False
    return True


def failed(row: FileUpload, exc: DestinationError, tries: int) -> Outcome:
    row.last_error = exc.message[:5000]
    row.error_permanent = exc.permanent
    if not exc.permanent and tries > 1:
        row.last_error = f"gave up after {tries} attempts: {row.last_error}"
    return Outcome(row, FileStatus.FAILED)


class Drainer:
    """One task's worth of uploading for one session."""

    def __init__(self, session: SyncSession, *, deadline: float | None):
        self.session = session
        self.project = session.project
        self.transfer = transfer_for(session)
        self.workers = max(1, session.params.get("workers") or self.project.upload_workers)
        self.max_tries = 1 + self.project.max_retries
        self.deadline = deadline
        self.outcomes: list[Outcome] = []
        self.last_flush = time.monotonic()
        self.stopped = False  # no more claims: cancelled, ended, out of time or shutting down
        self.cancelled = False
        self.shutting_down = False
        self.last_claimed = time.monotonic()
        self.catalog_id: int | None = None

    def run(self, dest: Destination) -> bool:
        """Upload until nothing is left to claim; True if this task stopped early (out of time or
        shutting down) and a successor should carry on."""
        self.catalog_id = catalog.open_for(self.project, dest).pk
        in_flight: dict[Future, FileUpload] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"upload-{self.session.pk}") as pool:
            while True:
                if not self.shutting_down and shutdown.requested():
                    self._wind_down(in_flight)
                if not self.stopped and len(in_flight) < self.workers:
                    for row in self.claim(self._chunk_size(len(in_flight))):
                        in_flight[pool.submit(self.transfer, dest, row, self.project.source_dir, self.max_tries)] = row
                        self.last_claimed = time.monotonic()
                if not in_flight:
                    if self.stopped or not self._more_coming():
                        break
                    time.sleep(0.2)  # the scan is still inserting pending rows, or producers are queueing
                else:
                    done, _ = wait(in_flight, timeout=settings.UPLOAD_FLUSH_SECONDS, return_when=FIRST_COMPLETED)
                    for fut in done:
                        in_flight.pop(fut)
                        self.outcomes.append(fut.result())
                if time.monotonic() - self.last_flush >= settings.UPLOAD_FLUSH_SECONDS:
                    self.flush()
                    self._check_stop()
                    if self.cancelled:
                        self._drop_unstarted(in_flight)
        self.flush()
        return self.timed_out or self.shutting_down

    @property
    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _chunk_size(self, busy: int) -> int:
        return max(settings.UPLOAD_CHUNK_SIZE, 2 * self.workers) - busy

    def _more_coming(self) -> bool:
        if self.session.kind == SyncSession.Kind.STREAM:
            # Linger: a producer queueing file after file is served by this task, not a task per file.
            return time.monotonic() - self.last_claimed < settings.QUEUE_LINGER_SECONDS
        # Pending rows nobody could claim are held back while another session uploads the same files.
        return SyncSession.objects.filter(pk=self.session.pk, status=SessionStatus.SCANNING).exists() or (
            self.session.files.filter(status=FileStatus.PENDING).exists())

    def _check_stop(self) -> None:
        status = SyncSession.objects.values_list("status", flat=True).get(pk=self.session.pk)
        if status not in (SessionStatus.SCANNING, SessionStatus.UPLOADING) or self.timed_out:
            self.stopped = True
        self.cancelled = status == SessionStatus.CANCELLED

    def _drop_unstarted(self, in_flight: dict[Future, FileUpload]) -> None:
        """Cancelled: claimed rows whose transfer has not started are not uploaded."""
        for fut, row in list(in_flight.items()):
            if fut.cancel():
                in_flight.pop(fut)
                self.outcomes.append(Outcome(row, FileStatus.CANCELLED))

    def _wind_down(self, in_flight: dict[Future, FileUpload]) -> None:
        """Shutting down: transfers in flight finish; claimed rows not started go back to pending."""
        self.stopped = self.shutting_down = True
        unstarted = [fut for fut in in_flight if fut.cancel()]
        released = [in_flight.pop(fut).pk for fut in unstarted]
        FileUpload.objects.filter(id__in=released, status=FileStatus.UPLOADING).update(
            status=FileStatus.PENDING, claim_token=None, claimed_at=None
        )
        log.info("session %s: shutting down: %d transfers finishing, %d claimed files back to pending",
                 self.session.pk, len(in_flight), len(released))

    def claim(self, n: int) -> list[FileUpload]:
        if n <= 0:
            return []
        token = uuid.uuid4()
        with transaction.atomic():
            others = catalog.lock_project(self.session)
            qs = FileUpload.objects.filter(session_id=self.session.pk, status=FileStatus.PENDING).order_by("id")
            if others:  # a file another session is uploading right now waits for its outcome
                qs = qs.exclude(remote_key__in=catalog.busy_keys(others))
            if connection.features.has_select_for_update_skip_locked:
                qs = qs.select_for_update(skip_locked=True)
            ids = list(qs.values_list("id", flat=True)[:n])
            if not ids:
                return []
            FileUpload.objects.filter(id__in=ids, status=FileStatus.PENDING).update(
                status=FileStatus.UPLOADING, claim_token=token, claimed_at=timezone.now()
            )
        rows = list(FileUpload.objects.filter(claim_token=token, status=FileStatus.UPLOADING).order_by("id"))
        return self._not_arrived(rows) if others else rows

    def _not_arrived(self, rows: list[FileUpload]) -> list[FileUpload]:
        """Rows whose file another session put at the destination meanwhile are done, not sent."""
        done = catalog.arrived(self.catalog_id, rows)
        for row in rows:
            if row.pk in done:
                row.skip_reason, row.note = catalog.SKIP_ARRIVED, f"uploaded by session {done[row.pk]}"
                self.outcomes.append(Outcome(row, FileStatus.SKIPPED))
        return [row for row in rows if row.pk not in done]

    def flush(self) -> None:
        """Write outcomes and counters in one transaction; also the session's heartbeat."""
        outcomes, self.outcomes = self.outcomes, []
        self.last_flush = time.monotonic()
        now = timezone.now()
        if not outcomes:
            SyncSession.objects.filter(pk=self.session.pk).update(heartbeat_at=now)
            return
        counts = {s: 0 for s in (FileStatus.UPLOADED, FileStatus.FAILED, FileStatus.SKIPPED, FileStatus.CANCELLED)}
        rows = []
        for o in outcomes:
            o.row.status, o.row.claim_token, o.row.verify_remote = o.status, None, False
            counts[o.status] += 1
            rows.append(o.row)
        with transaction.atomic():
            bulk.update_fields(FileUpload, rows, RECORD_FIELDS)
            catalog.record(self.catalog_id, self.session.pk, rows)
            SyncSession.objects.filter(pk=self.session.pk).update(
                uploaded_count=F("uploaded_count") + counts[FileStatus.UPLOADED],
                failed_count=F("failed_count") + counts[FileStatus.FAILED],
                skipped_count=F("skipped_count") + counts[FileStatus.SKIPPED],
                cancelled_count=F("cancelled_count") + counts[FileStatus.CANCELLED],
                pending_count=Greatest(F("pending_count") - len(rows), 0),
                bytes_uploaded=F("bytes_uploaded") + sum(o.bytes_sent for o in outcomes),
                heartbeat_at=now,
            )


def drain(session_id: int, deadline_seconds: float | None = None) -> str:
    """Upload what is pending; returns what happened: "idle", "handover" or "done"."""
    session = SyncSession.objects.select_related("project").get(pk=session_id)
    if session.status not in (SessionStatus.SCANNING, SessionStatus.UPLOADING):
        return "idle"
    deadline = time.monotonic() + deadline_seconds if deadline_seconds else None
    dest = session.project.destination()
    dest.bind(project=session.project.name, session_id=session.pk, source_dir=session.project.source_dir)
    try:
        timed_out = Drainer(session, deadline=deadline).run(dest)
    finally:
        dest.close()
    if timed_out and FileUpload.objects.filter(session_id=session_id, status=FileStatus.PENDING).exists():
        return "handover"
    session.refresh_from_db()
    if session.status == SessionStatus.UPLOADING and session.kind == SyncSession.Kind.STREAM:
        from sessions_app.queueing import went_idle

        went_idle(session)
    elif session.status == SessionStatus.UPLOADING:
        session.finish()
    elif session.status == SessionStatus.CANCELLED:
        from sessions_app.cancelling import settle

        settle(session)
    return "done"
