"""Scan problems are session problems: every error of `find` or `scandir` is counted and logged with
its path, and a folder that could not be read ends the session `completed_with_errors` (exit 1).

An unreadable folder needs a user that the permission bits stop: `upload` runs as `nobody`
(setpriv), over a source and destination the test makes for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sessions_app.models import SessionStatus, SyncSession
from tests.conftest import ROOT, database_url, manage, manage_env, write_files


@pytest.fixture
def shared(tmp_path: Path):
    """A folder nobody can reach (pytest's own tmp_path sits in a folder only root may enter)."""
    folder = Path(tempfile.mkdtemp(prefix="uploader-nobody-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _open_db_to_nobody() -> None:
    """On SQLite, nobody must write the test database."""
    url = database_url()
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.chmod(0o666)
        for suffix in ("-wal", "-shm", "-journal"):
            if Path(f"{db}{suffix}").exists():
                Path(f"{db}{suffix}").chmod(0o666)


def _upload_as_nobody(tmp_path: Path, source: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(0o777)
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    _open_db_to_nobody()
    command = [shutil.which("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
               sys.executable, str(ROOT / "manage.py"), "upload", "--sync", "--no-progress", "--project", "scan-problems",
               "--source-dir", str(source), "--destination-type", "local", "--dest-path", str(dest), *args]
    return subprocess.run(command, cwd=ROOT, env=manage_env(HOME=str(data), DATA_DIR=str(data), **env),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("method", ["find", "scandir"])
def test_an_unreadable_folder_ends_the_session_with_errors_and_exit_1(transactional_db, shared, method):
    source = shared / "source"
    write_files(source, {"a.wav": "a", "open/b.wav": "b", "locked/c.wav": "c"})
    for folder in (source, source / "open"):
        folder.chmod(0o755)
    (source / "locked").chmod(0o700)  # root's; nobody cannot list it

    result = _upload_as_nobody(shared, source, SCAN_METHOD=method)

    assert result.returncode == 1, result.stdout + result.stderr
    session = SyncSession.objects.get()
    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    assert (session.uploaded_count, session.failed_count) == (2, 0)
    assert (session.unread_folders, session.scan_problems) == (1, 1)
    assert "locked/: cannot list folder: Permission denied" in session.log
    assert "1 folders could not be read: their files were not synced" in result.stderr


@pytest.mark.parametrize("method", ["find", "scandir"])
def test_fifos_and_symlink_loops_get_a_log_line(transactional_db, tmp_path, source, method):
    write_files(source, {"a.wav": "a"})
    os.mkfifo(source / "pipe.wav")
    os.symlink("loop2", source / "loop1")
    os.symlink("loop1", source / "loop2")

    result = manage("upload", "--sync", "--no-progress", "--project", "fifo", "--source-dir", str(source),
                    "--destination-type", "local", "--dest-path", str(tmp_path / "dest"),
                    env=manage_env(SCAN_METHOD=method))

    assert result.returncode == 0, result.stderr  # nothing unseen: logged and counted, not errors
    session = SyncSession.objects.get()
    assert session.status == SessionStatus.COMPLETED
    assert session.scan_problems == 3
    for line in ("pipe.wav: skipped: a FIFO (named pipe)", "loop1: symlink loop", "loop2: symlink loop"):
        assert line in session.log


def test_with_follow_symlinks_a_fifo_and_a_loop_back_to_a_folder_get_a_log_line(transactional_db, tmp_path, source):
    write_files(source, {"sub/a.wav": "a"})
    os.mkfifo(source / "sub" / "pipe.wav")
    os.symlink("..", source / "sub" / "up")  # back to the root: a loop

    result = manage("upload", "--sync", "--no-progress", "--config", str(_config(tmp_path, source)))

    assert result.returncode == 0, result.stderr
    session = SyncSession.objects.get()
    assert session.uploaded_count == 1
    assert "sub/pipe.wav: skipped: a FIFO (named pipe)" in session.log
    assert "sub/up: skipped: symlink loop (a folder already walked)" in session.log


def _config(tmp_path: Path, source: Path) -> Path:
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"project": "follow", "source_dir": str(source), "follow_symlinks": True,
                                "destination": {"type": "local", "path": str(tmp_path / "dest")}}))
    return path
