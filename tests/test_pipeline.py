"""Scan -> plan -> upload in one process against the loopback S3 server and local folders."""

from __future__ import annotations

import os
import threading
import unicodedata
from pathlib import Path

import pytest
from django.db import connection

from sessions_app import errors, pipeline, planning, starting, uploading
from sessions_app.models import CatalogEntry, FileStatus, FileUpload, SessionStatus, SyncSession
from tests.conftest import run_session_inline, wait_for, write_files
from tests.sessions_helpers import synced_after_a_file_vanished


@pytest.fixture(autouse=True)
def fast_backoff(settings):
    settings.UPLOAD_RETRY_BASE_SECONDS = 0.01
    settings.UPLOAD_FLUSH_SECONDS = 0.1


def _s3(endpoint: str, bucket: str, prefix: str = "data") -> dict:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint}


def _statuses(session: SyncSession) -> dict[str, str]:
    return dict(session.files.values_list("relative_path", "status"))


def test_transient_s3_faults_are_retried_until_uploaded(make_project, source, s3_server, fault_proxy):
    write_files(source, {"slow.wav": "1", "err.wav": "2", "drop.wav": "3"})
    fault_proxy.fail_next(2, "503", path_contains="slow.wav")
    fault_proxy.fail_next(1, "500", path_contains="err.wav")
    fault_proxy.fail_next(1, "drop", path_contains="drop.wav")
    project = make_project(_s3(fault_proxy.endpoint_url, s3_server.make_bucket()), max_retries=3)

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED
    assert set(_statuses(session).values()) == {FileStatus.UPLOADED}
    attempts = dict(session.files.values_list("relative_path", "attempts"))
    assert attempts == {"slow.wav": 3, "err.wav": 2, "drop.wav": 2}


def test_transient_fault_beyond_max_retries_fails_with_the_last_error(make_project, source, s3_server, fault_proxy):
    write_files(source, {"busy.wav": "1"})
    fault_proxy.fail_next(10, "500", path_contains="busy.wav")
    project = make_project(_s3(fault_proxy.endpoint_url, s3_server.make_bucket()), max_retries=2)

    session = run_session_inline(project)

    f = session.files.get()
    assert (session.status, f.status, f.attempts, f.error_permanent) == (
        SessionStatus.COMPLETED_WITH_ERRORS, FileStatus.FAILED, 3, False)
    assert f.last_error.startswith("gave up after 3 attempts:") and "InternalError" in f.last_error
    assert session.failed_count == 1


def test_access_denied_is_permanent_and_not_retried(make_project, source, s3_server, fault_proxy):
    write_files(source, {"secret.wav": "1", "fine.wav": "2"})
    fault_proxy.fail_next(1, "403", path_contains="secret.wav")
    project = make_project(_s3(fault_proxy.endpoint_url, s3_server.make_bucket()))

    session = run_session_inline(project)

    f = session.files.get(relative_path="secret.wav")
    assert (f.status, f.error_permanent, f.attempts) == (FileStatus.FAILED, True, 1)
    assert "403 AccessDenied" in f.last_error
    assert fault_proxy.count("PUT", "secret.wav") == 1
    assert session.uploaded_count == 1 and session.failed_count == 1


def test_file_deleted_between_scan_and_upload_fails_permanently_as_not_found(make_project, source, tmp_path):
    session = synced_after_a_file_vanished(make_project, source, tmp_path)

    gone = session.files.get(relative_path="gone.wav")
    assert (gone.status, gone.error_permanent) == (FileStatus.FAILED, True)
    assert gone.last_error == f"file not found: {source / 'gone.wav'}"
    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    assert session.files.count() == 2  # no record lost


def test_file_that_grew_after_the_scan_is_recorded_with_its_new_size(make_project, source, s3_server):
    write_files(source, {"grow.wav": "short"})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(s3_server.endpoint_url, bucket))
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    (source / "grow.wav").write_text("much longer than before")

    uploading.drain(session.pk)

    session.refresh_from_db()
    f = session.files.get()
    assert (f.status, f.size) == (FileStatus.UPLOADED, 23)
    assert f.note == "size changed since scan: 5 -> 23"
    assert s3_server.client.head_object(Bucket=bucket, Key="data/grow.wav")["ContentLength"] == 23
    assert session.bytes_uploaded == 23


