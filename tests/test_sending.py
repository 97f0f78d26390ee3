"""The plan sends small files itself (`upload --sync`, a local destination): each row written once,
settled; what it cannot send goes pending to the upload tasks."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from projects.destinations.local import INLINE_BELOW
from sessions_app import catalog, files, pipeline, sending, starting, transferring, uploading
from sessions_app.files import Outcome
from sessions_app.models import CatalogEntry, FileStatus, FileUpload, SessionStatus, SyncSession
from sessions_app.queueing import queue_upload
from tests.conftest import wait_for, write_files


@pytest.fixture(autouse=True)
def quick(settings) -> None:
    settings.UPLOAD_FLUSH_SECONDS = 0.05
    settings.QUEUE_LINGER_SECONDS = 0


def run_sending(project) -> SyncSession:
    """What upload --sync does, one step after the other: the scan (sending), then the drain."""
    session = starting.create_session(project, created_by="test")
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False, send=True)
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def test_small_files_are_sent_by_the_scan_and_their_rows_written_once(make_project, source, tmp_path):
    write_files(source, {f"d{i % 3}/f{i:03d}.bin": f"body {i}" for i in range(30)})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})

    session = run_sending(project)

    assert session.status == SessionStatus.COMPLETED
    assert (session.found_count, session.uploaded_count, session.pending_count) == (30, 30, 0)
    assert session.bytes_uploaded == session.bytes_total == sum(len(f"body {i}") for i in range(30))
    rows = list(session.files.values_list("status", "attempts", "claimed_at", "claim_token"))
    # Never claimed: the row went in once, uploaded, with the one attempt that sent it.
    assert set(rows) == {(FileStatus.UPLOADED, 1, None, None)}
    assert (tmp_path / "dest" / "d1" / "f001.bin").read_text() == "body 1"
    entries = CatalogEntry.objects.filter(catalog__project=project)
    assert entries.count() == 30 and set(entries.values_list("session_id", flat=True)) == {session.pk}
    assert project.throughput.get().uploaded == 30


def test_a_file_too_big_to_send_inline_goes_to_the_upload_tasks(make_project, source, tmp_path):
    write_files(source, {"small.bin": "s", "big.bin": b"b" * INLINE_BELOW})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})

    session = run_sending(project)

    claimed = dict(session.files.values_list("relative_path", "claimed_at"))
    assert claimed["small.bin"] is None and claimed["big.bin"] is not None  # claimed by the drain
    assert set(session.files.values_list("status", flat=True)) == {FileStatus.UPLOADED}
    assert (tmp_path / "dest" / "big.bin").stat().st_size == INLINE_BELOW


def test_a_file_refused_for_good_is_a_failed_row_written_once(make_project, source, tmp_path):
    write_files(source, {"a/b.txt": "under a folder the destination has as a file", "c.txt": "fine"})
    dest = tmp_path / "dest"
    write_files(dest, {"a": "a file where the key needs a folder"})
    project = make_project({"type": "local", "path": str(dest)})

    session = run_sending(project)

    failed = session.files.get(relative_path="a/b.txt")
    assert (failed.status, failed.error_permanent, failed.claimed_at) == (FileStatus.FAILED, True, None)
    assert "cannot write" in failed.last_error
    assert session.files.get(relative_path="c.txt").status == FileStatus.UPLOADED
    assert (session.status, session.failed_count, session.uploaded_count) == (
        SessionStatus.COMPLETED_WITH_ERRORS, 1, 1)


def test_while_another_session_of_the_project_runs_nothing_is_sent_by_the_scan(make_project, source, tmp_path):
    write_files(source, {"queued.bin": "q", "x.bin": "x", "y.bin": "y"})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    assert queue_upload(project, source / "queued.bin")  # the project's upload queue: a running session

    session = run_sending(project)

    assert session.status == SessionStatus.COMPLETED
    rows = session.files.values_list("status", "claimed_at")
    assert len(rows) == 3 and all(status == FileStatus.UPLOADED and claimed for status, claimed in rows)
    assert "another session of the project" in session.log


def test_a_scan_run_again_leaves_the_rows_it_sent_alone_and_counts_them_once(make_project, source, tmp_path):
    write_files(source, {f"f{i}.bin": str(i) for i in range(12)})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    session = starting.create_session(project, created_by="test")
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False, send=True)
    # As after a crash that cut off the files sent last: their rows and entries never went in.
    lost = list(session.files.order_by("relative_path").values_list("relative_path", flat=True)[:4])
    session.files.filter(relative_path__in=lost).delete()
    CatalogEntry.objects.filter(key__in=lost).delete()
    SyncSession.objects.filter(pk=session.pk).update(status=SessionStatus.SCANNING)

    pipeline.scan_session(session.pk, start_uploads=False, send=True)

    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert session.files.count() == 12 and set(session.files.values_list("status", flat=True)) == {"uploaded"}
    assert (session.found_count, session.uploaded_count) == (12, 12)
    assert CatalogEntry.objects.filter(catalog__project=project).count() == 12


def test_parts_are_bounded_by_files_and_bytes(monkeypatch):
    monkeypatch.setattr(sending, "PART_FILES", 3)
    monkeypatch.setattr(sending, "PART_BYTES", 100)
    size_at = sending.SIZE_AT
    rows = [tuple(60 if i == size_at else 0 for i in range(size_at + 1)) for _ in range(3)]
    rows += [tuple(1 if i == size_at else 0 for i in range(size_at + 1)) for _ in range(4)]
    parts = [len(p) for p in sending.parts(rows)]

    assert parts == [2, 3, 2]  # 60 + 60 bytes, then three files, then the rest
    assert [len(p) for p in sending.parts([])] == [0]


def advisory_locks(granted: bool) -> int:
    """Sending locks in this test's database (pg_locks shows every database's: another test worker's
    plan may hold one in its own at the same moment)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted = %s "
                       "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                       [catalog.SENDING_LOCKS, granted])
        return cursor.fetchone()[0]


