"""Import a Roboflow project's images and annotations into one of our projects' storage.

1. Find the project (--into) and validate the options; exit 2 on bad input. The API key is read
   from the environment variable named by --api-key-env, never taken on the command line.
2. Check both ends: the project's destination (S3 or local) and the Roboflow project.
3. Start the import session: --sync runs it here; otherwise queue it for the cluster.
4. Follow it with a progress bar (unless --no-wait); print the summary and the failed image ids
   with their errors; exit 0 / 1 (images failed: `retry <session>`) / 2.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects.errors import UploaderError
from projects.models import ConfigHistory, Project
from sessions_app import following, importing, kinds, pipeline, starting
from sessions_app.models import SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Import a Roboflow project's images, with annotations as JSON, into a project's S3 or local storage."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workspace", required=True, help="Roboflow workspace (url slug)")
        parser.add_argument("--project", required=True, help="Roboflow project (url slug)")
        parser.add_argument("--into", required=True, metavar="PROJECT",
                            help="name of our project whose destination (S3 or local) receives the images")
        parser.add_argument("--api-key-env", default=importing.DEFAULT_API_KEY_ENV, metavar="NAME",
                            help="environment variable holding the Roboflow API key (default %(default)s)")
        parser.add_argument("--concurrency", type=int, default=importing.DEFAULT_CONCURRENCY,
                            help="concurrent fetches (default %(default)s)")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--no-wait", action="store_true", help="only queue the import")
        mode.add_argument("--sync", action="store_true", help="run in this process, without a cluster")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(name=options["into"]).first()
        if project is None:
            raise CommandError(f"no project named {options['into']!r}", returncode=2)
        try:
            params = importing.import_params(project, options["workspace"], options["project"],
                                             api_key_env=options["api_key_env"], concurrency=options["concurrency"])
            session = starting.start(project, kind=kinds.IMPORT, params=params, created_by="command line",
                                     config_source=ConfigHistory.Source.COMMAND_LINE,
                                     enqueue_scan=not options["sync"])
        except UploaderError as exc:
            raise CommandError(safe(exc), returncode=2)
        if options["sync"]:
            pipeline.run_here(session)
        self.stdout.write(f"import session {session.pk} started: {session.admin_url()}")
        if options["no_wait"]:
            return
        session = following.follow(session, self.stderr._out, progress=not options["no_progress"])
        self.report(session)

    def report(self, session: SyncSession) -> None:
        code = following.report(session, self.stdout, self.stderr, limit=50, retry_hint=True)
        if code:
            sys.exit(code)
