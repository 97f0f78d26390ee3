"""Start a sync session from a config file and command-line overrides, and follow it.

1. Load and validate the config (file < environment < command line); exit 2 on bad input.
2. --dry-run: scan and plan, print what would be uploaded, change nothing.
3. Create or update the project, record its ConfigHistory, check source and destination.
4. Start the session: --sync runs it here; otherwise queue it for the cluster.
5. Follow it with a progress bar (unless --no-wait) and exit 0 / 1 (files failed) / 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from projects import config as config_mod
from projects.config import ConfigError
from projects.models import ConfigHistory, Project
from sessions_app import following, pipeline, planning, scanning, tasks, uploading
from sessions_app.models import SyncSession
from sessions_app.terminal import safe


def add_config_arguments(parser: CommandParser) -> None:
    parser.add_argument("--config", help="JSON config file")
    parser.add_argument("--project", help="project name")
    parser.add_argument("--source-dir")
    parser.add_argument("--destination-type", choices=["s3", "local", "sftp", "roboflow"])
    parser.add_argument("--bucket")
    parser.add_argument("--prefix")
    parser.add_argument("--region")
    parser.add_argument("--endpoint-url")
    parser.add_argument("--aws-profile")
    parser.add_argument("--dest-path", help="target folder of a local destination")
    parser.add_argument("--workers", type=int, dest="upload_workers", help="concurrent transfers per task")
    parser.add_argument("--tasks", type=int, dest="upload_tasks", help="parallel upload tasks")
    parser.add_argument("--max-retries", type=int)
    parser.add_argument("--extensions", help="comma-separated, e.g. .wav,.jpg")
    parser.add_argument("--exclude", action="append", help="glob pattern; repeatable")
    parser.add_argument("--notify-url")


def overrides_from(options: dict[str, Any]) -> dict[str, Any]:
    dest = {
        "type": options.get("destination_type"),
        "bucket": options.get("bucket"),
        "prefix": options.get("prefix"),
        "region": options.get("region"),
        "endpoint_url": options.get("endpoint_url"),
        "aws_profile": options.get("aws_profile"),
        "path": options.get("dest_path"),
    }
    out = {
        "project": options.get("project"),
        "source_dir": options.get("source_dir"),
        "upload_workers": options.get("upload_workers"),
        "upload_tasks": options.get("upload_tasks"),
        "max_retries": options.get("max_retries"),
        "exclude": options.get("exclude"),
        "notify_url": options.get("notify_url"),
        "destination": dest,
    }
    if options.get("extensions"):
        out["extensions"] = [e.strip() for e in options["extensions"].split(",") if e.strip()]
    return out


def load_project_config(options: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The validated config and its ConfigHistory source; bad input is a CommandError (exit 2)."""
    try:
        clean = config_mod.load(options.get("config"), overrides_from(options))
        config_mod.check_source_dir(clean["source_dir"])
    except ConfigError as exc:
        raise CommandError(safe(exc), returncode=2)
    source = ConfigHistory.Source.FILE if options.get("config") else ConfigHistory.Source.COMMAND_LINE
    return clean, source


class Command(BaseCommand):
    help = "Upload a folder to a destination: one sync session, followed with a progress bar."

    def add_arguments(self, parser: CommandParser) -> None:
        add_config_arguments(parser)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--no-wait", action="store_true", help="only queue the session")
        mode.add_argument("--sync", action="store_true", help="run in this process, without a cluster")
        mode.add_argument("--dry-run", action="store_true", help="list what would be uploaded; change nothing")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        clean, source = load_project_config(options)
        if options["dry_run"]:
            return self.dry_run(clean)
        project, config = config_mod.apply(clean, source, created_by="command line")
        session = start(project, config, sync=options["sync"])
        self.stdout.write(f"session {session.pk} started: {session.admin_url()}")
        if options["no_wait"]:
            return
        session = following.follow(session, self.stderr._out, progress=not options["no_progress"])
        self.report(session)

    def report(self, session: SyncSession) -> None:
        code = following.report(session, self.stdout, self.stderr)
        if code:
            sys.exit(code)

    def dry_run(self, clean: dict[str, Any]) -> None:
        dest_opts = dict(clean["destination"])
        kind = dest_opts.pop("type")
        project = Project(name=clean["project"], source_dir=clean["source_dir"], destination_kind=kind,
                          destination_options=dest_opts, extensions=clean["extensions"], exclude=clean["exclude"],
                          follow_symlinks=clean["follow_symlinks"])
        try:
            dest = pipeline.preflight(project)
        except pipeline.StartError as exc:
            raise CommandError(safe(exc), returncode=2)
        existing = Project.objects.filter(name=project.name).values_list("id", flat=True).first() or 0
        remote = planning.remote_cursor(dest)
        entries = scanning.scan(project.source_dir,
                                scanning.ScanFilter(project.extensions or list(dest.default_extensions),
                                                    project.exclude),
                                sort=not remote.empty, follow_symlinks=project.follow_symlinks,
                                on_problem=lambda p, m: self.stderr.write(f"warning: {safe(p)}: {safe(m)}"))
        upload = skip = nbytes = 0
        with dest:
            for batch in planning.plan(entries, dest, existing, 0, remote):
                for d in batch:
                    if d.skip_reason:
                        skip += 1
                        continue
                    upload += 1
                    nbytes += d.entry.size
                    self.stdout.write(f"upload {safe(d.entry.relative_path)} -> {safe(d.key)} ({d.entry.size} bytes)")
        self.stdout.write(f"dry run: {upload} files ({following.human_size(nbytes)}) would be uploaded, "
                          f"{skip} skipped; nothing was changed")


def start(project: Project, config: ConfigHistory, *, sync: bool, created_by: str = "command line",
          **session_fields: Any) -> SyncSession:
    """Check, create and start a session; raises CommandError(2) on bad input. session_fields
    (e.g. auto_retry) are set before any worker can see the session."""
    try:
        pipeline.preflight(project).close()
    except pipeline.StartError as exc:
        raise CommandError(safe(exc), returncode=2)
    session = pipeline.create_session(project, config, created_by=created_by)
    if session_fields:
        SyncSession.objects.filter(pk=session.pk).update(**session_fields)
        session.refresh_from_db()
    if sync:
        run_here(session)
        return session
    try:
        tasks.enqueue_scan(session.pk)
    except tasks.EnqueueError as exc:
        session.mark_failed(str(exc))
        raise CommandError(safe(exc), returncode=2)
    return session


def run_here(session: SyncSession) -> None:
    """--sync: the scan in one thread, uploads in another, while the caller follows."""
    session.mark_scanning()
    following.run_in_thread(functools.partial(pipeline.scan_session, session.pk, start_uploads=False))
    # One drain suffices: it waits for rows while the scan runs and ends the session after it.
    following.run_in_thread(uploading.drain, session.pk)
