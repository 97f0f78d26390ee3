"""The catalog: what a project knows is at each destination. Re-syncs are planned against it,
the destination is listed only on a first sync or when asked, and every upload writes it."""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path

import django.apps
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import cancelling, catalog, pipeline, planning, starting, transferring, uploading
from sessions_app.models import Catalog, CatalogEntry, FileStatus, FileUpload, SessionStatus, SyncSession
from tests.conftest import run_session_inline, write_files
from tests.sessions_helpers import remote_keys

pytestmark = pytest.mark.usefixtures("quick")

LIST = "list-type=2"


@pytest.fixture
def quick(settings) -> None:
    settings.UPLOAD_RETRY_BASE_SECONDS = 0.001
    settings.UPLOAD_FLUSH_SECONDS = 0.05


def _s3(proxy, bucket: str, prefix: str = "data") -> dict:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": proxy.endpoint_url}


def _entries(project) -> dict[str, tuple[int, float | None]]:
    return dict((k, (s, m)) for k, s, m in CatalogEntry.objects.filter(catalog__project=project)
                .values_list("key", "size", "mtime"))


def _mtime(path: Path) -> float:
    return round(path.stat().st_mtime, 6)


def test_a_no_op_resync_writes_no_file_rows_and_sends_no_list_request(make_project, source, s3_server, fault_proxy):
    write_files(source, {f"d{i % 3}/{i}.wav": str(i) for i in range(30)})
    project = make_project(_s3(fault_proxy, s3_server.make_bucket()))
    first = run_session_inline(project)
    assert (first.uploaded_count, fault_proxy.count("GET", LIST)) == (30, 1)  # a first sync lists
    fault_proxy.reset()

    second = run_session_inline(project)

    assert second.status == SessionStatus.COMPLETED
    assert FileUpload.objects.filter(session=second).count() == 0
    assert (second.found_count, second.skipped_count, second.skips) == (30, 30, {planning.SKIP_UNCHANGED: 30})
    assert second.bytes_total == first.bytes_total and second.progress == 100.0
    assert (fault_proxy.count("GET", LIST), fault_proxy.count("PUT"), fault_proxy.count("HEAD", "data/")) == (0, 0, 0)
    assert FileUpload.objects.count() == 30  # only the first sync's work


def test_a_file_changed_since_its_entry_is_uploaded_again_and_its_entry_updated(make_project, source, tmp_path):
    write_files(source, {"same.wav": "1", "grown.wav": "22", "touched.wav": "333"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    first = run_session_inline(project)
    write_files(source, {"grown.wav": "22 and more"})
    os.utime(source / "touched.wav", (1_700_000_000, 1_700_000_000))  # same size, other mtime

    second = run_session_inline(project)

    assert dict(second.files.values_list("relative_path", "status")) == {
        "grown.wav": FileStatus.UPLOADED, "touched.wav": FileStatus.UPLOADED}
    assert second.skips == {planning.SKIP_UNCHANGED: 1}
    assert (tmp_path / "out" / "grown.wav").read_text() == "22 and more"
    entries = {e.key: e for e in CatalogEntry.objects.all()}
    assert (entries["grown.wav"].size, entries["grown.wav"].session_id) == (11, second.pk)
    assert entries["touched.wav"].mtime == 1_700_000_000.0
    assert entries["same.wav"].session_id == first.pk


def test_an_object_deleted_behind_our_back_is_found_by_a_check_and_uploaded_again(
        make_project, source, s3_server, fault_proxy):
    write_files(source, {"keep.wav": "k", "lost.wav": "l"})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(fault_proxy, bucket))
    run_session_inline(project)
    s3_server.client.delete_object(Bucket=bucket, Key="data/lost.wav")

    trusting = run_session_inline(project)  # the catalog is trusted: nothing to do
    assert (trusting.files.count(), trusting.skips) == (0, {planning.SKIP_UNCHANGED: 2})
    fault_proxy.reset()
    checked = run_session_inline(project, check_destination=True)

    assert fault_proxy.count("GET", LIST) == 1
    assert dict(checked.files.values_list("relative_path", "status")) == {"lost.wav": FileStatus.UPLOADED}
    assert "1 missing (uploaded again)" in checked.log and "missing at destination: lost.wav" in checked.log
    assert remote_keys(s3_server, bucket) == {"data/keep.wav": 1, "data/lost.wav": 1}
    assert set(_entries(project)) == {"keep.wav", "lost.wav"}


def test_a_check_adopts_objects_already_there_and_reports_extras(make_project, source, s3_server, fault_proxy):
    write_files(source, {"ours.wav": "o"})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(fault_proxy, bucket))
    run_session_inline(project)
    write_files(source, {"theirs.wav": "same size"})
    s3_server.client.put_object(Bucket=bucket, Key="data/theirs.wav", Body=b"SAME SIZE")
    s3_server.client.put_object(Bucket=bucket, Key="data/stray.bin", Body=b"not ours")
    fault_proxy.reset()

    checked = run_session_inline(project, check_destination=True)

    assert checked.files.count() == 0 and fault_proxy.count("PUT") == 0
    assert checked.skips == {planning.SKIP_UNCHANGED: 1, planning.SKIP_REMOTE: 1}
    assert "1 objects at the destination match no source file" in checked.log and "extra: stray.bin" in checked.log
    entries = _entries(project)
    assert entries["theirs.wav"] == (9, _mtime(source / "theirs.wav"))  # adopted: vouches for the file now
    assert entries["stray.bin"] == (8, None)
    fault_proxy.reset()
    again = run_session_inline(project)
    assert again.skips == {planning.SKIP_UNCHANGED: 2} and fault_proxy.count("GET", LIST) == 0


