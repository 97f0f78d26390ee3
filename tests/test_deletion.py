"""Deleting projects and sessions while their rows are being written: file rows and catalog entries
have no database foreign key (projects.models.ProjectQuerySet), so no row may outlive its session
or catalog, whichever of the two comes first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

from projects.models import Project, ProjectGone
from sessions_app import catalog, files, starting
from sessions_app.models import Catalog, CatalogEntry, FileUpload, SyncSession
from tests.polling import wait_for


def _planned(session: SyncSession, names: list[str]) -> list[tuple]:
    return [(session.pk, session.project_id, name, name, 3, 1.0, None, None, False) for name in names]


def _write_rows(session: SyncSession, names: list[str]) -> None:
    with transaction.atomic():
        files.add_pending(session, _planned(session, names))


def _a_backend_waits_for_a_lock() -> bool:
    """PostgreSQL: another connection is waiting for a row lock (SQLite's writers queue unseen)."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
                       "current_database()")
        return cursor.fetchone()[0] > 0


class _Thread(threading.Thread):
    """Runs `work` on a connection of its own; keeps what it raised."""

    def __init__(self, work: Callable[[], Any]):
        super().__init__(daemon=True)
        self.work, self.error = work, None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            connection.close()


def test_rows_written_for_a_deleted_project_are_refused_and_nothing_is_left(make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest"), "create": True})
    session = starting.create_session(project)
    known = Catalog.objects.create(project=project, destination="file:///x")
    SyncSession.objects.filter(pk=session.pk).delete()  # a project with sessions cannot be deleted
    Project.objects.filter(pk=project.pk).delete()

    with pytest.raises(ProjectGone, match="deleted"):
        _write_rows(session, ["a.wav"])
    with pytest.raises(ProjectGone):
        with transaction.atomic():
            catalog.adopt(known.pk, session.pk, [("a.wav", "a.wav", 3, 1.0)])
    assert not FileUpload.objects.filter(session_id=session.pk).exists()
    assert not CatalogEntry.objects.filter(catalog_id=known.pk).exists()


def _while_held(hold: Callable[[], Any], then: Callable[[], Any], other: Callable[[], Any],
                what: str) -> tuple[_Thread, _Thread]:
    """A thread's transaction runs `hold` and waits while `other` starts in a second thread and
    (PostgreSQL) is seen waiting for a lock; then the first goes on with `then` and commits. Both
    threads, ended."""
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with transaction.atomic():
            hold()
            held.set()
            assert release.wait(30)
            then()

    threads = (_Thread(first), _Thread(other))
    threads[0].start()
    assert held.wait(30)
    threads[1].start()
    wait_for(_a_backend_waits_for_a_lock, what=what)
    release.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    return threads


def test_a_session_deleted_while_its_rows_are_written_waits_for_them_and_deletes_them(
        transactional_db, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest"), "create": True})
    session = starting.create_session(project)

    writer, deleter = _while_held(lambda: files.add_pending(session, _planned(session, ["a.wav", "b.wav"])),
                                  lambda: None, lambda: SyncSession.objects.filter(pk=session.pk).delete(),
                                  "the deletion waiting for the rows being written")

    assert writer.error is None and deleter.error is None
    assert not SyncSession.objects.filter(pk=session.pk).exists()
    assert not FileUpload.objects.filter(session_id=session.pk).exists()


def test_rows_written_while_their_project_is_being_deleted_wait_then_roll_back(
        transactional_db, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest"), "create": True})
    session = starting.create_session(project)
    known = Catalog.objects.create(project=project, destination="file:///x")

    def delete() -> None:
        SyncSession.objects.filter(project=project).delete()  # a project with sessions cannot be deleted
        Project.objects.filter(pk=project.pk).delete()

    def write() -> None:
        with transaction.atomic():
            files.add_pending(session, _planned(session, ["a.wav"]))
            catalog.adopt(known.pk, session.pk, [("b.wav", "b.wav", 3, 1.0)])

    deleter, writer = _while_held(Project.objects.filter(pk=project.pk).lock_for_delete, delete, write,
                                  "the rows' write waiting for the deletion")

    assert deleter.error is None
    assert isinstance(writer.error, ProjectGone)
    assert not FileUpload.objects.filter(session_id=session.pk).exists()
    assert not CatalogEntry.objects.filter(catalog_id=known.pk).exists()
    assert not Project.objects.filter(pk=project.pk).exists()
