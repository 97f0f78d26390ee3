"""Retry a session's failed files: one round, or automatic rounds with backoff.

1. Find the session; exit 2 if there is none or it cannot be retried (still running, ...).
2. Queue a round: failed files with a transient error (--include-permanent: every failed file)
   and files a cancel left behind. --auto: when a round ends with retryable files, the next one
   is scheduled in the database with exponential backoff, until nothing retryable is left.
3. Without --wait, say what was queued and exit 0.
4. With --wait, follow the round(s) to the end; print the statistics; exit 0 (all uploaded or
   skipped) / 1 (files still failed) / 2.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app import following, retrying
from sessions_app.errors import EnqueueError, RetryError
from sessions_app.models import FileStatus, SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Retry the failed files of a session (one round, or --auto rounds with backoff)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_id", type=int)
        parser.add_argument("--auto", action="store_true", help="more rounds with backoff until nothing is left")
        parser.add_argument("--include-permanent", action="store_true",
                            help="also files whose error was permanent (the cause was fixed)")
        parser.add_argument("--destination", metavar="NAME",
                            help="only the files that failed at the destination of this name")
        parser.add_argument("--wait", action="store_true", help="follow the round(s) and print the statistics")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        session = SyncSession.objects.select_related("project").filter(pk=options["session_id"]).first()
        if session is None:
            raise CommandError(f"no session with id {options['session_id']}", returncode=2)
        done_before = retrying.done_count(session)
        try:
            queued = retrying.queue_retry_round(session, include_permanent=options["include_permanent"],
                                                auto=options["auto"], destination=options["destination"])
        except (RetryError, EnqueueError) as exc:
            raise CommandError(safe(exc), returncode=2)
        self.stdout.write(queued.text())
        if not queued.total:
            return self.nothing_to_retry(session)
        if not options["wait"]:
            return
        session = retrying.follow_rounds(session, self.stderr._out, progress=not options["no_progress"])
        self.stdout.write(retrying.report(session, queued, done_before).text())
        self.stdout.write(following.summary(session))
        if session.failed_count:
            self.stderr.write(following.failure_report(session))
        self.exit(following.exit_code(session))

    def nothing_to_retry(self, session: SyncSession) -> None:
        session.refresh_from_db()
        permanent = session.files.filter(status=FileStatus.FAILED, error_permanent=True).count()
        if permanent:
            self.stderr.write(f"{permanent} failed files have a permanent error; once the cause is fixed, "
                              f"retry them with --include-permanent")
        self.exit(following.exit_code(session))

    def exit(self, code: int) -> None:
        if code:
            sys.exit(code)
