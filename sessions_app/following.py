"""Following a session from a command: a progress bar, then a summary and an exit code."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TextIO

from django.db import connection
from tqdm import tqdm

from sessions_app import files, pacing
from sessions_app.models import ENDED_STATUSES, FileStatus, SessionDestination, SessionStatus, SyncSession
from sessions_app.terminal import safe

EXIT_OK, EXIT_FAILED_FILES, EXIT_BAD_INPUT = 0, 1, 2
NO_CLUSTER_HINT_AFTER = 15.0
END_CHECK_SECONDS = 0.1


def human_size(n: float) -> str:
    return tqdm.format_sizeof(n, "B", 1024)


def follow(session: SyncSession, out: TextIO, *, progress: bool = True, poll: float = 0.5,
           stop: threading.Event | None = None, workers: Sequence[threading.Thread] = ()) -> SyncSession:
    """Poll the session row until it ends, drawing a progress bar on `out`. With `workers`, the
    threads running the session in this process (--sync), its end is their end: no queries in
    between but the redraws (none without a progress bar)."""
    bar = tqdm(total=0, unit="file", file=out, disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} files [{elapsed}<{remaining}] {postfix}")
    started, hinted = time.monotonic(), False
    try:
        while True:
            finished = bool(workers) and not any(t.is_alive() for t in workers)
            if progress or not workers or finished:
                session.refresh_from_db()
                _draw(bar, session)
            if finished or session.status in ENDED_STATUSES or (stop is not None and stop.is_set()):
                return session
            if not hinted and session.status == SessionStatus.QUEUED and \
                    time.monotonic() - started > NO_CLUSTER_HINT_AFTER:
                bar.write("still queued: is a worker running? start one with `python manage.py qcluster`")
                hinted = True
            _wait_for_change(session.pk, poll, stop, workers)
    finally:
        bar.close()


def _wait_for_change(session_id: int, poll: float, stop: threading.Event | None,
                     workers: Sequence[threading.Thread] = ()) -> None:
    """Until the next redraw, `poll` seconds away, or until the session ends: its status alone is
    asked every END_CHECK_SECONDS, so a command returns within that of its session's end (with only
    the redraws it took up to half a second). With its workers, their end is the session's: waited
    for, not looked at in steps (a `stop` is then seen at the redraw)."""
    deadline = time.monotonic() + poll
    if workers:
        for t in workers:
            t.join(max(0.0, deadline - time.monotonic()))
        return
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(END_CHECK_SECONDS, left))
        if stop is not None and stop.is_set():
            return
        if SyncSession.objects.filter(pk=session_id).values_list("status", flat=True).first() in ENDED_STATUSES:
            return


def _draw(bar: tqdm, s: SyncSession) -> None:
    bar.total = max(s.found_count, 1)
    bar.n = s.settled_count
    speed = s.bytes_per_second
    pace = pacing.describe(s)
    each = "".join(_one_line(d) for d in _several(s))
    bar.set_postfix_str(
        f"{s.status}; {human_size(s.bytes_uploaded)}/{human_size(s.bytes_total)} at {human_size(speed)}/s; "
        f"{s.uploaded_count} uploaded, {s.skipped_count} skipped, {s.failed_count} failed" + each
        + (f"; {pace}" if pace else ""),
        refresh=False,
    )
    bar.refresh()


def _one_line(d: SessionDestination) -> str:
    """One destination on the progress line: settled of found, failures, speed and ETA."""
    duration = d.session.duration
    secs = duration.total_seconds() if duration else 0.0
    done = d.uploaded_count + d.failed_count
    text = f"; {d.name} {d.settled_count}/{d.found_count}" + (f" ({d.failed_count} failed)" if d.failed_count else "")
    if secs > 0 and d.pending_count and done:
        text += f" at {human_size(d.bytes_uploaded / secs)}/s, ETA {d.pending_count * secs / done:.0f}s"
    return text


def _several(session: SyncSession) -> list[SessionDestination]:
    """The session's destinations when it has more than one (one: the totals say it all)."""
    rows = list(session.destinations.all())
    for row in rows:
        row.session = session
    return rows if len(rows) > 1 else []


def summary(session: SyncSession) -> str:
    d = session.duration
    secs = d.total_seconds() if d else 0.0
    rate = f", {session.uploaded_count / secs:.1f} files/s, {human_size(session.bytes_per_second)}/s" if secs else ""
    lines = [
        f"session {session.pk} {session.status}: {session.found_count} found, {session.uploaded_count} uploaded, "
        f"{session.skipped_count} skipped, {session.failed_count} failed, {session.cancelled_count} cancelled; "
        f"{human_size(session.bytes_uploaded)} in {secs:.1f}s{rate}"
    ]
    for dest in _several(session):
        lines.append(f"  destination {dest.name} {files.destination_status(dest)}: {dest.found_count} found, "
                     f"{dest.uploaded_count} uploaded, {dest.skipped_count} skipped, {dest.failed_count} failed, "
                     f"{dest.cancelled_count} cancelled; {human_size(dest.bytes_uploaded)}")
    return "\n".join(lines)


def failure_report(session: SyncSession, limit: int = 10) -> str:
    failed = session.files.filter(status=FileStatus.FAILED).order_by("id")
    lines = [f"{session.failed_count} files failed; the first {min(limit, session.failed_count)}:"]
    named = bool(_several(session))
    for f in failed[:limit]:
        kind = "permanent" if f.error_permanent else "transient"
        where = f"{f.destination}: " if named else ""
        lines.append(f"  {where}{safe(f.relative_path)}: {safe(f.last_error)} ({kind})")
    lines.append(f"all of them: {session.admin_url()} (or the Files page filtered by status)")
    return "\n".join(lines)


def exit_code(session: SyncSession) -> int:
    if session.status == SessionStatus.FAILED:
        return EXIT_BAD_INPUT
    if session.failed_count or session.status == SessionStatus.COMPLETED_WITH_ERRORS:
        return EXIT_FAILED_FILES
    return EXIT_OK


def run_in_thread(target, *args) -> threading.Thread:
    """A thread with its own database connection, closed at the end."""

    def wrapper() -> None:
        try:
            target(*args)
        finally:
            connection.close()

    t = threading.Thread(target=wrapper, daemon=True)
    t.start()
    return t


def report(session: SyncSession, stdout, stderr, *, limit: int = 10, retry_hint: bool = False) -> int:
    """Print the summary (stdout) and what went wrong (stderr); return the exit code."""
    stdout.write(summary(session))
    if session.status not in ENDED_STATUSES:  # --sync: its threads stopped short of the end (a pause)
        stderr.write(f"session {session.pk} stopped before its end ({pacing.describe(session) or session.status}): "
                     f"`python manage.py resume {session.pk}` hands the rest to a running cluster")
        return EXIT_FAILED_FILES
    if session.status == SessionStatus.FAILED:
        stderr.write(f"error: {safe(session.error)}")
    elif session.failed_count:
        stderr.write(failure_report(session, limit=limit))
        if retry_hint:
            stderr.write(f"retry them with: python manage.py retry {session.pk}")
    if session.unread_folders:
        stderr.write(f"{session.unread_folders} folders could not be read: their files were not synced "
                     f"(the session log names them: {session.admin_url()})")
    return exit_code(session)
