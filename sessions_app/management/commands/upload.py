"""Start a sync session from a config file and command-line overrides, and follow it.

1. Load and validate the config (file < environment < command line); exit 2 on bad input.
2. --dry-run: scan and plan, print what would be uploaded, change nothing.
3. Check source and destination, take the project's lease (one session per project and
   destination: refused, exit 2, or --wait-for-lock), then create or update the project and
   record its ConfigHistory with the session: a refused run changes nothing (unless --save-config).
4. Start the session: --sync runs it here; otherwise queue it for the cluster.
5. Follow it with a progress bar (unless --no-wait) and exit 0 / 1 (files failed, folders
   unreadable) / 2.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects import config as config_mod
from projects.errors import UploaderError
from sessions_app import following, pipeline, starting
from sessions_app.commandline import add_config_arguments, add_start_arguments, load_project_config, waiting_note
from sessions_app.models import SyncSession
from sessions_app.terminal import safe


class Command(BaseCommand):
    help = "Upload a folder to a destination: one sync session, followed with a progress bar."

    def add_arguments(self, parser: CommandParser) -> None:
        add_config_arguments(parser)
        add_start_arguments(parser)
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
        params = {"check_destination": True} if options["check_destination"] else {}
        if options["sync"]:
            params["run_here"] = True  # its end-of-session notification is sent from here too
        try:
            session = starting.start_from_config(clean, source, created_by="command line", params=params,
                                                 save_config=options["save_config"],
                                                 wait_for_lock=options["wait_for_lock"],
                                                 on_wait=waiting_note(self.stderr), enqueue_scan=not options["sync"])
        except UploaderError as exc:
            raise CommandError(safe(exc), returncode=2)
        workers = pipeline.run_here(session) if options["sync"] else []
        self.stdout.write(f"session {session.pk} started: {session.admin_url()}")
        if options["no_wait"]:
            return
        session = following.follow(session, self.stderr._out, progress=not options["no_progress"], workers=workers)
        for worker in workers:  # the end's follow-ups (the notification) run in the last one
            worker.join()
        self.report(session)

    def report(self, session: SyncSession) -> None:
        code = following.report(session, self.stdout, self.stderr)
        if code:
            sys.exit(code)

    def dry_run(self, clean: dict[str, Any], check_destination: bool) -> None:
        project = config_mod.unsaved_project(clean)
        try:
            decisions = pipeline.preview(project, on_problem=lambda p, m: self.stderr.write(f"warning: {safe(p)}: {safe(m)}"),
                                         check_destination=check_destination)
            upload = skip = nbytes = 0
            for d in decisions:
                if not d.key:  # a name that cannot be a key: the session would fail its row
                    self.stderr.write(f"warning: {safe(d.entry.relative_path)}: {safe(d.skip_reason)}")
                    continue
                if d.skip_reason:
                    skip += 1
                    continue
                upload += 1
                nbytes += d.entry.size
                where = f"{d.destination}: " if d.destination else ""
                self.stdout.write(f"upload {safe(d.entry.relative_path)} -> {where}{safe(d.key)} ({d.entry.size} bytes)")
        except UploaderError as exc:
            raise CommandError(safe(exc), returncode=2)
        self.stdout.write(f"dry run: {upload} files ({following.human_size(nbytes)}) would be uploaded, "
                          f"{skip} skipped; nothing was changed")