def others_held_off() -> bool:
    """Would another session's claim wait now? PostgreSQL: a plan's sending lock is held; SQLite:
    the database's write lock is (a part is sent inside the transaction of its rows)."""
    if connection.vendor == "postgresql":
        return advisory_locks(True) > 0
    other = sqlite3.connect(connection.settings_dict["NAME"], timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.rollback()
        return False
    except sqlite3.OperationalError:  # database is locked
        return True
    finally:
        other.close()


def test_with_its_recorder_thread_the_plan_writes_every_part_and_lets_the_claims_through(
        transactional_db, make_project, source, tmp_path, settings):
    write_files(source, {f"f{i:03d}.bin": str(i) for i in range(25)})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    settings.SCAN_BATCH_SIZE = 10  # several batches, each its parts

    session = run_sending(project)

    assert (session.status, session.found_count, session.uploaded_count) == (SessionStatus.COMPLETED, 25, 25)
    assert set(session.files.values_list("claimed_at", flat=True)) == {None}
    assert CatalogEntry.objects.filter(catalog__project=project).count() == 25
    assert not others_held_off()


def a_sender(make_project, source, tmp_path, names: list[str]) -> tuple:
    """A session of a project whose source holds `names` (each file's body its first letter), and
    the sender of its plan, driven by hand."""
    write_files(source, {name: name[0] for name in names})
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    session = starting.create_session(project, created_by="test")
    return project, session, sending.Sender(session, project.destination(), follow_symlinks=False)


def planned(session: SyncSession, source, name: str) -> tuple:
    """The plan's row of a one-byte file (PLANNED_COLUMNS)."""
    return (session.pk, session.project_id, name, name, 1, (source / name).stat().st_mtime, None, None, False)


def test_a_claim_of_another_session_waits_while_the_plan_is_sending(transactional_db, make_project, source, tmp_path):
    project, session, sender = a_sender(make_project, source, tmp_path, ["a.bin"])
    row = planned(session, source, "a.bin")
    catalog_id = catalog.open_for(project, project.destination()).pk
    written: list = []

    def write(sent: files.Sent, rest: list) -> None:  # the plan's writer, given the part it sent
        # Another session of the project takes the file while it is sent: the catalog does not have it yet.
        queue_upload(project, source / "a.bin")
        written.append((others_held_off(), sent.column("status"), rest))
        with transaction.atomic():
            files.add_sent(session, sent, catalog_id)

    assert sender.send_part([row], "default", write) is False  # nothing left to the upload tasks
    sender.collect()  # PostgreSQL: the part was copying; now its rows go to the recorder thread
    wait_for(lambda: written, timeout=10, what="the part's rows to be written")
    assert written == [(True, [FileStatus.UPLOADED], [])]  # claims were held off while they were
    stream = SyncSession.objects.get(project=project, kind=SyncSession.Kind.STREAM)
    claimed: list = []
    claim = threading.Thread(target=lambda: (claimed.extend(files.claim(stream, 10, catalog_id)), connection.close()))
    claim.start()
    if connection.vendor == "postgresql":  # until the plan ends
        wait_for(lambda: advisory_locks(False) == 1, timeout=10, what="the claim to wait for the sending session")
        assert claim.is_alive()

    sender.close()

    claim.join(timeout=10)
    assert not claim.is_alive() and not others_held_off()
    # It saw the file arrived (the sending session's row and entry were in): not sent a second time.
    assert claimed == []
    assert stream.files.get().skip_reason == catalog.SKIP_ARRIVED


def test_a_session_that_comes_mid_scan_stops_the_sending_and_its_claims_wait_no_longer(
        transactional_db, make_project, source, tmp_path):
    project, session, sender = a_sender(make_project, source, tmp_path, ["a.bin", "b.bin"])
    written: list = []

    row = functools.partial(planned, session, source)

    def write(sent: files.Sent, rest: list) -> None:
        written.append((len(sent), rest, others_held_off()))

    sender.send_part([row("a.bin")], "default", write)
    sender.collect()
    wait_for(lambda: written, timeout=10, what="the first part's rows")
    assert written == [(1, [], True)]
    queue_upload(project, source / "b.bin")  # the project's upload queue starts

    sender.send_part([row("b.bin")], "default", write)
    sender.collect()

    wait_for(lambda: len(written) == 2, timeout=10, what="the second part's rows")
    assert written[1][:2] == (0, [row("b.bin")])  # left to the upload tasks
    assert not others_held_off()  # before the plan ends (close)
    sender.close()
    session.refresh_from_db()
    assert "another session of the project" in session.log


def test_when_the_copier_process_dies_its_part_goes_to_the_upload_tasks_and_nothing_is_lost(
        transactional_db, make_project, source, tmp_path):
    _, session, sender = a_sender(make_project, source, tmp_path, ["a.bin", "b.bin", "c.bin"])
    written: list = []

    row = functools.partial(planned, session, source)

    def write(sent: files.Sent, rest: list) -> None:
        written.append((sent.column("relative_path"), [r[2] for r in rest]))

    sender.send_part([row("a.bin")], "default", write)
    sender.collect()
    os.kill(sender._copier.pid, signal.SIGKILL)
    sender.send_part([row("b.bin")], "default", write)
    sender.send_part([row("c.bin")], "default", write)  # sending is off by now: straight to the tasks
    sender.close()

    assert written == [(["a.bin"], []), ([], ["b.bin"]), ([], ["c.bin"])]
    session.refresh_from_db()
    assert "the copier process ended" in session.log and "go through upload tasks" in session.log


def test_rows_made_ready_in_the_scan_thread_go_in_as_made_and_a_re_run_part_skips_those_already_in(
        make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    session = starting.create_session(project, created_by="test")
    catalog_id = catalog.open_for(project, project.destination()).pk

    def sent(*names: str) -> files.Sent:  # made where the files were sent (sending.Sender._finish)
        return files.sent([Outcome(FileUpload(session=session, project_id=project.pk, relative_path=name,
                                              remote_key=name, size=len(name), attempts=1, uploaded_at=timezone.now()),
                                   FileStatus.UPLOADED) for name in names])

    awkward = ["tab\there.bin", "new\nline.bin", "back\\slash.bin", "\u00fcn\u00ef.bin"]
    with transaction.atomic():
        assert files.add_sent(session, sent(*awkward), catalog_id, first_run=True) == 4
    with transaction.atomic():  # a scan run again: one row is in already
        assert files.add_sent(session, sent("\u00fcn\u00ef.bin", "more.bin"), catalog_id) == 1

    assert sorted(session.files.values_list("relative_path", flat=True)) == sorted(awkward + ["more.bin"])
    assert set(session.files.values_list("status", flat=True)) == {FileStatus.UPLOADED}
    assert CatalogEntry.objects.filter(catalog_id=catalog_id).count() == 5


def test_files_the_plan_copied_go_in_uploaded_as_written_noting_a_size_changed_since_the_scan(
        make_project, source, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})
    session = starting.create_session(project, created_by="test")
    catalog_id = catalog.open_for(project, project.destination()).pk
    for name in ("tab\tgrown.bin", "same.bin"):
        (source / name).write_bytes(b"x")
    grown = planned(session, source, "tab\tgrown.bin")  # scanned at 1 byte
    same = planned(session, source, "same.bin")
    refused = Outcome(FileUpload(session=session, project_id=project.pk, relative_path="gone.bin",
                                 remote_key="gone.bin", attempts=1, last_error="file not found", error_permanent=True),
                      FileStatus.FAILED)

    ready = files.sent([refused], "default", copied=[
        (grown, 5, 1234.5, transferring.change_note(1, 5)),
        (same, 1, 99.25, transferring.change_note(1, 1)),
    ])
    with transaction.atomic():
        assert files.add_sent(session, ready, catalog_id, first_run=True) == 3

    rows = {f.relative_path: f for f in session.files.all()}
    assert (rows["tab\tgrown.bin"].status, rows["tab\tgrown.bin"].size, rows["tab\tgrown.bin"].mtime) == (
        FileStatus.UPLOADED, 5, 1234.5)
    assert rows["tab\tgrown.bin"].note == "size changed since scan: 1 -> 5"
    assert (rows["same.bin"].note, rows["same.bin"].attempts, rows["same.bin"].verify_remote) == ("", 1, False)
    assert rows["same.bin"].uploaded_at is not None
    assert (rows["gone.bin"].status, rows["gone.bin"].last_error) == (FileStatus.FAILED, "file not found")
    session.refresh_from_db()
    assert (session.found_count, session.uploaded_count, session.failed_count, session.bytes_uploaded) == (3, 2, 1, 6)
    entries = dict(CatalogEntry.objects.filter(catalog_id=catalog_id).values_list("key", "size"))
    assert entries == {"tab\tgrown.bin": 5, "same.bin": 1}


def copier_children() -> int:
    """Copier processes this test's process started and has not waited for."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                command = cmdline.read()
        except OSError:  # gone meanwhile
            continue
        count += parent == os.getpid() and b"projects.copier" in command
    return count


def test_a_copier_started_ahead_of_the_first_part_ends_with_the_plan_though_nothing_was_sent(
        make_project, source, tmp_path):
    _, _, sender = a_sender(make_project, source, tmp_path, ["a.bin"])

    sender.start()  # a first sync: with the scan, not with the first part
    assert copier_children() == 1
    sender.start()  # once
    assert copier_children() == 1
    sender.close()  # no part was sent (every file too big, say)

    assert copier_children() == 0


def test_an_error_writing_a_part_comes_out_of_the_sender_and_leaves_no_transaction_open(
        transactional_db, make_project, source, tmp_path):
    _, session, sender = a_sender(make_project, source, tmp_path, ["a.bin", "b.bin"])
    row = functools.partial(planned, session, source)

    def write(sent: files.Sent, rest: list) -> None:
        raise RuntimeError("the part's rows could not be written")

    with pytest.raises(RuntimeError, match="could not be written"):
        sender.send_part([row("a.bin")], "default", write)
        sender.send_part([row("b.bin")], "default", write)  # SQLite: a's rows are written while b copies
        sender.close()  # PostgreSQL: the recorder thread's error comes out here
    sender.close()

    assert not connection.in_atomic_block
    assert not others_held_off()  # nothing holds the database (SQLite) or the sending lock (PostgreSQL)
    assert not session.files.exists()
