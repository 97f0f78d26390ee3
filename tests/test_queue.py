"""The upload queue from Python: queue_upload(), the stream session, waking drainers; and the
queue end to end into the loopback sshd through a real qcluster."""

from __future__ import annotations

import logging
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from sessions_app import queueing, uploading, waking
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from sessions_app.queueing import queue_upload
from tests.conftest import wait_for, write_files


@pytest.fixture(autouse=True)
def quick_drains(settings) -> None:
    settings.QUEUE_LINGER_SECONDS = 0  # an inline drain returns as soon as the queue is empty
    settings.UPLOAD_FLUSH_SECONDS = 0.05


@pytest.fixture
def project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera")


def stream(project) -> SyncSession:
    return SyncSession.objects.get(project=project, kind=SyncSession.Kind.STREAM, status=SessionStatus.UPLOADING)


def drain(project) -> SyncSession:
    session = stream(project)
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def upload_tasks() -> int:
    return sum(1 for q in OrmQ.objects.all() if q.func() == "sessions_app.tasks.upload")


def test_queued_file_is_a_pending_row_of_the_stream_session(project, source):
    write_files(source, {"2026-01-01/img-0001.jpg": "jpeg"})

    assert queue_upload(project, source / "2026-01-01/img-0001.jpg", tag="cam1") is True

    session = stream(project)
    row = session.files.get()
    assert (row.relative_path, row.remote_key, row.status, row.tag, row.size) == (
        "2026-01-01/img-0001.jpg", "2026-01-01/img-0001.jpg", FileStatus.PENDING, "cam1", 4)
    assert (session.found_count, session.pending_count, session.bytes_total) == (1, 1, 4)
    assert session.created_by == "upload queue" and session.config is not None
    assert upload_tasks() == 1


def test_relative_paths_project_names_and_remote_subdir(project, source):
    write_files(source, {"a/one.jpg": "1", "a/two.jpg": "2"})

    assert queue_upload("camera", "a/one.jpg") is True
    assert queue_upload(project, str(source / "a" / "two.jpg"), remote_subdir="day/2026-01-01/") is True

    keys = dict(stream(project).files.values_list("relative_path", "remote_key"))
    assert keys == {"a/one.jpg": "a/one.jpg", "a/two.jpg": "day/2026-01-01/two.jpg"}


def test_uploads_in_fifo_order(make_project, source, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, upload_workers=1)
    names = [f"img-{i:02d}.jpg" for i in (7, 3, 9, 1, 5, 8, 2, 6, 4, 0)]
    write_files(source, {name: name for name in names})
    for name in names:
        assert queue_upload(project, name)

    session = drain(project)

    rows = list(session.files.order_by("uploaded_at").values_list("relative_path", "status"))
    assert rows == [(name, FileStatus.UPLOADED) for name in names]
    assert all((tmp_path / "dest" / name).read_text() == name for name in names)
    assert (session.uploaded_count, session.pending_count, session.status) == (10, 0, SessionStatus.UPLOADING)


def test_full_queue_returns_false_logs_a_warning_and_never_blocks(make_project, source, tmp_path, caplog):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, queue_limit=3)
    write_files(source, {f"{i}.jpg": str(i) for i in range(5)})

    assert [queue_upload(project, f"{i}.jpg") for i in range(3)] == [True, True, True]
    with caplog.at_level(logging.WARNING, logger="sessions_app.queueing"):
        assert queue_upload(project, "3.jpg") is False

    assert "upload queue is full" in caplog.text
    assert stream(project).files.count() == 3
    drain(project)
    assert queue_upload(project, "3.jpg") is True  # room again once the backlog is uploaded


def test_default_limit_is_100(project, source):
    write_files(source, {f"{i:03d}.jpg": "x" for i in range(101)})

    answers = [queue_upload(project, f"{i:03d}.jpg") for i in range(101)]

    assert answers == [True] * 100 + [False]


@pytest.mark.parametrize("path", ["../outside.jpg", "sub/../../outside.jpg", "{outside}", "link-to-outside.jpg",
                                  "linked-dir/secret.jpg", "", ".", "sub", "missing.jpg", "fifo"])
