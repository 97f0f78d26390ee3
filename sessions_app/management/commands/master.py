"""The whole job in one command: upload, retry what failed in automatic rounds, notify.

1. Load and validate the config (file < environment < command line); exit 2 on bad input.
2. Check both ends and take the project's lease (as `upload`: exit 2 while another session runs
   to the destination, or --wait-for-lock), then create or update the project (a refused run
   changes nothing, unless --save-config) and start its session with automatic retry rounds on;
   the workers (qcluster) do the uploads, this command follows them.
3. While failed files are retryable, each round schedules the next one in the database with
   exponential backoff (the project's retry_backoff_base / retry_backoff_cap), so a restart of
   the workers loses nothing; follow them until nothing retryable is left.
4. Notify --notify-url (else the project's notify_url, if any) with the final summary.
5. Print one final summary; exit 0 (all uploaded or skipped) / 1 (files failed, or the
   notification was not accepted) / 2 (bad input, or the session failed).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects.errors import UploaderError
from sessions_app import following, notifying, retrying, starting
from sessions_app.commandline import add_config_arguments, add_start_arguments, load_project_config, waiting_note
from sessions_app.models import Notification, SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Upload a folder, retry failed files in automatic rounds, then notify an endpoint."

    def add_arguments(self, parser: CommandParser) -> None:
        add_config_arguments(parser)
        add_start_arguments(parser)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        clean, source = load_project_config(options)
        # The final notification is this command's, not one per intermediate end of the session.
        try:
            session = starting.start_from_config(clean, source, created_by="master command", auto_retry=True,
                                                 params={"notify": "command"}, save_config=options["save_config"],
                                                 wait_for_lock=options["wait_for_lock"],
                                                 on_wait=waiting_note(self.stderr))
        except UploaderError as exc:
            raise CommandError(safe(exc), returncode=2)
        self.stdout.write(f"session {session.pk} started: {session.admin_url()}")
        session = retrying.follow_rounds(session, self.stderr._out, progress=not options["no_progress"])
        lines = [following.summary(session), retrying.whole_session_report(session).text()]
        notified = self.notify(session)
        if notified is not None:
            lines.append(safe(notifying.outcome_text(notified)))
        if session.status == "failed":
            self.stderr.write(f"error: {safe(session.error)}")
        elif session.failed_count:
            self.stderr.write(following.failure_report(session))
        self.stdout.write("\n".join(lines))
        code = following.exit_code(session)
        if notified is not None and not notified.succeeded:
            code = max(code, following.EXIT_FAILED_FILES)
        if code:
            sys.exit(code)

    def notify(self, session: SyncSession) -> Notification | None:
        if not notifying.configured(session.project):
            return None
        try:
            row = notifying.deliver(session, None, Notification.Trigger.COMMAND)
        except notifying.NotifyError as exc:
            raise CommandError(safe(exc), returncode=2)
        if not row.succeeded:
            self.stderr.write(f"error: {safe(notifying.outcome_text(row))}")
        return row
