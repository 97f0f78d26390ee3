"""A file swapped after it was checked (scanned, or admitted by the upload queue) is refused:
symlinks are not followed at upload, and the opened file must be the one recorded (device, inode)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessions_app import pipeline, starting, uploading
from sessions_app.models import FileStatus, SessionStatus, SyncSession
from sessions_app.queueing import queue_upload
from tests.conftest import write_files

SECRET = b"root:x:0:0:secret key material\n"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "secret.key"
    write_files(path.parent, {path.name: SECRET})
    return path


def scanned(project) -> SyncSession:
    """A session scanned and planned, its uploads not started."""
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    return session


def drained(session: SyncSession) -> SyncSession:
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def swap_for_symlink(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def _local(tmp_path: Path) -> dict:
    return {"type": "local", "path": str(tmp_path / "out")}


def _everything_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_a_file_swapped_for_a_symlink_after_the_scan_is_refused_not_uploaded(make_project, source, tmp_path,
                                                                              secret):
    write_files(source, {"a.wav": "fine", "b.wav": "to be swapped"})
    session = scanned(make_project(_local(tmp_path)))
    swap_for_symlink(source / "b.wav", secret)

    session = drained(session)

    b = session.files.get(relative_path="b.wav")
    assert (b.status, b.error_permanent) == (FileStatus.FAILED, True)
    assert b.last_error == f"changed since it was scanned: the file is now a symlink: {source / 'b.wav'}"
    assert session.files.get(relative_path="a.wav").status == FileStatus.UPLOADED
    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    assert not (tmp_path / "out" / "b.wav").exists()
    assert SECRET not in _everything_under(tmp_path / "out")


def test_a_file_swapped_for_a_symlink_is_not_uploaded_to_s3(make_project, source, secret, s3_server):
    write_files(source, {"b.wav": "to be swapped"})
    bucket = s3_server.make_bucket()
    session = scanned(make_project({"type": "s3", "bucket": bucket, "prefix": "data",
                                    "endpoint_url": s3_server.endpoint_url}))
    swap_for_symlink(source / "b.wav", secret)

    session = drained(session)

    b = session.files.get()
    assert (b.status, b.error_permanent) == (FileStatus.FAILED, True)
    assert "now a symlink" in b.last_error
    assert s3_server.client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


def test_a_parent_folder_swapped_for_a_symlink_is_refused(make_project, source, tmp_path, secret):
    write_files(source, {"cam/secret.key": "harmless"})
    session = scanned(make_project(_local(tmp_path)))
    (source / "cam" / "secret.key").unlink()
    (source / "cam").rmdir()
    (source / "cam").symlink_to(secret.parent)  # cam/secret.key now names the secret

    session = drained(session)

    row = session.files.get()
    assert (row.status, row.error_permanent) == (FileStatus.FAILED, True)
    assert row.last_error == f"changed since it was scanned: folder cam is now a symlink: {source / 'cam/secret.key'}"
    assert SECRET not in _everything_under(tmp_path / "out")


def test_a_file_replaced_by_another_file_is_refused(make_project, source, tmp_path):
    write_files(source, {"b.wav": "scanned"})
    session = scanned(make_project(_local(tmp_path)))
    was = os.stat(source / "b.wav").st_ino
    write_files(tmp_path, {"other.wav": "another file"})
    os.replace(tmp_path / "other.wav", source / "b.wav")  # a new inode under the scanned name
    now = os.stat(source / "b.wav").st_ino

    session = drained(session)

    row = session.files.get()
    assert (row.status, row.error_permanent) == (FileStatus.FAILED, True)
    assert row.last_error == (f"changed since it was scanned: replaced by another file (inode {now}, was {was}): "
                              f"{source / 'b.wav'}")
    assert not (tmp_path / "out" / "b.wav").exists()


def test_the_same_file_appended_to_is_uploaded_with_a_note(make_project, source, tmp_path):
    write_files(source, {"grow.wav": "short"})
    session = scanned(make_project(_local(tmp_path)))
    with open(source / "grow.wav", "ab") as f:
        f.write(b" and more")

    session = drained(session)

    row = session.files.get()
    assert (row.status, row.size, row.note) == (FileStatus.UPLOADED, 14, "size changed since scan: 5 -> 14")
    assert (tmp_path / "out" / "grow.wav").read_bytes() == b"short and more"


def test_with_follow_symlinks_a_swapped_in_symlink_still_fails_the_identity_check(make_project, source, tmp_path,
                                                                                 secret):
    write_files(source, {"b.wav": "scanned"})
    session = scanned(make_project(_local(tmp_path), follow_symlinks=True))
    swap_for_symlink(source / "b.wav", secret)

    session = drained(session)

    row = session.files.get()
    assert (row.status, row.error_permanent) == (FileStatus.FAILED, True)
    assert "replaced by another file" in row.last_error
    assert SECRET not in _everything_under(tmp_path / "out")


def test_a_symlink_scanned_with_follow_symlinks_is_uploaded(make_project, source, tmp_path, secret):
    (source / "link.key").symlink_to(secret)
    session = drained(scanned(make_project(_local(tmp_path), follow_symlinks=True)))

    assert session.files.get().status == FileStatus.UPLOADED
    assert (tmp_path / "out" / "link.key").read_bytes() == SECRET


def test_a_queued_file_swapped_for_a_symlink_before_the_drainer_runs_is_refused(make_project, source, tmp_path,
                                                                               secret, settings):
    settings.QUEUE_LINGER_SECONDS = 0  # the inline drain returns once the queue is empty
    project = make_project(_local(tmp_path), project="camera")
    write_files(source, {"cam/img.jpg": "jpeg"})
    assert queue_upload(project, source / "cam/img.jpg") is True
    swap_for_symlink(source / "cam/img.jpg", secret)

    stream = SyncSession.objects.get(project=project, kind=SyncSession.Kind.STREAM)
    uploading.drain(stream.pk)

    row = stream.files.get()
    assert (row.status, row.error_permanent) == (FileStatus.FAILED, True)
    assert "changed since it was scanned: the file is now a symlink" in row.last_error
    assert SECRET not in _everything_under(tmp_path / "out")
