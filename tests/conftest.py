from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_for  # noqa: F401  (tests import it from here)

pytest_plugins = ["tests.servers.s3"]
for _name in ("sshd", "roboflow_api", "receiver", "browser"):
    if (Path(__file__).parent / "servers" / f"{_name}.py").exists():
        pytest_plugins.append(f"tests.servers.{_name}")

ROOT = Path(__file__).resolve().parent.parent


def write_files(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    d = tmp_path / "source"
    d.mkdir()
    return d


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 64 KiB (a tmpfs mounted for the test; the tests run as root): writes
    beyond it fail with ENOSPC, as on a full disk. `grow(tiny_disk)` frees room."""
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)


@pytest.fixture
def make_project(db, source: Path) -> Callable[..., Any]:
    from projects import config

    def make(destination: dict[str, Any], **fields: Any):
        raw = {"project": fields.pop("project", "test-project"), "source_dir": str(fields.pop("source_dir", source)),
               "destination": destination, **fields}
        project, _ = config.apply(config.validate(raw), "command_line", "test")
        return project

    return make


def run_session_inline(project, **params: Any) -> Any:
    """Scan, plan and upload a session in this process, to the end: what `upload --sync` does, but
    with every file through the upload path (the scan sends none itself; see test_sending.py)."""
    from sessions_app import pipeline, starting, uploading

    session = starting.create_session(project, created_by="test", params=params)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def database_url() -> str:
    """The URL of the test database this pytest process uses, for subprocesses."""
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def manage_env(**extra: str) -> dict[str, str]:
    from django.conf import settings

    # Same SECRET_KEY as this process: django-q2 signs the tasks it queues with it.
    env = {**os.environ, "DATABASE_URL": database_url(), "DEBUG": "1", "SECRET_KEY": settings.SECRET_KEY}
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a management command in a subprocess against the test database."""
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env or manage_env(),
                          capture_output=True, text=True, timeout=timeout)


class Cluster:
    """A real `manage.py qcluster` in its own process group."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env, self.log_path, self.proc = env, log_path, None

    def start(self) -> Cluster:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "qcluster"], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL the whole group: the main process and every worker, mid-task."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM to the main process only (a group-wide SIGTERM hangs django-q2's main
        process), then make sure nothing of the group is left."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def cluster_factory(transactional_db, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    started: list[Cluster] = []

    def start(**env: str) -> Cluster:
        c = Cluster(manage_env(Q_WORKERS="2", Q_POLL="0.05", **env), tmp_path / f"qcluster-{len(started)}.log")
        started.append(c.start())
        return c

    yield start
    for c in started:
        c.stop()
        print(f"--- {c.log_path.name} ---\n{c.output()[-5000:]}")  # shown when the test fails
