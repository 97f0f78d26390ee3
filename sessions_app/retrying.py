"""Retry rounds: put a session's failed (or cancelled) files back to pending and upload them again.

A round is an ordinary upload of the re-queued rows by the same upload tasks. `FileUpload.retries`
counts the rounds a file was queued in; once a failed file has been in `max_retries` rounds it is
marked permanent ("gave up after N retry rounds") and only an explicit include-permanent retry
takes it again. In automatic mode the end of a round schedules the next one as a django-q2
Schedule row (the database, so a restart of the workers loses nothing), with exponential backoff,
until nothing retryable is left; only then is the session's end announced to notifications.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TextIO

from django.db import IntegrityError, transaction
from django.db.models import CharField, F, QuerySet, Value
from django.db.models.functions import Cast, Concat, Left
from django.utils import timezone
from django_q.models import Schedule

from projects import backoff
from sessions_app import enqueue, following
from sessions_app.enqueue import ROUND_TASK
from sessions_app.errors import RetryError
from sessions_app.files import destination_names, has_pending, requeue
from sessions_app.models import ENDED_STATUSES, FileStatus, FileUpload, SessionStatus, SyncSession

log = logging.getLogger(__name__)

LATE_ROUND_HINT_SECONDS = 120.0


@dataclass(frozen=True)
class Queued:
    """What one round put back to pending."""

    session_id: int
    round: int
    failed: int  # failed files queued again
    cancelled: int  # files a cancel left behind, queued for the first time

    @property
    def total(self) -> int:
        return self.failed + self.cancelled

    def text(self) -> str:
        if not self.total:
            return f"session {self.session_id}: nothing to retry"
        extra = f" ({self.cancelled} of them cancelled before)" if self.cancelled else ""
        files = f"{self.total} file{'' if self.total == 1 else 's'}"
        return f"session {self.session_id}: retry round {self.round} queued {files}{extra}"


@dataclass(frozen=True)
class Report:
    """The statistics of the round(s) a caller started, once they ended."""

    rounds: int
    retried: int  # files queued by the first round; later rounds retry a subset of them
    uploaded: int  # of those, now uploaded or skipped
    still_failed: int  # files of the session still failed
    permanent: int  # of those, permanent: not retried automatically

    def text(self) -> str:
        return (f"retry: {self.rounds} round{'s' if self.rounds != 1 else ''}; retried {self.retried}, "
                f"now uploaded {self.uploaded}, still failed {self.still_failed}, permanent {self.permanent}")


# -- queueing a round ---------------------------------------------------------------------------


def retryable(session: SyncSession) -> QuerySet[FileUpload]:
    """Failed files an automatic round would take."""
    return session.files.filter(status=FileStatus.FAILED, error_permanent=False,
                                retries__lt=session.project.max_retries)


def give_up_exhausted(session: SyncSession) -> int:
    """Failed files that were in max_retries rounds become permanent, saying why."""
    return session.files.filter(
        status=FileStatus.FAILED, error_permanent=False, retries__gte=session.project.max_retries
    ).update(
        error_permanent=True,
        last_error=Left(Concat(Value("gave up after "), Cast("retries", CharField()), Value(" retry rounds: "),
                               F("last_error"), output_field=CharField()), 5000),
    )


def queue_retry_round(session: SyncSession, *, include_permanent: bool = False,
                      files: QuerySet[FileUpload] | None = None, auto: bool = False,
                      start: bool = True, destination: str | None = None) -> Queued:
    """Re-queue the session's failed files (transient only, unless include_permanent) and the
    files a cancel left behind; reopen the session and start upload tasks for the destinations
    that have files to retry. `files` narrows the choice (admin "Retry selected"), and so does
    `destination` (a name). Nothing to retry: nothing changes."""
    session.refresh_from_db()
    names = destination_names(session)
    if destination is not None and destination not in names:
        raise RetryError(f"session {session.pk} has no destination named {destination!r} "
                         f"(it has: {', '.join(names) or 'one, unnamed'})")
    if destination is not None:
        files = (files if files is not None else session.files.all()).filter(destination=destination)
    if session.is_active:
        raise RetryError(f"session {session.pk} is still {session.status}; retry its files when it has ended")
    if not session.scan_finished_at:
        raise RetryError(f"session {session.pk} ended ({session.status}) before its scan finished; start a new "
                         f"session instead (files already uploaded are skipped)")
    give_up_exhausted(session)
    failed, cancelled = _candidates(session, include_permanent, files)
    if not failed.exists() and not cancelled.exists():
        return Queued(session.pk, session.retry_round, 0, 0)
    try:
        with transaction.atomic():
            n_failed, n_cancelled = requeue(session, failed, cancelled)
            if not session.reopen():
                raise RetryError(f"session {session.pk} could not be reopened from {session.status}")
            SyncSession.objects.filter(pk=session.pk).update(retry_round=F("retry_round") + 1, auto_retry=auto,
                                                             next_retry_at=None)
            session.refresh_from_db()
    except IntegrityError:  # the lease (starting.py): another session runs to the same destination
        raise RetryError(f"session {session.pk}: another session of project {session.project.name} is running to "
                         f"the same destination; retry when it has ended") from None
    drop_scheduled_rounds(session)
    queued = Queued(session.pk, session.retry_round, n_failed, n_cancelled)
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} {queued.text()}"
                       f"{' (automatic)' if auto else ''}{' incl. permanent' if include_permanent else ''}")
    if start:
        _start_uploads(session, [destination] if destination else names)
    return queued


def _start_uploads(session: SyncSession, names: list[str]) -> None:
    """Upload tasks for each destination with files to send again (none for the others)."""
    if not names:
        enqueue.uploads(session.pk, session.project.upload_tasks)
    for name in names:
        if has_pending(session, name):
            enqueue.uploads(session.pk, session.project.upload_tasks, name)


def _candidates(session: SyncSession, include_permanent: bool,
                files: QuerySet[FileUpload] | None) -> tuple[QuerySet[FileUpload], QuerySet[FileUpload]]:
    qs = session.files.all()
    if files is not None:
        qs = qs.filter(pk__in=files.values("pk"))
    failed = qs.filter(status=FileStatus.FAILED)
    if not include_permanent:
        failed = failed.filter(error_permanent=False)
    return failed, qs.filter(status=FileStatus.CANCELLED)


# -- automatic rounds ---------------------------------------------------------------------------


def round_delay(session: SyncSession, round_number: int) -> float:
    """Seconds between the end of round k-1 and round k (the upload itself is round 0)."""
    project = session.project
    return backoff.delay(round_number, project.retry_backoff_base, project.retry_backoff_cap, jitter=False)


def schedule_name(session_id: int, round_number: int) -> str:
    return f"uploader: session {session_id} retry round {round_number}"


def schedule_next_round(session: SyncSession) -> bool:
    """In automatic mode, store the next round as a one-off django-q2 Schedule; False when
    there is nothing (more) to do automatically."""
    if not session.auto_retry or session.status != SessionStatus.COMPLETED_WITH_ERRORS:
        return False
    if not retryable(session).exists():
        SyncSession.objects.filter(pk=session.pk).update(next_retry_at=None)
        return False
    number = session.retry_round + 1
    when = timezone.now() + timedelta(seconds=round_delay(session, number))
    with transaction.atomic():
        drop_scheduled_rounds(session)
        Schedule.objects.create(name=schedule_name(session.pk, number), func=ROUND_TASK,
                                args=f"{session.pk}, {number}", schedule_type=Schedule.ONCE, next_run=when)
        SyncSession.objects.filter(pk=session.pk).update(next_retry_at=when)
    session.next_retry_at = when
    session.append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} retry round {number} scheduled for {when:%H:%M:%S}")
    return True


def drop_scheduled_rounds(session: SyncSession) -> int:
    return Schedule.objects.filter(func=ROUND_TASK, name__startswith=schedule_name(session.pk, 0)[:-1]).delete()[0]


def stop_automatic(session: SyncSession) -> bool:
    """No more automatic rounds for this session (cancel, or a person took over)."""
    dropped = drop_scheduled_rounds(session)
    changed = SyncSession.objects.filter(pk=session.pk, auto_retry=True).update(auto_retry=False, next_retry_at=None)
    session.refresh_from_db()
    return bool(dropped or changed)


def run_scheduled_round(session_id: int, round_number: int) -> str:
    """The scheduled task: queue round `round_number` unless the session moved on meanwhile."""
    session = SyncSession.objects.select_related("project").filter(pk=session_id).first()
    if session is None:
        return f"session {session_id} is gone"
    if not session.auto_retry or session.retry_round != round_number - 1 or session.is_active:
        return f"session {session_id}: round {round_number} no longer wanted (round {session.retry_round}, " \
               f"{session.status})"
    return queue_retry_round(session, auto=True).text()


def awaiting_round(session: SyncSession) -> bool:
    """Ended, but an automatic round is (about to be) scheduled."""
    return (session.status == SessionStatus.COMPLETED_WITH_ERRORS and session.auto_retry
            and retryable(session).exists())


# -- following and reporting --------------------------------------------------------------------


def done_count(session: SyncSession) -> int:
    return session.uploaded_count + session.skipped_count


def report(session: SyncSession, first: Queued, done_before: int) -> Report:
    """The rounds from `first` on, compared with the uploaded + skipped count before it."""
    session.refresh_from_db()
    return Report(
        rounds=session.retry_round - first.round + 1 if first.total else 0,
        retried=first.total,
        uploaded=done_count(session) - done_before,
        still_failed=session.failed_count,
        permanent=session.files.filter(status=FileStatus.FAILED, error_permanent=True).count(),
    )


def whole_session_report(session: SyncSession) -> Report:
    """Every round the session had (a session that `master` started)."""
    session.refresh_from_db()
    retried = session.files.filter(retries__gt=0)
    return Report(
        rounds=session.retry_round,
        retried=retried.count(),
        uploaded=retried.filter(status__in=(FileStatus.UPLOADED, FileStatus.SKIPPED)).count(),
        still_failed=session.failed_count,
        permanent=session.files.filter(status=FileStatus.FAILED, error_permanent=True).count(),
    )


def follow_rounds(session: SyncSession, out: TextIO, *, progress: bool = True, poll: float = 0.5) -> SyncSession:
    """Follow the session through every round, waiting between automatic ones."""
    while True:
        session = following.follow(session, out, progress=progress, poll=poll)
        if session.status not in ENDED_STATUSES or not awaiting_round(session):
            return session
        session = _wait_for_round(session, out, poll)


def _wait_for_round(session: SyncSession, out: TextIO, poll: float) -> SyncSession:
    announced, hinted = None, False
    while session.status in ENDED_STATUSES and awaiting_round(session):
        when = session.next_retry_at
        if when and when != announced:
            out.write(f"session {session.pk}: retry round {session.retry_round + 1} at {when:%H:%M:%S}\n")
            announced = when
        if when and not hinted and (timezone.now() - when).total_seconds() > LATE_ROUND_HINT_SECONDS:
            out.write("the round is late: is a worker running? start one with `python manage.py qcluster`\n")
            hinted = True
        time.sleep(poll)
        session.refresh_from_db()
    return session
