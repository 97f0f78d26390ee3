"""Resume sessions whose workers vanished (killed cluster, lost broker tasks).

1. Pick the sessions: the ids given, or every running session with --all.
2. Refuse a session that still shows signs of life, unless --force.
3. Rows cut off mid-upload go back to pending, to be checked at the destination first;
   the scan restarts if it had not finished, else upload tasks are queued.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app import pipeline
from sessions_app.errors import EnqueueError, ResumeError
from sessions_app.models import SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Resume running sessions whose workers vanished."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("session_ids", nargs="*", type=int)
        parser.add_argument("--all", action="store_true", help="every running session")
        parser.add_argument("--force", action="store_true", help="even if it looks alive")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"]:
            sessions = pipeline.resumable()
        elif options["session_ids"]:
            sessions = list(SyncSession.objects.filter(pk__in=options["session_ids"]))
            missing = set(options["session_ids"]) - {s.pk for s in sessions}
            if missing:
                raise CommandError(f"no session with id {', '.join(map(str, sorted(missing)))}", returncode=2)
        else:
            raise CommandError("name session ids or use --all", returncode=2)
        errors = 0
        for session in sessions:
            try:
                self.stdout.write(safe(pipeline.resume(session, force=options["force"])))
            except (ResumeError, EnqueueError) as exc:
                self.stderr.write(f"error: {safe(exc)}")
                errors += 1
        if errors:
            raise CommandError(f"{errors} of {len(sessions)} sessions not resumed", returncode=2)
