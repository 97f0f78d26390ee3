"""One active session per project and destination (the lease, sessions_app/starting.py): a second
start is refused naming the running session, or waits for it with --wait-for-lock; a holder whose
workers are gone is taken over; the upload queue takes turns per file instead."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from sessions_app import lifecycle, retrying, starting
from sessions_app.errors import RetryError
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from tests.conftest import ROOT, manage, manage_env, wait_for, write_files


def _args(source: Path, dest: Path, *extra: str) -> list[str]:
    return ["upload", "--no-progress", "--project", "leased", "--source-dir", str(source), "--destination-type",
            "local", "--dest-path", str(dest), *extra]


@pytest.fixture
def running(transactional_db, tmp_path, source) -> SyncSession:
    """A session that holds the lease: queued, no cluster to run it."""
    write_files(source, {f"f{i:03d}.wav": f"audio {i}" for i in range(20)})
    result = manage(*_args(source, tmp_path / "dest", "--no-wait"))
    assert result.returncode == 0, result.stderr
    return SyncSession.objects.get()


def test_a_second_start_is_refused_with_exit_2_naming_the_running_session(running, tmp_path, source):
    result = manage(*_args(source, tmp_path / "dest", "--sync"))

    assert result.returncode == 2
    assert f"project leased: session {running.pk} (sync of local " in result.stderr
    assert "is running to file://" in result.stderr
    assert "wait for it (--wait-for-lock) or cancel it" in result.stderr
    assert "Traceback" not in result.stderr
    assert SyncSession.objects.count() == 1


def test_another_destination_of_the_project_is_another_lease(running, tmp_path, source):
    result = manage(*_args(source, tmp_path / "elsewhere", "--sync"))
    assert result.returncode == 0, result.stderr
    assert SyncSession.objects.filter(status=SessionStatus.COMPLETED).count() == 1


def test_wait_for_lock_waits_for_the_running_session_then_runs(running, tmp_path, source):
    err = tmp_path / "waiting.err"
    with open(err, "w") as stderr:
        waiting = subprocess.Popen([sys.executable, str(ROOT / "manage.py"),
                                    *_args(source, tmp_path / "dest", "--sync", "--wait-for-lock")],
                                   cwd=ROOT, env=manage_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            wait_for(lambda: f"waiting for session {running.pk} (queued) to end" in err.read_text(), 60,
                     what="the second run to wait")
            assert SyncSession.objects.count() == 1
            lifecycle.cancel(running)
            out, _ = waiting.communicate(timeout=120)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
    assert waiting.returncode == 0, err.read_text()
    second = SyncSession.objects.exclude(pk=running.pk).get()
    assert (second.status, second.uploaded_count) == (SessionStatus.COMPLETED, 20)


def test_a_holder_whose_workers_are_gone_is_cancelled_and_its_lease_taken(running, tmp_path, source, settings):
    long_ago = timezone.now() - timedelta(seconds=settings.SESSION_STALE_SECONDS + 60)
    SyncSession.objects.filter(pk=running.pk).update(created_at=long_ago, heartbeat_at=long_ago)

    result = manage(*_args(source, tmp_path / "dest", "--sync"))

    assert result.returncode == 0, result.stderr
    running.refresh_from_db()
    assert running.status == SessionStatus.CANCELLED
    assert "while another session asked for its lease: cancelled" in running.log
    assert SyncSession.objects.get(status=SessionStatus.COMPLETED).uploaded_count == 20


def test_runs_started_at_once_never_transfer_a_file_twice(transactional_db, tmp_path, source):
    write_files(source, {f"d{i // 50}/f{i:04d}.wav": f"audio {i}" for i in range(400)})
    runs = [subprocess.Popen([sys.executable, str(ROOT / "manage.py"), *_args(source, tmp_path / "dest", "--sync")],
                             cwd=ROOT, env=manage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    results = [(r.wait(180), r.stderr.read()) for r in runs]

    assert all(code in (0, 2) for code, _ in results), results
    assert any(code == 0 for code, _ in results), [err[-1500:] for _, err in results]
    for code, err in results:
        if code == 2:
            assert "one session per project and destination" in err, err[-3000:]
    uploaded = FileUpload.objects.filter(status=FileStatus.UPLOADED)
    assert uploaded.count() == 400
    assert uploaded.values("relative_path").distinct().count() == 400
    # One run did the work: the others were refused, or came after it and found nothing to do.
    assert [s.uploaded_count for s in SyncSession.objects.filter(uploaded_count__gt=0)] == [400]


def test_the_upload_queue_holds_no_lease_and_runs_beside_a_sync(running):
    queue = starting.stream_session(running.project)
    assert queue.pk != running.pk and queue.lease is None and queue.status == SessionStatus.UPLOADING


def test_a_retry_round_waits_while_another_session_holds_the_lease(running, tmp_path, source):
    lifecycle.cancel(running)
    second = starting.start(running.project, created_by="test", enqueue_scan=False)
    running.refresh_from_db()
    assert running.status == SessionStatus.CANCELLED and second.lease == running.lease
    SyncSession.objects.filter(pk=running.pk).update(scan_finished_at=timezone.now())
    FileUpload.objects.create(session=running, project=running.project, relative_path="x.wav",
                              status=FileStatus.CANCELLED)

    with pytest.raises(RetryError, match=f"session {running.pk}: another session of project leased is running"):
        retrying.queue_retry_round(running)
    running.refresh_from_db()
    assert running.status == SessionStatus.CANCELLED


def test_the_admin_start_is_refused_too_and_records_no_config(running):
    from projects.models import ConfigHistory

    from sessions_app.errors import LeaseHeld

    before = ConfigHistory.objects.count()
    with pytest.raises(LeaseHeld, match=f"session {running.pk} .* one session per project and destination"):
        starting.start(running.project, created_by="admin")
    assert ConfigHistory.objects.count() == before
    assert SyncSession.objects.count() == 1
