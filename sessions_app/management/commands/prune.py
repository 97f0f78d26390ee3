"""Delete old rows of skipped files; their counts stay on their sessions.

1. Check the arguments: --skipped (the only kind of row pruned), --older-than AGE (30d, 12h, 2w).
2. --dry-run: say how many rows of how many sessions would go; change nothing.
3. Otherwise delete them, a batch per transaction, and say how many went.
Exit codes: 0 done (also when nothing was old enough); 2 bad arguments.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from sessions_app import files

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([mhdw])", text.strip())
    if not match:
        raise CommandError(f"--older-than: expected a number and a unit (m, h, d, w), e.g. 30d; got {text!r}",
                           returncode=2)
    return timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = "Delete old rows of skipped files (the catalog knows what they recorded); counts stay on the sessions."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--skipped", action="store_true", help="prune rows of skipped files (required)")
        parser.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w")
        parser.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["skipped"]:
            raise CommandError("say what to prune: --skipped", returncode=2)
        cut_off = timezone.now() - parse_age(options["older_than"])
        age = options["older_than"]
        if options["dry_run"]:
            old = files.skipped_before(cut_off)
            sessions = old.order_by().values("session_id").distinct().count()
            self.stdout.write(f"dry run: {old.count():,} skipped rows of {sessions:,} sessions are older than {age}; "
                              f"nothing was deleted")
            return
        rows, sessions = files.prune_skipped(cut_off)
        self.stdout.write(f"pruned {rows:,} skipped rows of {sessions:,} sessions (older than {age}); their counts "
                          f"stay on the sessions")
