"""The `retry` command and the retry rounds behind it, against the loopback S3 server."""

from __future__ import annotations


import pytest
from django.core.management import CommandError, call_command
from django_q.models import OrmQ, Schedule

from sessions_app import retrying
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from tests.conftest import manage, run_session_inline, wait_for, write_files
from tests.sessions_helpers import (  # noqa: F401
    fast_uploads, remote_keys, run_due_schedules, run_retry, s3_project, sync_tasks,
)


def _file(name: str) -> FileUpload:
    return FileUpload.objects.get(relative_path=name)


@pytest.fixture
def three_files(source):
    write_files(source, {"a.wav": "aaaa", "b.wav": "bbbbbb", "c.wav": "cc"})
    return source


@pytest.mark.usefixtures("sync_tasks", "fast_uploads", "three_files")
def test_round_recovers_a_file_after_a_transient_fault(make_project, s3_server, fault_proxy):
    bucket = s3_server.make_bucket()
    project = s3_project(make_project, fault_proxy.endpoint_url, bucket, max_retries=1)
    fault_proxy.fail_next(2, "500", path_contains="b.wav")  # both tries of the upload round
    session = run_session_inline(project)
    assert (session.status, session.uploaded_count, session.failed_count) == ("completed_with_errors", 2, 1)
    b = _file("b.wav")
    assert (b.status, b.attempts, b.retries, b.error_permanent) == (FileStatus.FAILED, 2, 0, False)
    assert "500 InternalError" in b.last_error

    code, out, _ = run_retry(str(session.pk), "--wait")

    assert code == 0
    assert f"session {session.pk}: retry round 1 queued 1 file" in out
    assert "retry: 1 round; retried 1, now uploaded 1, still failed 0, permanent 0" in out
    session.refresh_from_db()
    assert (session.status, session.uploaded_count, session.failed_count, session.retry_round) == (
        SessionStatus.COMPLETED, 3, 0, 1)
    b = _file("b.wav")
    assert (b.status, b.attempts, b.retries, b.last_error) == (FileStatus.UPLOADED, 3, 1, "")
    assert fault_proxy.count("PUT", "rec/b.wav") == 3
    assert fault_proxy.count("PUT", "rec/a.wav") == 1, "a round only re-sends the failed files"
    assert set(remote_keys(s3_server, bucket)) == {"rec/a.wav", "rec/b.wav", "rec/c.wav"}


@pytest.mark.usefixtures("sync_tasks", "fast_uploads", "three_files")
def test_file_failing_max_retries_rounds_becomes_permanent_and_is_left_out(make_project, s3_server, fault_proxy):
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=1)
    fault_proxy.fail_next(100, "500", path_contains="b.wav")
    session = run_session_inline(project)

    code, out, err = run_retry(str(session.pk), "--wait")

    assert code == 1
    assert "retried 1, now uploaded 0, still failed 1, permanent 1" in out
    assert "b.wav" in err
    b = _file("b.wav")
    assert (b.status, b.retries, b.attempts, b.error_permanent) == (FileStatus.FAILED, 1, 4, True)
    assert b.last_error.startswith("gave up after 1 retry rounds: ")
    assert "500 InternalError" in b.last_error

    code, out, err = run_retry(str(session.pk))
    assert code == 1
    assert "nothing to retry" in out
    assert "--include-permanent" in err
    assert _file("b.wav").attempts == 4, "a permanent file is not retried without --include-permanent"

    fault_proxy.reset()  # the cause is fixed
    code, out, _ = run_retry(str(session.pk), "--include-permanent", "--wait")
    assert code == 0
    assert "retried 1, now uploaded 1, still failed 0, permanent 0" in out
    b = _file("b.wav")
    assert (b.status, b.retries, b.error_permanent, b.last_error) == (FileStatus.UPLOADED, 2, False, "")


@pytest.mark.usefixtures("sync_tasks", "fast_uploads", "three_files")
def test_permanent_error_is_retried_only_with_include_permanent(make_project, s3_server, fault_proxy):
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=3)
    fault_proxy.fail_next(1, "403", path_contains="c.wav")
    session = run_session_inline(project)
    c = _file("c.wav")
    assert (c.status, c.attempts, c.error_permanent) == (FileStatus.FAILED, 1, True)

    code, out, _ = run_retry(str(session.pk), "--wait")
    assert (code, "nothing to retry" in out) == (1, True)

    code, out, _ = run_retry(str(session.pk), "--include-permanent", "--wait")
    assert code == 0
    assert "retried 1, now uploaded 1" in out
    assert SyncSession.objects.get().status == SessionStatus.COMPLETED