def test_empty_files_and_awkward_names_upload_with_nfc_keys(make_project, source, s3_server):
    decomposed = unicodedata.normalize("NFD", "café été.wav")
    names = ["empty.wav", "with space.wav", "#?%&+.wav", "日本語/音.wav", decomposed]
    write_files(source, {n: ("" if n == "empty.wav" else n) for n in names})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(s3_server.endpoint_url, bucket, prefix="pre"))

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED, session.files.exclude(status="uploaded").values("last_error")
    keys = {o["Key"]: o["Size"] for o in s3_server.client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys["pre/empty.wav"] == 0
    assert {"pre/with space.wav", "pre/#?%&+.wav", "pre/日本語/音.wav", "pre/café été.wav"} <= set(keys)


def test_second_session_counts_unchanged_files_and_stores_rows_only_for_work(make_project, source, s3_server):
    write_files(source, {f"d/{i}.wav": str(i) for i in range(20)})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(s3_server.endpoint_url, bucket))
    first = run_session_inline(project)
    assert first.uploaded_count == 20

    write_files(source, {"d/new.wav": "n"})
    (source / "d" / "3.wav").write_text("changed")

    second = run_session_inline(project)

    assert _statuses(second) == {"d/new.wav": FileStatus.UPLOADED, "d/3.wav": FileStatus.UPLOADED}
    assert second.skips == {planning.SKIP_UNCHANGED: 19}
    assert (second.found_count, second.uploaded_count, second.skipped_count) == (21, 2, 19)
    assert second.status == SessionStatus.COMPLETED


def test_a_check_of_the_destination_adopts_objects_already_there(make_project, source, s3_server):
    write_files(source, {"a.wav": "a"})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(s3_server.endpoint_url, bucket))
    run_session_inline(project)
    # Put by someone else with the same size: already at the destination.
    write_files(source, {"there.wav": "xyz"})
    s3_server.client.put_object(Bucket=bucket, Key="data/there.wav", Body=b"abc")

    second = run_session_inline(project, check_destination=True)

    assert second.files.count() == 0
    assert second.skips == {planning.SKIP_UNCHANGED: 1, planning.SKIP_REMOTE: 1}
    assert "destination check asked for: listing it" in second.log


def test_hundred_thousand_files_in_one_folder_are_planned_in_full(make_project, source, tmp_path):
    flat = source / "flat"
    flat.mkdir()
    for i in range(100_000):
        (flat / f"{i:06d}.wav").touch()
    out = tmp_path / "out" / "flat"
    out.mkdir(parents=True)
    for i in range(0, 100_000, 2):  # half of them are already at the destination
        (out / f"{i:06d}.wav").touch()
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()

    stats = pipeline.scan_session(session.pk, start_uploads=False)

    session.refresh_from_db()
    assert (stats.files, stats.pending, stats.skipped) == (100_000, 50_000, 50_000)
    assert (session.found_count, session.pending_count, session.skipped_count) == (100_000, 50_000, 50_000)
    assert session.skips == {planning.SKIP_REMOTE: 50_000}
    assert FileUpload.objects.filter(session=session).count() == 50_000  # rows only for the work
    assert session.files.get(relative_path="flat/000001.wav").status == FileStatus.PENDING
    assert not session.files.filter(relative_path="flat/000002.wav").exists()
    adopted = CatalogEntry.objects.get(key="flat/000002.wav")
    assert (adopted.session_id, adopted.size, adopted.mtime) == (
        session.pk, 0, round((source / "flat" / "000002.wav").stat().st_mtime, 6))


def test_scan_problems_are_logged_not_fatal(make_project, source, tmp_path):
    write_files(source, {"ok.wav": "1"})
    os.symlink(source / "missing.wav", source / "broken.wav")
    project = make_project({"type": "local", "path": str(tmp_path / "out")})

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED
    assert session.scan_problems == 1
    assert "broken.wav: broken symlink" in session.log
    assert list(session.files.values_list("relative_path", flat=True)) == ["ok.wav"]


