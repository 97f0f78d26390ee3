"""Start a sync session from a config file and command-line overrides, and follow it.

1. Load and validate the config (file < environment < command line); exit 2 on bad input.
2. --dry-run: scan and plan, print what would be uploaded, change nothing.
3. Create or update the project, record its ConfigHistory, check source and destination.
4. Start the session: --sync runs it here; otherwise queue it for the cluster.
5. Follow it with a progress bar (unless --no-wait) and exit 0 / 1 (files failed) / 2.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects import config as config_mod
from projects.models import Project
from projects.errors import UploaderError
from sessions_app import following, pipeline, starting
from sessions_app.commandline import add_config_arguments, load_project_config
from sessions_app.models import SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Upload a folder to a destination: one sync session, followed with a progress bar."

    def add_arguments(self, parser: CommandParser) -> None:
        add_config_arguments(parser)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--no-wait", action="store_true", help="only queue the session")
        mode.add_argument("--sync", action="store_true", help="run in this process, without a cluster")
        mode.add_argument("--dry-run", action="store_true", help="list what would be uploaded; change nothing")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--check-destination", action="store_true",
                            help="list the destination and reconcile the catalog with it before planning")

    def handle(self, *args: Any, **options: Any) -> None:
        clean, source = load_project_config(options)
        if options["dry_run"]:
            return self.dry_run(clean, options["check_destination"])
        project, config = config_mod.apply(clean, source, created_by="command line")
        params = {"check_destination": True} if options["check_destination"] else {}
        try:
            session = starting.start(project, config=config, params=params, created_by="command line",
                                     enqueue_scan=not options["sync"])
        except UploaderError as exc:
            raise CommandError(safe(exc), returncode=2)
        if options["sync"]:
            pipeline.run_here(session)
        self.stdout.write(f"session {session.pk} started: {session.admin_url()}")
        if options["no_wait"]:
            return
        session = following.follow(session, self.stderr._out, progress=not options["no_progress"])
        self.report(session)

    def report(self, session: SyncSession) -> None:
        code = following.report(session, self.stdout, self.stderr)
        if code:
            sys.exit(code)

    def dry_run(self, clean: dict[str, Any], check_destination: bool) -> None:
        dest_opts = dict(clean["destination"])
        kind = dest_opts.pop("type")
        project = Project(name=clean["project"], source_dir=clean["source_dir"], destination_kind=kind,
                          destination_options=dest_opts, extensions=clean["extensions"], exclude=clean["exclude"],
                          follow_symlinks=clean["follow_symlinks"],
                          check_destination_every=clean["check_destination_every"])
        try:
            decisions = pipeline.preview(project, on_problem=lambda p, m: self.stderr.write(f"warning: {safe(p)}: {safe(m)}"),
                                         check_destination=check_destination)
            upload = skip = nbytes = 0
            for d in decisions:
                if d.skip_reason:
                    skip += 1
                    continue
                upload += 1
                nbytes += d.entry.size
                self.stdout.write(f"upload {safe(d.entry.relative_path)} -> {safe(d.key)} ({d.entry.size} bytes)")
        except UploaderError as exc:
            raise CommandError(safe(exc), returncode=2)
        self.stdout.write(f"dry run: {upload} files ({following.human_size(nbytes)}) would be uploaded, "
                          f"{skip} skipped; nothing was changed")