def test_a_first_sync_to_an_empty_destination_does_not_look_for_extras(make_project, source, tmp_path):
    write_files(source, {f"{i}.wav": "x" for i in range(3)})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})

    with CaptureQueriesContext(connection) as queries:
        first = run_session_inline(project)

    assert first.uploaded_count == 3 and "first sync to this destination: listing it" in first.log
    assert "destination listed: 0 objects" in first.log and "match no source file" not in first.log
    # The look for extras reads every entry of the catalog the sync has just written.
    assert not [q["sql"] for q in queries if '"mtime" IS NULL' in q["sql"]]


def test_the_destination_is_listed_again_when_check_destination_every_has_passed(make_project, source, tmp_path,
                                                                                  s3_server, fault_proxy):
    write_files(source, {"a.wav": "a"})
    project = make_project(_s3(fault_proxy, s3_server.make_bucket()), check_destination_every=7)
    run_session_inline(project)
    fault_proxy.reset()
    run_session_inline(project)
    assert fault_proxy.count("GET", LIST) == 0
    Catalog.objects.filter(project=project).update(listed_at=timezone.now() - timezone.timedelta(days=8))

    late = run_session_inline(project)

    assert fault_proxy.count("GET", LIST) == 1
    assert "over check_destination_every (7 days) ago: listing it" in late.log
    assert Catalog.objects.get(project=project).listed_at > timezone.now() - timezone.timedelta(minutes=5)


def test_a_changed_source_folder_plans_every_file_as_new_and_says_so(make_project, source, tmp_path):
    write_files(source, {"a.wav": "a", "b/c.wav": "c"})
    out = {"type": "local", "path": str(tmp_path / "out")}
    project = make_project(out)
    run_session_inline(project)
    moved = tmp_path / "renamed"
    source.rename(moved)
    project = make_project(out, source_dir=moved)

    session = run_session_inline(project)

    assert f"source folder changed from {source} to {moved}: every file is planned as new" in session.log
    assert dict(session.files.values_list("relative_path", "status")) == {
        "a.wav": FileStatus.UPLOADED, "b/c.wav": FileStatus.UPLOADED}
    assert Catalog.objects.get(project=project).source_dir == str(moved)
    assert run_session_inline(project).skips == {planning.SKIP_UNCHANGED: 2}


def test_a_new_destination_starts_a_catalog_of_its_own(make_project, source, tmp_path):
    write_files(source, {"a.wav": "a"})
    project = make_project({"type": "local", "path": str(tmp_path / "one")})
    run_session_inline(project)
    project = make_project({"type": "local", "path": str(tmp_path / "one"), "prefix": "sub"})

    session = run_session_inline(project)

    assert dict(session.files.values_list("relative_path", "status")) == {"a.wav": FileStatus.UPLOADED}
    assert (tmp_path / "one" / "sub" / "a.wav").exists()
    assert sorted(Catalog.objects.values_list("destination", flat=True)) == [
        f"file://{tmp_path / 'one'}", f"file://{tmp_path / 'one' / 'sub'}"]