def test_paths_that_do_not_lead_to_a_file_in_the_source_are_refused(project, source, tmp_path, path, caplog):
    outside = tmp_path / "outside"
    write_files(outside, {"secret.jpg": "secret"})
    write_files(tmp_path, {"outside.jpg": "outside"})
    write_files(source, {"sub/inside.jpg": "in"})
    (source / "link-to-outside.jpg").symlink_to(tmp_path / "outside.jpg")
    (source / "linked-dir").symlink_to(outside)
    os.mkfifo(source / "fifo")

    with caplog.at_level(logging.WARNING, logger="sessions_app.queueing"):
        assert queue_upload(project, path.format(outside=tmp_path / "outside.jpg")) is False

    assert not FileUpload.objects.exists()
    assert "not queued" in caplog.text


def test_symlink_inside_the_source_is_queued_as_its_target(project, source):
    write_files(source, {"2026/real.jpg": "real"})
    (source / "latest.jpg").symlink_to(source / "2026" / "real.jpg")

    assert queue_upload(project, "latest.jpg") is True

    assert stream(project).files.get().relative_path == "2026/real.jpg"


def test_bad_remote_subdir_and_tag_are_refused(project, source):
    write_files(source, {"a.jpg": "a"})

    assert queue_upload(project, "a.jpg", remote_subdir="../up") is False
    assert queue_upload(project, "a.jpg", tag="x" * 201) is False
    assert not FileUpload.objects.exists()


def test_never_raises(project, source):
    write_files(source, {"a.jpg": "a"})

    assert queue_upload("no-such-project", "a.jpg") is False
    assert queue_upload(project, None) is False
    project.destination_options = {"nonsense": 1}
    assert queue_upload(project, "a.jpg") is False


def test_many_files_wake_one_drainer_task(project, source):
    write_files(source, {f"{i}.jpg": "x" for i in range(50)})

    assert all(queue_upload(project, f"{i}.jpg") for i in range(50))

    assert upload_tasks() == 1


def test_drained_queue_goes_idle_and_the_next_file_wakes_a_drainer(project, source):
    write_files(source, {"a.jpg": "a", "b.jpg": "b"})
    queue_upload(project, "a.jpg")

    session = drain(project)

    assert session.heartbeat_at is None and session.uploaded_count == 1
    queue_upload(project, "b.jpg")
    assert upload_tasks() == 2


def test_a_file_queued_while_the_drainer_finishes_is_not_stranded(project, source):
    write_files(source, {"a.jpg": "a", "b.jpg": "b"})
    queue_upload(project, "a.jpg")  # heartbeat fresh: a drainer is on its way
    queue_upload(project, "b.jpg")
    assert upload_tasks() == 1

    waking.went_idle(stream(project))  # the drainer ran dry just before b arrived

    assert upload_tasks() == 2


def test_same_file_twice_is_one_row(project, source):
    write_files(source, {"a.jpg": "a"})

    assert queue_upload(project, "a.jpg") and queue_upload(project, "a.jpg")
    assert stream(project).files.count() == 1
    drain(project)
    assert queue_upload(project, "a.jpg") is True  # unchanged and uploaded: nothing to do

    session = stream(project)
    assert (session.files.get().status, session.found_count, session.uploaded_count) == (FileStatus.UPLOADED, 1, 1)


def test_changed_or_failed_file_queued_again_joins_the_end_of_the_queue(project, source):
    write_files(source, {"a.jpg": "a", "b.jpg": "b"})
    queue_upload(project, "a.jpg")
    queue_upload(project, "b.jpg")
    (source / "b.jpg").unlink()
    drain(project)
    write_files(source, {"a.jpg": "changed", "b.jpg": "back"})

    assert queue_upload(project, "b.jpg") and queue_upload(project, "a.jpg")

    session = stream(project)
    assert list(session.files.values_list("relative_path", "status")) == [
        ("b.jpg", FileStatus.PENDING), ("a.jpg", FileStatus.PENDING)]
    assert (session.found_count, session.uploaded_count, session.failed_count, session.pending_count) == (2, 0, 0, 2)