def test_missing_source_folder_fails_the_session_with_a_clear_error(make_project, source, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    source.rmdir()
    session = starting.create_session(project)

    pipeline.scan_session(session.pk)

    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED
    assert session.error == f"source_dir: folder not found: {source}"


def test_uploads_start_while_the_scan_is_still_running(transactional_db, make_project, source, tmp_path):
    write_files(source, {"first.wav": "1"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    FileUpload.objects.create(session=session, project=project, relative_path="first.wav", remote_key="first.wav",
                              size=1)

    def drain() -> None:
        uploading.drain(session.pk)
        connection.close()

    worker = threading.Thread(target=drain)
    worker.start()
    wait_for(lambda: FileUpload.objects.filter(status=FileStatus.UPLOADED).exists(), what="upload during scan")
    assert SyncSession.objects.get(pk=session.pk).status == SessionStatus.SCANNING
    assert worker.is_alive()  # it waits for more rows rather than ending the session

    session.mark_scan_finished()
    worker.join(30)
    assert not worker.is_alive()
    assert SyncSession.objects.get(pk=session.pk).status == SessionStatus.COMPLETED


def test_a_claimed_row_is_not_claimed_twice(make_project, source, tmp_path):
    write_files(source, {f"{i}.wav": "x" for i in range(10)})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)

    a = uploading.Drainer(session, deadline=None).claim(6)
    b = uploading.Drainer(session, deadline=None).claim(6)

    assert len(a) == 6 and len(b) == 4
    assert not {r.pk for r in a} & {r.pk for r in b}


def test_stale_session_is_resumed_by_the_sweep_and_checks_interrupted_rows(make_project, source, tmp_path, settings):
    write_files(source, {"a.wav": "a", "b.wav": "b"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    uploading.Drainer(session, deadline=None).claim(2)  # then the worker "dies"
    SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=None, created_at="2020-01-01T00:00:00Z")

    lines = pipeline.sweep()

    assert lines == [f"session {session.pk}: uploads restarted; 2 interrupted uploads will be verified"]
    assert set(session.files.values_list("status", "verify_remote")) == {(FileStatus.PENDING, True)}
    uploading.drain(session.pk)
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED and session.uploaded_count == 2


def test_resume_refuses_a_session_that_is_alive(make_project, source, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    with pytest.raises(errors.ResumeError, match="is alive"):
        pipeline.resume(session)


def test_interrupted_upload_already_at_the_destination_is_not_sent_again(make_project, source, s3_server,
                                                                          fault_proxy):
    write_files(source, {"done.wav": "12345"})
    bucket = s3_server.make_bucket()
    s3_server.client.put_object(Bucket=bucket, Key="data/done.wav", Body=b"12345")
    project = make_project(_s3(fault_proxy.endpoint_url, bucket))
    session = starting.create_session(project)
    session.mark_scanning()
    session.mark_scan_finished()
    FileUpload.objects.create(session=session, project=project, relative_path="done.wav", remote_key="done.wav",
                              size=5, status=FileStatus.PENDING, verify_remote=True)

    uploading.drain(session.pk)

    f = FileUpload.objects.get()
    assert (f.status, f.note) == (FileStatus.UPLOADED, "verified at destination after restart")
    assert fault_proxy.count("PUT", "done.wav") == 0 and fault_proxy.count("HEAD", "done.wav") == 1


def test_paths_stay_in_the_database_not_memory_between_batches(make_project, source, tmp_path, settings):
    settings.SCAN_BATCH_SIZE = 7
    write_files(source, {f"{i:03d}.wav": "x" for i in range(50)})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = run_session_inline(project)
    assert (session.found_count, session.uploaded_count) == (50, 50)
    assert sorted(p.name for p in Path(tmp_path / "out").glob("*.wav"))[0] == "000.wav"


def test_scan_batches_start_small_then_double_up_to_the_batch_size(monkeypatch):
    monkeypatch.setattr(planning, "FIRST_BATCH", 4)
    batches = list(planning._walk((i for i in range(50)), 16))
    assert [len(b) for b in batches] == [4, 8, 16, 16, 6]
    assert [i for b in batches for i in b] == list(range(50))


def test_the_walker_stays_at_most_a_batch_and_the_queue_ahead_of_the_writer(monkeypatch):
    # What the scan holds must not grow with the tree: the walker, however much quicker than the
    # writer, has pulled at most the batch being assembled, QUEUE_FILES and its own chunk ahead.
    monkeypatch.setattr(planning, "FIRST_BATCH", 4)
    monkeypatch.setattr(planning, "QUEUE_FILES", 8)
    total, taken, pulled, ahead = 200, [0], [0], []

    def entries():
        for i in range(total):
            pulled[0] += 1
            ahead.append(pulled[0] - taken[0])
            yield i

    got = []
    for batch in planning._walk(entries(), 16):
        got += batch
        taken[0] += len(batch)
        # The walker fills what it may before the writer takes the next batch.
        wait_for(lambda: pulled[0] >= min(total, taken[0] + 8 + 4), timeout=10, what="the walker to fill its queue")
    assert got == list(range(total))
    assert max(ahead) <= 16 + 8 + 4


def test_a_scan_run_again_counts_the_files_the_session_uploaded_once(make_project, source, tmp_path):
    write_files(source, {f"f{i}.wav": str(i) for i in range(6)})
    write_files(tmp_path / "dest", {"there.wav": "t"})  # adopted from the first sync's listing
    write_files(source, {"there.wav": "t"})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    session = run_session_inline(project)
    assert (session.found_count, session.uploaded_count, session.skipped_count) == (7, 6, 1)
    SyncSession.objects.filter(pk=session.pk).update(status=SessionStatus.SCANNING)  # as a resumed scan

    pipeline.scan_session(session.pk, start_uploads=False)

    session.refresh_from_db()
    # The uploaded files are rows of the session already, not skips as well; the adopted one a skip again.
    assert (session.found_count, session.uploaded_count, session.skipped_count) == (7, 6, 1)
    assert session.files.count() == 6
