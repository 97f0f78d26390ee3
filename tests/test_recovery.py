"""Crash recovery by leases: a task's lease on its session and its claimed rows, renewed while it
runs; the sweep (every minute, and at a cluster's start) takes back what a lease no longer covers,
and removes the temporary files the vanished task left at the destination."""

from __future__ import annotations

from datetime import timedelta

from django.core.cache import cache
from django.utils import timezone
from django_q.models import OrmQ
from django_q.signals import post_spawn

from projects.destinations.base import TEMP_FOLDER, temp_prefix
from sessions_app import lifecycle, pipeline, starting, uploading
from sessions_app.leases import Lease
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from tests.conftest import write_files
from tests.polling import wait_for


def _claimed_then_killed(make_project, source, tmp_path, n_files=3, claim=2):
    """A session whose upload task claimed `claim` rows, wrote a temporary file for each, then died."""
    write_files(source, {f"{i}.wav": "x" for i in range(n_files)})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    rows = uploading.Drainer(session, deadline=None).claim(claim)
    temp = tmp_path / "out" / TEMP_FOLDER
    temp.mkdir(parents=True)
    for row in rows:
        (temp / f"{temp_prefix(row.remote_key)}1f2e-0").write_bytes(b"")
    return session, rows


def _age(session: SyncSession, seconds: float, rows=()) -> None:
    then = timezone.now() - timedelta(seconds=seconds)
    SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=then)
    FileUpload.objects.filter(pk__in=[r.pk for r in rows]).update(claimed_at=then)


def test_a_killed_upload_task_is_resumed_once_its_lease_ran_out_not_after_the_stale_timeout(
    make_project, source, tmp_path, settings
):
    settings.LEASE_SECONDS, settings.SESSION_STALE_SECONDS = 30, 300
    session, rows = _claimed_then_killed(make_project, source, tmp_path)
    _age(session, 31, rows)  # past the lease, far from SESSION_STALE_SECONDS

    lines = pipeline.sweep()

    assert lines == [f"session {session.pk}: uploads restarted; 2 interrupted uploads will be verified"]
    assert set(session.files.values_list("status", flat=True)) == {FileStatus.PENDING}
    assert session.files.filter(verify_remote=True).count() == 2
    assert list((tmp_path / "out" / TEMP_FOLDER).iterdir()) == []  # the orphaned temporary files
    assert "removed 2 temporary files of interrupted uploads" in SyncSession.objects.get(pk=session.pk).log
    uploading.drain(session.pk)
    session.refresh_from_db()
    assert (session.status, session.uploaded_count, session.found_count) == (SessionStatus.COMPLETED, 3, 3)


def test_a_session_whose_lease_is_current_is_left_alone(make_project, source, tmp_path, settings):
    settings.LEASE_SECONDS = 30
    session, rows = _claimed_then_killed(make_project, source, tmp_path)
    _age(session, 20, rows)

    assert pipeline.sweep() == []
    assert session.files.filter(status=FileStatus.UPLOADING).count() == 2
    assert len(list((tmp_path / "out" / TEMP_FOLDER).iterdir())) == 2


def test_uploading_with_no_claims_waits_for_the_stale_timeout_its_tasks_may_be_queued(
    make_project, source, tmp_path, settings
):
    settings.LEASE_SECONDS, settings.SESSION_STALE_SECONDS = 30, 300
    session, _ = _claimed_then_killed(make_project, source, tmp_path, claim=0)
    _age(session, 60)
    assert not lifecycle.is_stale(SyncSession.objects.get(pk=session.pk))

    _age(session, 301)
    assert lifecycle.is_stale(SyncSession.objects.get(pk=session.pk))


def test_claims_of_a_vanished_task_are_taken_back_while_another_task_of_the_session_lives(
    make_project, source, tmp_path, settings
):
    settings.LEASE_SECONDS = 30
    session, dead = _claimed_then_killed(make_project, source, tmp_path, n_files=4, claim=2)
    alive = uploading.Drainer(session, deadline=None).claim(2)
    _age(session, 0, dead)
    FileUpload.objects.filter(pk__in=[r.pk for r in dead]).update(claimed_at=timezone.now() - timedelta(seconds=31))

    lines = pipeline.sweep()

    assert lines == [f"session {session.pk}: 2 uploads of a vanished worker taken back"]
    assert set(FileUpload.objects.filter(pk__in=[r.pk for r in dead]).values_list("status", flat=True)) == {"pending"}
    assert set(FileUpload.objects.filter(pk__in=[r.pk for r in alive]).values_list("status", flat=True)) == {
        "uploading"}
    assert list((tmp_path / "out" / TEMP_FOLDER).iterdir()) == []


def test_two_sweeps_that_find_a_session_stale_resume_it_once(make_project, source, tmp_path, settings):
    session, rows = _claimed_then_killed(make_project, source, tmp_path)
    _age(session, 400, rows)
    first, second = SyncSession.objects.get(pk=session.pk), SyncSession.objects.get(pk=session.pk)

    assert first.take_over()
    assert not second.take_over()


def test_a_running_task_renews_its_lease_on_the_session_and_its_claimed_rows(
    make_project, source, tmp_path, settings, transactional_db
):
    settings.LEASE_SECONDS = 1  # renewed every 0.5 s
    session, rows = _claimed_then_killed(make_project, source, tmp_path)
    _age(session, 60, rows)
    long_ago = timezone.now() - timedelta(seconds=30)

    with Lease(session.pk) as lease:
        lease.hold([rows[0].pk])
        wait_for(lambda: FileUpload.objects.get(pk=rows[0].pk).claimed_at > long_ago, 10, what="claim renewed")
        assert SyncSession.objects.get(pk=session.pk).heartbeat_at > long_ago
    assert FileUpload.objects.get(pk=rows[1].pk).claimed_at < long_ago  # not held: not renewed


def test_recovery_at_cluster_start_resumes_as_soon_as_the_lease_runs_out(
    make_project, source, tmp_path, settings
):
    settings.LEASE_SECONDS = 2
    session, rows = _claimed_then_killed(make_project, source, tmp_path)
    _age(session, 1, rows)  # killed a second ago, restarted now: the lease has a second to go

    started, lines = timezone.now(), []
    first = pipeline.recover_at_start(started)  # the lease still runs: nothing yet, and it comes back
    assert first == [] and [task.name() for task in OrmQ.objects.all()] == ["cluster:recover"]
    wait_for(lambda: lines.extend(pipeline.recover_at_start(started)) or lines, 20, what="the lease ran out")

    assert lines == [f"session {session.pk}: uploads restarted; 2 interrupted uploads will be verified"]
    assert not session.files.filter(status=FileStatus.UPLOADING).exists()


def test_a_starting_cluster_queues_one_recovery(db):
    cache.delete("uploader:recover-at-start")

    for name in ("Process-1", "Process-2"):  # django-q2 sends it from each worker it spawns
        post_spawn.send(sender="django_q", proc_name=name)

    assert [task.name() for task in OrmQ.objects.all()] == ["cluster:recover"]