def test_conflicting_request_for_a_queued_file_is_refused(project, source):
    write_files(source, {"a.jpg": "a"})

    assert queue_upload(project, "a.jpg", remote_subdir="one")
    assert queue_upload(project, "a.jpg", remote_subdir="two") is False

    assert stream(project).files.get().remote_key == "one/a.jpg"


def test_cancelled_queue_is_replaced_by_a_new_stream_session(project, source):
    write_files(source, {"a.jpg": "a", "b.jpg": "b"})
    queue_upload(project, "a.jpg")
    first = stream(project)
    first.mark_cancelled()

    assert queue_upload(project, "b.jpg") is True

    assert stream(project).pk != first.pk
    assert list(stream(project).files.values_list("relative_path", flat=True)) == ["b.jpg"]


def test_sweep_puts_files_of_a_killed_drainer_back_and_wakes_one(project, source, settings):
    write_files(source, {"a.jpg": "a", "b.jpg": "b"})
    queue_upload(project, "a.jpg")
    queue_upload(project, "b.jpg")
    session = stream(project)
    long_ago = timezone.now() - timedelta(hours=1)
    session.files.filter(relative_path="a.jpg").update(status=FileStatus.UPLOADING, claimed_at=long_ago)
    SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=long_ago)
    OrmQ.objects.all().delete()  # the broker lost the task with the worker

    done = queueing.sweep()

    assert done == [f"upload queue {session.pk}: 1 interrupted uploads back in the queue",
                    f"upload queue {session.pk}: drainer woken"]
    a = session.files.get(relative_path="a.jpg")
    assert (a.status, a.verify_remote) == (FileStatus.PENDING, True)
    assert upload_tasks() == 1
    assert queueing.sweep() == []  # a drainer is on its way now


def test_sweep_leaves_a_live_drainer_alone(project, source):
    write_files(source, {"a.jpg": "a"})
    queue_upload(project, "a.jpg")
    session = stream(project)
    session.files.update(status=FileStatus.UPLOADING, claimed_at=timezone.now() - timedelta(hours=1))
    session.touch()

    assert queueing.sweep() == []
    assert session.files.get().status == FileStatus.UPLOADING


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_queue_to_sftp_through_a_real_cluster(cluster_factory, make_project, source, sshd_server):
    from tests.servers.sshd import sftp_options

    sshd_server.start()
    options = sftp_options(sshd_server)
    project = make_project({"type": "sftp", **options}, upload_workers=1, queue_limit=200)
    first = {f"cam/{i:03d}.jpg": os.urandom(1000 + i) for i in range(40)}
    later = {f"cam/late-{i:02d}.jpg": os.urandom(500) for i in range(20)}
    write_files(source, {**first, **later})
    for rel in first:  # while no cluster runs: the files wait as rows
        assert queue_upload(project, rel, remote_subdir="2026-01-01", tag="cam1")

    cluster = cluster_factory(UPLOAD_FLUSH_SECONDS="0.1")
    wait_for(lambda: stream(project).uploaded_count == 40, 60, what="first 40 uploaded")
    for rel in later:  # a producer going on while the workers upload
        assert queue_upload(project, rel)
    wait_for(lambda: stream(project).uploaded_count == 60, 60, what="all 60 uploaded")
    os.kill(cluster.proc.pid, signal.SIGTERM)  # the main process only: the stop that ends every process
    cluster.proc.wait(60)

    remote = Path(options["remote_dir"])
    for rel, content in first.items():
        assert (remote / "2026-01-01" / Path(rel).name).read_bytes() == content
    for rel, content in later.items():
        assert (remote / rel).read_bytes() == content
    session = stream(project)
    assert (session.found_count, session.failed_count, session.pending_count) == (60, 0, 0)
    assert set(session.files.values_list("tag", flat=True).filter(relative_path__in=first)) == {"cam1"}
    by_queue_order = list(session.files.order_by("id").values_list("uploaded_at", flat=True))
    assert by_queue_order == sorted(by_queue_order), "one transfer at a time: uploaded in the order queued"
