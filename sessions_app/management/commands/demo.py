"""Set up the embedded demo: an admin login, sample files and a project that syncs them
into a local archive folder. Safe to run again."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from projects import config


class Command(BaseCommand):
    help = "Create the demo admin login, sample files and the demo project."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD"))
        parser.add_argument("--files", type=int, default=300)

    def handle(self, *args: Any, **options: Any) -> None:
        base = Path(settings.DATA_DIR) / "demo"
        source = base / "source"
        made = make_sample_files(source, options["files"])
        clean = config.validate({
            "project": "demo",
            "source_dir": str(source),
            "destination": {"type": "local", "path": str(base / "archive")},
            "extensions": [".wav", ".jpg", ".csv"],
            "exclude": ["**/tmp/**"],
        })
        project, _ = config.apply(clean, "command_line", created_by="demo")
        password = self.ensure_admin(options["username"], options["password"])
        self.stdout.write(f"demo project {project.name!r}: {made} sample files in {source}")
        self.stdout.write(f"admin login: {options['username']} / {password}")

    def ensure_admin(self, username: str, password: str | None) -> str:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is not None and not password:
            return "(unchanged; pass --password to reset it)"
        password = password or secrets.token_urlsafe(9)
        user = user or User(username=username, is_staff=True, is_superuser=True)
        user.set_password(password)
        user.save()
        return password


def make_sample_files(source: Path, count: int) -> int:
    """Sensor-like sample files: a few folders of days, mixed kinds, one excluded tmp folder."""
    made = 0
    for i in range(count):
        day = source / f"2026-11-{1 + i % 5:02d}"
        day.mkdir(parents=True, exist_ok=True)
        kind = (".wav", ".jpg", ".csv")[i % 3]
        path = day / f"sensor-{i:04d}{kind}"
        if not path.exists():
            path.write_bytes(os.urandom(512 + (i * 37) % 4096))
            made += 1
    (source / "tmp").mkdir(exist_ok=True)
    (source / "tmp" / "partial.wav").write_bytes(b"not finished")
    return made
