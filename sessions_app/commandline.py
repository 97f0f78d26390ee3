"""The config options the upload and master commands share: arguments, overrides, loading."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import CommandError, CommandParser

from sessions_app.terminal import safe
from projects import config as config_mod
from projects.config import ConfigError
from projects.models import ConfigHistory
from sessions_app.models import SyncSession


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
    parser.add_argument("--destination-option", action="append", default=[], metavar="NAME.OPTION=VALUE",
                        help="an option of the destination named NAME (of `destinations`); repeatable")
    parser.add_argument("--workers", type=int, dest="upload_workers", help="concurrent transfers per task")
    parser.add_argument("--tasks", type=int, dest="upload_tasks", help="parallel upload tasks")
    parser.add_argument("--max-retries", type=int)
    parser.add_argument("--extensions", help="comma-separated, e.g. .wav,.jpg")
    parser.add_argument("--exclude", action="append", help="glob pattern; repeatable")
    parser.add_argument("--notify-url")


def add_start_arguments(parser: CommandParser) -> None:
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="if another session of the project is running to the same destination, wait for it "
                             "to end (default: refuse, exit 2)")
    parser.add_argument("--save-config", action="store_true",
                        help="store the config as the project's even if the run is refused before it starts")


def waiting_note(out) -> Callable[[SyncSession], None]:
    """What --wait-for-lock prints while it waits for the session holding the lease."""
    return lambda holder: out.write(f"waiting for session {holder.pk} ({holder.status}) to end: one session per "
                                    f"project and destination")


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
    if options.get("destination_option"):
        out[config_mod.NAMED] = config_mod.named_overrides(options["destination_option"])
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
