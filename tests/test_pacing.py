"""Session-wide pacing (sessions_app/pacing.py): a destination that throttles slows the session
down instead of failing its files; the rate comes back up when the throttling stops."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sessions_app import pipeline, uploading
from sessions_app.models import FileStatus, FileUpload, SessionPace, SyncSession
from tests.conftest import grow, manage, write_files

RATE_LINE = re.compile(r"(throttled|throttle easing): sending at ([0-9.]+)/s")


def _config(tmp_path: Path, source: Path, destination: dict, **extra) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"project": "paced", "source_dir": str(source), "destination": destination,
                                **extra}))
    return str(path)


def rates_logged(session: SyncSession) -> list[tuple[str, float]]:
    return [(m.group(1), float(m.group(2))) for m in RATE_LINE.finditer(session.log)]


def test_s3_throttle_storm_slows_the_session_and_fails_no_file(transactional_db, tmp_path, source, s3_server,
                                                                fault_proxy):
    """Issue 16 #1: 200 SlowDowns then 40 PUT/s failed 87 of 1,200 files with max_retries 3."""
    write_files(source, {f"d{i % 10}/f{i:04d}.wav": f"{i}" for i in range(1200)})
    bucket = s3_server.make_bucket()
    fault_proxy.throttle(first=200, rate=40, answer="503")
    cfg = _config(tmp_path, source, {"type": "s3", "bucket": bucket, "endpoint_url": fault_proxy.endpoint_url},
                  max_retries=3, upload_workers=8)
    result = manage("upload", "--sync", "--config", cfg, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "; throttled: sending at " in result.stderr  # the progress bar says it
    session = SyncSession.objects.get()
    assert (session.uploaded_count, session.failed_count) == (1200, 0)
    assert fault_proxy.count("PUT", outcome="503") >= 200  # the storm (and the 40/s limit, if the rate met it)
    rates = rates_logged(session)
    lowered = [rate for what, rate in rates if what == "throttled"]
    assert lowered and any(what == "throttle easing" for what, _ in rates), session.log
    lowest = lowered.index(min(lowered))
    assert any(rate > min(lowered) for _, rate in rates[lowest + 1:]), session.log  # down, then up again
    assert SessionPace.objects.get(session=session).throttled_count == fault_proxy.count("PUT", outcome="503")
    attempts = FileUpload.objects.filter(session=session).values_list("attempts", flat=True)
    assert max(attempts) > 4  # throttled attempts went beyond max_retries + 1 without failing the file


def test_throttled_attempts_do_not_count_as_retries(transactional_db, tmp_path, source, s3_server, fault_proxy):
    write_files(source, {"a.wav": "a"})
    bucket = s3_server.make_bucket()
    fault_proxy.fail_next(6, "503", method="PUT")
    cfg = _config(tmp_path, source, {"type": "s3", "bucket": bucket, "endpoint_url": fault_proxy.endpoint_url},
                  max_retries=0)
    result = manage("upload", "--no-progress", "--sync", "--config", cfg)
    assert result.returncode == 0, result.stderr
    row = FileUpload.objects.get()
    assert (row.status, row.attempts) == (FileStatus.UPLOADED, 7)


def test_other_errors_still_use_max_retries(transactional_db, tmp_path, source, s3_server, fault_proxy):
    write_files(source, {"a.wav": "a"})
    bucket = s3_server.make_bucket()
    fault_proxy.fail_next(5, "500", method="PUT")
    cfg = _config(tmp_path, source, {"type": "s3", "bucket": bucket, "endpoint_url": fault_proxy.endpoint_url},
                  max_retries=1)
    result = manage("upload", "--no-progress", "--sync", "--config", cfg)
    assert result.returncode == 1
    row = FileUpload.objects.get()
    assert (row.status, row.attempts) == (FileStatus.FAILED, 2)
    assert "gave up after 2 attempts" in row.last_error


def _throttled_forever(tmp_path, source, s3_server, fault_proxy, files: int, patience: int) -> str:
    """A config of `files` files to an S3 that answers every PUT 503 SlowDown."""
    write_files(source, {f"f{i}.wav": "x" for i in range(files)})
    bucket = s3_server.make_bucket()
    fault_proxy.throttle(first=10**6, rate=0, answer="503")
    return _config(tmp_path, source, {"type": "s3", "bucket": bucket, "endpoint_url": fault_proxy.endpoint_url},
                   throttle_patience=patience)


def _planned_and_paused(cfg: str) -> SyncSession:
    """A session of the config queued, planned here, and drained here until it pauses."""
    result = manage("upload", "--no-progress", "--no-wait", "--config", cfg)
    assert result.returncode == 0, result.stderr
    session = SyncSession.objects.get()
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    assert uploading.drain(session.pk) == "paused"
    session.refresh_from_db()
    return session


def test_a_sync_command_whose_session_pauses_exits_1_naming_resume(transactional_db, tmp_path, source, s3_server,
                                                                    fault_proxy):
    cfg = _throttled_forever(tmp_path, source, s3_server, fault_proxy, files=3, patience=1)
    result = manage("upload", "--no-progress", "--sync", "--config", cfg, timeout=120)
    session = SyncSession.objects.get()
    assert result.returncode == 1, result.stderr
    assert f"session {session.pk} stopped before its end (paused: " in result.stderr
    assert f"python manage.py resume {session.pk}" in result.stderr
    assert (session.status, session.pending_count, session.uploaded_count) == ("uploading", 3, 0)


def test_a_file_throttled_beyond_patience_pauses_the_session(transactional_db, tmp_path, source, s3_server,
                                                              fault_proxy):
    cfg = _throttled_forever(tmp_path, source, s3_server, fault_proxy, files=5, patience=2)
    session = _planned_and_paused(cfg)
    assert session.status == "uploading"
    assert (session.pending_count, session.failed_count, session.uploaded_count) == (5, 0, 0)
    assert f"paused: " in session.log and f"python manage.py resume {session.pk}" in session.log
    # Resuming lifts the pause; with the throttling over, everything goes up.
    fault_proxy.reset()
    pipeline.resume(session)
    assert not SessionPace.objects.get(session=session).paused_at
    assert uploading.drain(session.pk) == "done"
    session.refresh_from_db()
    assert (session.status, session.uploaded_count) == ("completed", 5)


def _into_a_full_disk(tmp_path, source, tiny_disk) -> str:
    """Three files of 40 KB into a 64 KiB file system: the first fits, the second does not."""
    write_files(source, {f"f{i}.bin": b"x" * 40_000 for i in range(3)})
    return _config(tmp_path, source, {"type": "local", "path": str(tiny_disk)}, max_retries=5)


def test_a_full_destination_pauses_the_session_at_once_and_resume_finishes_it(transactional_db, tmp_path, source,
                                                                             tiny_disk):
    session = _planned_and_paused(_into_a_full_disk(tmp_path, source, tiny_disk))
    # Not retried file by file with backoff (max_retries 5), not failed: back to pending, the log says why.
    assert (session.uploaded_count, session.pending_count, session.failed_count) == (1, 2, 0)
    assert max(FileUpload.objects.values_list("attempts", flat=True)) == 1
    assert "destination is full" in session.log and "No space left on device" in session.log
    assert f"python manage.py resume {session.pk}" in session.log
    grow(tiny_disk)
    pipeline.resume(session)
    assert uploading.drain(session.pk) == "done"
    session.refresh_from_db()
    assert (session.status, session.uploaded_count) == ("completed", 3)
    assert sorted(p.name for p in tiny_disk.iterdir() if p.is_file()) == ["f0.bin", "f1.bin", "f2.bin"]


def test_a_sync_command_into_a_full_destination_exits_1_naming_resume(transactional_db, tmp_path, source,
                                                                      tiny_disk):
    cfg = _into_a_full_disk(tmp_path, source, tiny_disk)
    result = manage("upload", "--no-progress", "--sync", "--config", cfg, timeout=120)
    session = SyncSession.objects.get()
    assert result.returncode == 1, result.stderr
    assert f"session {session.pk} stopped before its end (paused" in result.stderr
    assert f"python manage.py resume {session.pk}" in result.stderr
    assert (session.uploaded_count, session.pending_count, session.failed_count) == (1, 2, 0)
    assert "destination is full" in session.log
