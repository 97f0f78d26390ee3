"""Notify an endpoint of a session's outcome now (an HTTP POST of its JSON summary).

1. Find the session; exit 2 if there is none.
2. The URL: --url, else the project's notify_url; exit 2 if there is none or it is not http(s).
3. Deliver, retrying connection errors, timeouts and 5xx with backoff (not 3xx/4xx); every
   attempt is printed and recorded as a Notification of the session.
4. Exit 0 when the endpoint accepted it (2xx), 1 when it refused or could not be reached.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app import notifying
from sessions_app.models import Notification, SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "POST a session's summary to an HTTP endpoint (default: the project's notify_url)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_id", type=int)
        parser.add_argument("--url", help="the endpoint (http:// or https://); default: the project's notify_url")

    def handle(self, *args: Any, **options: Any) -> None:
        session = SyncSession.objects.select_related("project").filter(pk=options["session_id"]).first()
        if session is None:
            raise CommandError(f"no session with id {options['session_id']}", returncode=2)
        try:
            row = notifying.deliver(session, options["url"], Notification.Trigger.COMMAND)
        except notifying.NotifyError as exc:
            raise CommandError(safe(exc), returncode=2)
        for attempt in session.notifications.filter(idempotency_key=row.idempotency_key).order_by("attempt"):
            self.stdout.write(attempt_line(attempt))
        if row.succeeded:
            self.stdout.write(safe(notifying.outcome_text(row)))
            return
        self.stderr.write(f"error: {safe(notifying.outcome_text(row))}")
        sys.exit(1)


def attempt_line(row: Notification) -> str:
    answer = str(row.status_code) if row.status_code else row.error
    return f"attempt {row.attempt}: {safe(answer)} ({row.duration_ms} ms)"