def test_two_sessions_of_one_project_at_once_upload_each_object_once(transactional_db, make_project, source,
                                                                       s3_server, fault_proxy):
    write_files(source, {f"f{i:03d}.wav": f"{i}" for i in range(60)})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(fault_proxy, bucket), upload_workers=3)
    sessions = [starting.create_session(project) for _ in range(2)]
    for s in sessions:
        s.mark_scanning()
        pipeline.scan_session(s.pk, start_uploads=False)  # both planned everything: nothing was there yet

    def drain(session_id: int) -> None:
        try:
            uploading.drain(session_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=drain, args=(s.pk,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert not any(t.is_alive() for t in threads)
    puts = fault_proxy.count_by_path("PUT")
    assert len(puts) == 60 and set(puts.values()) == {1}
    for s in sessions:
        s.refresh_from_db()
    assert {s.status for s in sessions} == {SessionStatus.COMPLETED}
    assert sum(s.uploaded_count for s in sessions) == 60
    assert sum(s.files.filter(skip_reason=catalog.SKIP_ARRIVED).count() for s in sessions) == 60
    entries = CatalogEntry.objects.filter(catalog__project=project)
    assert entries.count() == 60
    uploaded_by = dict(FileUpload.objects.filter(status=FileStatus.UPLOADED).values_list("remote_key", "session_id"))
    assert dict(entries.values_list("key", "session_id")) == uploaded_by


def test_a_crash_between_upload_and_record_is_settled_by_the_next_syncs_head_check(
        make_project, source, s3_server, fault_proxy):
    write_files(source, {"z.wav": "z"})
    bucket = s3_server.make_bucket()
    project = make_project(_s3(fault_proxy, bucket))
    run_session_inline(project)  # the destination was listed then: it is trusted from now on
    write_files(source, {"a.wav": "aaa", "b.wav": "bbb", "c.wav": "ccc"})
    crashed = starting.create_session(project)
    crashed.mark_scanning()
    pipeline.scan_session(crashed.pk, start_uploads=False)
    drainer = uploading.Drainer(crashed, deadline=None)
    dest = project.destination()
    drainer.catalog_id = catalog.open_for(project, dest).pk
    for row in drainer.claim(2):  # uploaded, then the worker died before recording it
        assert transferring.transfer(dest, row, project.source_dir, 1).status == FileStatus.UPLOADED
    SyncSession.objects.filter(pk=crashed.pk).update(heartbeat_at=None, created_at="2020-01-01T00:00:00Z")
    assert cancelling.cancel(crashed) == "cancelled"  # an operator gave up on it
    fault_proxy.reset()

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED and session.uploaded_count == 3
    assert fault_proxy.count("PUT") == 1 and fault_proxy.count("HEAD", ".wav") == 2  # only c.wav was sent
    notes = dict(session.files.values_list("relative_path", "note"))
    assert notes["a.wav"] == notes["b.wav"] == "verified at destination after restart"
    assert set(_entries(project)) == {"a.wav", "b.wav", "c.wav", "z.wav"}
    assert remote_keys(s3_server, bucket) == {"data/a.wav": 3, "data/b.wav": 3, "data/c.wav": 3, "data/z.wav": 1}
    crashed.refresh_from_db()
    assert crashed.uploaded_count == 0  # counted once, by the session that recorded it


def test_awkward_file_names_survive_the_bulk_insert(make_project, source, tmp_path):
    names = ["tab\there.wav", "back\\slash.wav", "new\nline.wav", "quote'\".wav", "null-ish \\N.wav"]
    write_files(source, {n: n for n in names})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})

    session = run_session_inline(project)

    assert sorted(session.files.values_list("relative_path", flat=True)) == sorted(names)
    assert session.status == SessionStatus.COMPLETED
    assert sorted(_entries(project)) == sorted(names)
    assert run_session_inline(project).skips == {planning.SKIP_UNCHANGED: 5}


def test_names_that_normalisation_moves_out_of_key_order_are_still_found(make_project, source, tmp_path):
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café.wav")  # its key (NFC) sorts after caff.wav, its path before
    write_files(source, {decomposed: "x", "cafe.wav": "y", "caff.wav": "z"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    run_session_inline(project)

    again = run_session_inline(project)

    assert again.files.count() == 0 and again.skips == {planning.SKIP_UNCHANGED: 3}


def test_the_upload_queue_answers_already_uploaded_for_a_file_a_sync_uploaded(make_project, source, tmp_path):
    from sessions_app.queueing import submit

    write_files(source, {"cam/1.jpg": "jpeg"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    run_session_inline(project)

    answer = submit(project, str(source / "cam/1.jpg"))

    assert (answer.queued, answer.status, answer.message) == (True, 200, "already uploaded")
    write_files(source, {"cam/1.jpg": "changed"})
    assert submit(project, str(source / "cam/1.jpg")).status == 202


def test_the_migration_builds_the_catalog_from_earlier_uploads(make_project, source, tmp_path):
    write_files(source, {"up.wav": "u", "dup.jpg": "d", "failed.wav": "f"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    for path, status, reason in (("up.wav", FileStatus.UPLOADED, ""), ("dup.jpg", FileStatus.SKIPPED, "duplicate"),
                                 ("failed.wav", FileStatus.FAILED, "")):
        FileUpload.objects.create(session=session, project=project, relative_path=path, remote_key=path, size=1,
                                  mtime=_mtime(source / path), status=status, skip_reason=reason,
                                  checksum="etag" if path == "up.wav" else "")
    migration = importlib.import_module("sessions_app.migrations.0003_catalog")

    migration.build_catalogs(django.apps.apps, None)

    known = Catalog.objects.get(project=project)
    assert (known.destination, known.source_dir, known.listed_at) == (f"file://{tmp_path / 'out'}", str(source), None)
    entries = {e.key: e for e in known.entries.all()}
    assert set(entries) == {"up.wav", "dup.jpg"}
    assert (entries["up.wav"].checksum, entries["up.wav"].session_id) == ("etag", session.pk)
    (tmp_path / "out").mkdir()
    for name in ("up.wav", "dup.jpg"):
        (tmp_path / "out" / name).write_text("x")  # what the old syncs put there
    resync = run_session_inline(project)
    assert dict(resync.files.values_list("relative_path", "status")) == {"failed.wav": FileStatus.UPLOADED}
    assert resync.skips == {planning.SKIP_UNCHANGED: 2}
