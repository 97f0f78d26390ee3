"""`manage.py prune --skipped --older-than AGE [--dry-run]`: old rows of skipped files go, their
counts stay on their sessions."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sessions_app import files
from sessions_app.models import FileStatus, FileUpload, SyncSession
from tests.conftest import manage


@pytest.fixture
def old_session(make_project, tmp_path):
    """A session as the old planner left it: one row per skipped file, 40 days ago."""
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = SyncSession.objects.create(project=project, status="completed")
    long_ago = timezone.now() - timedelta(days=40)
    rows = [("a.wav", FileStatus.UPLOADED, ""), ("b.wav", FileStatus.SKIPPED, "uploaded earlier"),
            ("c.wav", FileStatus.SKIPPED, "uploaded earlier"), ("d.jpg", FileStatus.SKIPPED, "duplicate")]
    for path, status, reason in rows:
        FileUpload.objects.create(session=session, project=project, relative_path=path, remote_key=path, size=10,
                                  status=status, skip_reason=reason, created_at=long_ago)
    files.recount(session)
    return session


def prune(*args: str) -> str:
    out = io.StringIO()
    call_command("prune", *args, stdout=out)
    return out.getvalue()


def test_prunes_old_skipped_rows_and_keeps_the_sessions_counts(old_session):
    before = (old_session.found_count, old_session.skipped_count, old_session.bytes_total)

    out = prune("--skipped", "--older-than", "30d")

    assert out.strip() == "pruned 3 skipped rows of 1 sessions (older than 30d); their counts stay on the sessions"
    assert list(old_session.files.values_list("relative_path", flat=True)) == ["a.wav"]
    old_session.refresh_from_db()
    assert old_session.skips == {"uploaded earlier": 2, "duplicate": 1} and old_session.skipped_bytes == 30
    files.recount(old_session)
    assert (old_session.found_count, old_session.skipped_count, old_session.bytes_total) == before == (4, 3, 40)


def test_dry_run_counts_and_deletes_nothing(old_session):
    out = prune("--skipped", "--older-than", "30d", "--dry-run")

    assert "dry run: 3 skipped rows of 1 sessions are older than 30d; nothing was deleted" in out
    assert old_session.files.count() == 4


def test_rows_younger_than_the_age_stay(old_session):
    assert prune("--skipped", "--older-than", "6w").startswith("pruned 0 skipped rows")
    assert old_session.files.count() == 4


@pytest.mark.parametrize("args, message", [
    (["--older-than", "30d"], "say what to prune: --skipped"),
    (["--skipped", "--older-than", "30 days"], "--older-than: expected a number and a unit"),
])
def test_bad_arguments_are_errors(db, args, message):
    with pytest.raises(CommandError, match=message) as exc:
        prune(*args)
    assert exc.value.returncode == 2


def test_exit_codes_of_the_command_line(transactional_db):
    assert manage("prune", "--skipped", "--older-than", "30d").returncode == 0
    bad = manage("prune", "--skipped", "--older-than", "soon")
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    assert manage("prune", "--skipped").returncode == 2  # --older-than is required
