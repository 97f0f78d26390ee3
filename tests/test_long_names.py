"""Long file names through a whole session: the temporary name never makes a name too long, and a
name the destination cannot take fails once, permanently, saying why."""

from __future__ import annotations

from projects.destinations.base import TEMP_FOLDER
from sessions_app.models import FileStatus
from tests.conftest import run_session_inline, write_files

LONG = "n" * 246 + ".wav"  # 250 bytes: within the limit, but not with ".uploading-<pid>-<n>" added


def test_a_file_with_a_250_byte_name_is_uploaded_at_the_first_attempt(make_project, source, tmp_path):
    write_files(source, {f"deep/{LONG}": b"long", "short.wav": b"s"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")}, max_retries=3)

    session = run_session_inline(project)

    row = session.files.get(relative_path=f"deep/{LONG}")
    assert (row.status, row.attempts, row.last_error) == (FileStatus.UPLOADED, 1, "")
    assert (tmp_path / "out" / "deep" / LONG).read_bytes() == b"long"
    assert list((tmp_path / "out" / TEMP_FOLDER).iterdir()) == []


def test_a_name_too_long_for_the_destination_fails_once_and_permanently(make_project, source, tmp_path):
    # U+0958 is excluded from composition: NFC (what keys are) spells it in two characters, so this
    # 255-byte source name is a 510-byte key: "File name too long" from the real name, not ours.
    name = "\u0958" * 85
    write_files(source, {name: b"a"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")}, max_retries=3)

    session = run_session_inline(project)

    row = session.files.get()
    assert (row.status, row.attempts, row.error_permanent) == (FileStatus.FAILED, 1, True)
    assert row.last_error.startswith("file name too long for the destination (its longest name has 510 bytes")
