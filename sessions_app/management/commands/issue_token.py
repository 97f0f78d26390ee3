"""Issue a new upload-queue API token for a project and print it, once.

1. Find the project by name.
2. Make a new random token; store only its hash (the previous token stops working).
3. Print the token on stdout, alone, so scripts can capture it; a reminder goes to stderr.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from projects.models import Project
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Issue a new API token for a project's upload queue and print it (it is not stored, only its hash)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("project", help="project name")

    def handle(self, *args, **options) -> None:
        try:
            project = Project.objects.get(name=options["project"])
        except Project.DoesNotExist:
            raise CommandError(f"no project named {options['project']!r}") from None
        replaced = bool(project.api_token_hash)
        token = project.issue_api_token()
        self.stdout.write(token)
        note = "; the previous token no longer works" if replaced else ""
        self.stderr.write(f"API token for {safe(project.name)}: shown once, keep it safe{note}.")