@pytest.mark.usefixtures("sync_tasks", "fast_uploads", "three_files")
def test_auto_rounds_back_off_until_every_file_is_uploaded(make_project, s3_server, fault_proxy):
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=3,
                         retry_backoff_base=0.01, retry_backoff_cap=0.02)
    fault_proxy.fail_next(12, "500", path_contains="b.wav")  # 4 tries each: the upload, rounds 1 and 2
    session = run_session_inline(project)

    code, out, _ = run_retry(str(session.pk), "--auto")

    assert code == 0
    assert "retry round 1 queued 1 file" in out
    session.refresh_from_db()
    assert (session.status, session.auto_retry, session.retry_round) == ("completed_with_errors", True, 1)
    assert session.next_retry_at is not None
    scheduled = Schedule.objects.get(func="sessions_app.tasks.retry_round")
    assert (scheduled.args, scheduled.schedule_type, scheduled.next_run) == (
        f"{session.pk}, 2", Schedule.ONCE, session.next_retry_at)

    wait_for(lambda: run_due_schedules() and SyncSession.objects.get().status == SessionStatus.COMPLETED, 30,
             what="automatic rounds done")

    session.refresh_from_db()
    assert (session.retry_round, session.uploaded_count, session.failed_count) == (3, 3, 0)
    b = _file("b.wav")
    assert (b.status, b.retries, b.attempts) == (FileStatus.UPLOADED, 3, 13)
    assert "retry round 2 scheduled" in session.log and "retry round 3 scheduled" in session.log
    assert not Schedule.objects.filter(func="sessions_app.tasks.retry_round").exists()


@pytest.mark.usefixtures("sync_tasks", "fast_uploads", "three_files")
def test_auto_rounds_stop_when_only_permanent_failures_are_left(make_project, s3_server, fault_proxy):
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=2,
                         retry_backoff_base=0.01, retry_backoff_cap=0.01)
    fault_proxy.fail_next(1000, "500", path_contains="b.wav")
    session = run_session_inline(project)

    run_retry(str(session.pk), "--auto")
    wait_for(lambda: run_due_schedules() and not retrying.awaiting_round(SyncSession.objects.get()), 30,
             what="automatic rounds given up")

    session.refresh_from_db()
    assert (session.status, session.retry_round, session.failed_count) == ("completed_with_errors", 2, 1)
    b = _file("b.wav")
    assert (b.retries, b.attempts, b.error_permanent) == (2, 9, True)
    assert b.last_error.startswith("gave up after 2 retry rounds")
    assert session.next_retry_at is None


def test_backoff_doubles_per_round_up_to_the_cap(make_project, source):
    project = make_project({"type": "local", "path": str(source.parent / "out")}, retry_backoff_base=30,
                           retry_backoff_cap=100)
    session = SyncSession(project=project)
    assert [retrying.round_delay(session, k) for k in (1, 2, 3, 4)] == [30, 60, 100, 100]


@pytest.mark.usefixtures("fast_uploads", "three_files")
def test_without_wait_the_round_is_queued_for_the_workers(make_project, s3_server, fault_proxy):
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=0,
                         upload_tasks=2)
    fault_proxy.fail_next(1, "500", path_contains="a.wav")
    session = run_session_inline(project)
    a = _file("a.wav")
    assert (a.status, a.error_permanent) == (FileStatus.FAILED, True), "max_retries 0: no round is automatic"

    code, out, _ = run_retry(str(session.pk), "--include-permanent")

    assert code == 0 and "queued 1 file" in out
    session.refresh_from_db()
    assert (session.status, session.pending_count, session.failed_count) == (SessionStatus.UPLOADING, 1, 0)
    assert (_file("a.wav").status, _file("a.wav").retries) == (FileStatus.PENDING, 1)
    assert OrmQ.objects.filter(key="uploader").count() == 2  # upload tasks, for the cluster


def test_running_session_cannot_be_retried(make_project, source):
    from sessions_app import starting

    project = make_project({"type": "local", "path": str(source.parent / "out")})
    session = starting.create_session(project)
    with pytest.raises(CommandError, match=f"session {session.pk} is still queued") as exc:
        call_command("retry", str(session.pk))
    assert exc.value.returncode == 2


def test_unknown_session_exits_2(transactional_db):
    result = manage("retry", "424242")
    assert result.returncode == 2
    assert "no session with id 424242" in result.stderr
