"""Moving one claimed row to the destination, retrying transient errors with backoff; never
raises. A session kind picks the transfer of its rows (kinds.py): uploading a local file (here),
or fetching a Roboflow image (importing.Fetcher), both through `with_retries` and `already_there`."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone

from projects import backoff
from projects.destinations import Destination, DestinationError
from projects.errors import FileChangedError, RemoteError
from projects.localfile import open_under
from sessions_app import pacing
from sessions_app.files import Outcome
from sessions_app.models import FileStatus, FileUpload

log = logging.getLogger(__name__)

VERIFIED_NOTE = "verified at destination after restart"

Transfer = Callable[[Destination, FileUpload, str, int], Outcome]


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Between two tries of one file within a task."""
    return backoff.delay(attempt, settings.UPLOAD_RETRY_BASE_SECONDS, settings.UPLOAD_RETRY_CAP_SECONDS,
                         at_least=retry_after)


def with_retries(row: FileUpload, max_tries: int, once: Callable[[], Outcome], what: str) -> Outcome:
    """Run once() until it returns, retrying transient errors with backoff; never raises. Every
    attempt waits its turn in the session's pacer; a throttled one does not count as a try (the
    pacer slows the session instead), until the file has been throttled for the project's
    throttle_patience: then the session pauses and the row goes back to pending. A destination
    out of space pauses the session at once (no file could go until space is freed)."""
    pacer = pacing.current()
    tries, throttled_since = 0, None
    while True:
        if not pacer.wait():
            return Outcome(row, FileStatus.PENDING)  # the session paused
        row.attempts += 1
        try:
            outcome = once()
        except RemoteError as exc:  # the destination's or the source's end
            if exc.full and pacer is not pacing.UNPACED:
                pacer.pause(f"{exc.message[:300]}: free space there, then resume")
                return Outcome(row, FileStatus.PENDING)
            if exc.throttled and pacer is not pacing.UNPACED:
                pacer.throttled(exc)
                throttled_since = throttled_since or time.monotonic()
                if time.monotonic() - throttled_since >= pacer.patience:
                    pacer.pause(f"{row.relative_path} was throttled for {pacer.patience:g} s "
                                f"(throttle_patience): {exc.message[:200]}")
                    return Outcome(row, FileStatus.PENDING)
                continue
            tries += 1
            if exc.permanent or tries >= max_tries:
                if isinstance(exc, FileChangedError):
                    exc.permanent = True
                return failed(row, exc, tries)
            time.sleep(backoff_seconds(tries, exc.retry_after))
        except Exception as exc:  # a bug in a backend must not take the whole chunk down
            log.exception("unexpected error: %s", what)
            return failed(row, DestinationError(f"unexpected error: {type(exc).__name__}: {exc}"), tries + 1)
        else:
            pacer.succeeded()
            return outcome


def failed(row: FileUpload, exc: RemoteError, tries: int) -> Outcome:
    row.last_error = exc.message[:5000]
    row.error_permanent = exc.permanent
    if tries > 1 and (not exc.permanent or isinstance(exc, FileChangedError)):
        row.last_error = f"gave up after {tries} attempts: {row.last_error}"
    return Outcome(row, FileStatus.FAILED)


def already_there(dest: Destination, row: FileUpload, local_path: str | None = None) -> bool:
    """For rows a crash cut off mid-transfer: is the object at the destination already (of the
    local file's size, when there is a local file)? Then the row is done without a transfer."""
    try:
        remote = dest.stat(row.remote_key)
        size = os.path.getsize(local_path) if local_path else None
    except (DestinationError, OSError):
        return False
    if remote is None or (size is not None and remote.size != size):
        return False
    row.size, row.uploaded_at, row.note = remote.size, timezone.now(), VERIFIED_NOTE
    row.last_error, row.error_permanent = "", False
    return True


def local_transfer(follow_symlinks: bool) -> Transfer:
    """The transfer of a project's local files (following symlinks in its folder or not)."""
    return functools.partial(transfer, follow_symlinks=follow_symlinks)


def transfer(dest: Destination, row: FileUpload, source_dir: str, max_tries: int, *,
             follow_symlinks: bool = False) -> Outcome:
    """Upload one local file: the one that was scanned or queued, opened once, read from the open file."""
    path = os.path.join(source_dir, row.relative_path)
    if row.verify_remote and already_there(dest, row, path):
        return Outcome(row, FileStatus.UPLOADED)
    return with_retries(row, max_tries, lambda: _upload_once(dest, row, source_dir, follow_symlinks),
                        f"uploading {row.relative_path}")


def _upload_once(dest: Destination, row: FileUpload, source_dir: str, follow_symlinks: bool) -> Outcome:
    with open_under(source_dir, row.relative_path, follow_symlinks=follow_symlinks) as local:
        local.check_identity(row.device, row.inode)
        note_changes(row, local.size, local.mtime)
        result = dest.upload(local, row.remote_key)
        local.check_unchanged()
    row.size = result.size  # what was sent: the file as opened, unchanged until the end
    row.checksum, row.remote_id = result.checksum[:200], result.remote_id[:200]
    row.note = (row.note + " " + result.note).strip()[:500]
    row.last_error, row.error_permanent = "", False
    row.uploaded_at = timezone.now()
    if result.duplicate:
        row.skip_reason = "duplicate"
        return Outcome(row, FileStatus.SKIPPED)
    return Outcome(row, FileStatus.UPLOADED)


def note_changes(row: FileUpload, size: int, mtime: float) -> None:
    """Record the size and mtime of the file as opened, noting a size changed since the scan, so no
    row keeps a stale size."""
    if note := change_note(row.size, size):
        row.note = note
    row.size, row.mtime = size, mtime


def change_note(scanned: int, opened: int) -> str:
    """The note of a file whose size changed since the scan ("" if it did not)."""
    return f"size changed since scan: {scanned} -> {opened}" if opened != scanned else ""
