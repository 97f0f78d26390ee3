"""Cancelling a session: no new claims, transfers in flight finish, the rest becomes `cancelled`;
a retry round resumes it."""

from __future__ import annotations

import pytest
from django_q.models import Schedule

from sessions_app import cancelling, errors, pipeline, retrying, starting, uploading
from sessions_app.following import run_in_thread
from sessions_app.models import FileStatus, SessionStatus, SyncSession
from tests.conftest import run_session_inline, wait_for, write_files
from tests.sessions_helpers import fast_uploads, remote_keys, s3_project, sync_tasks  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_uploads")


def _status_counts(session: SyncSession) -> dict[str, int]:
    return {s: session.files.filter(status=s).count() for s in FileStatus.values}


def test_cancel_mid_session_lets_transfers_finish_and_cancels_the_rest(
    transactional_db, make_project, s3_server, fault_proxy, source
):
    n = 600
    write_files(source, {f"rec/{i:04d}.wav": b"x" * 200 for i in range(n)})
    bucket = s3_server.make_bucket()
    project = s3_project(make_project, fault_proxy.endpoint_url, bucket, upload_workers=2)
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    worker = run_in_thread(uploading.drain, session.pk)
    wait_for(lambda: SyncSession.objects.get(pk=session.pk).uploaded_count >= 20, 60, what="20 uploaded")

    assert cancelling.cancel(session) == "cancelled"
    worker.join(60)

    assert not worker.is_alive()
    session.refresh_from_db()
    counts = _status_counts(session)
    assert session.status == SessionStatus.CANCELLED and session.finished_at is not None
    assert counts[FileStatus.UPLOADED] < n, "the cancel came too late to prove anything"
    assert counts[FileStatus.PENDING] == counts[FileStatus.UPLOADING] == counts[FileStatus.FAILED] == 0
    assert counts[FileStatus.UPLOADED] + counts[FileStatus.CANCELLED] == n
    assert (session.uploaded_count, session.cancelled_count, session.pending_count) == (
        counts[FileStatus.UPLOADED], counts[FileStatus.CANCELLED], 0)
    assert fault_proxy.count("PUT") == counts[FileStatus.UPLOADED], "no cancelled file was sent"
    assert len(remote_keys(s3_server, bucket)) == counts[FileStatus.UPLOADED]

    queued = retrying.queue_retry_round(session, start=False)
    assert (queued.cancelled, queued.failed) == (counts[FileStatus.CANCELLED], 0)
    uploading.drain(session.pk)

    session.refresh_from_db()
    assert (session.status, session.uploaded_count, session.cancelled_count) == (SessionStatus.COMPLETED, n, 0)
    assert len(remote_keys(s3_server, bucket)) == n
    assert fault_proxy.count("PUT") == n, "every file was sent exactly once over both runs"


def test_cancel_before_the_scan_ends_it_at_once(make_project, s3_server, source):
    write_files(source, {"a.wav": "a"})
    session = starting.create_session(s3_project(make_project, s3_server.endpoint_url, s3_server.make_bucket()))

    assert cancelling.cancel(session) == "cancelled"
    stats = pipeline.scan_session(session.pk, start_uploads=False)  # the queued scan task runs later

    session.refresh_from_db()
    assert (session.status, stats.files, session.files.count()) == (SessionStatus.CANCELLED, 0, 0)
    assert session.finished_at is not None
    with pytest.raises(errors.RetryError, match="before its scan finished; start a new session"):
        retrying.queue_retry_round(session)


@pytest.mark.usefixtures("sync_tasks", "loopback_allowed")
def test_cancelled_session_notifies_when_the_project_always_wants_to_know(make_project, s3_server, source,
                                                                          receiver):
    project = s3_project(make_project, s3_server.endpoint_url, s3_server.make_bucket(), notify_url=receiver.url(),
                         notify_on="always")
    session = starting.create_session(project)

    cancelling.cancel(session)

    assert [r.json()["status"] for r in receiver.requests] == ["cancelled"]


@pytest.mark.usefixtures("sync_tasks")
def test_cancel_of_an_ended_session_stops_its_automatic_rounds(make_project, s3_server, fault_proxy, source):
    write_files(source, {"a.wav": "a"})
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=3,
                         retry_backoff_base=3600)
    fault_proxy.fail_next(8, "500")
    session = run_session_inline(project)
    retrying.queue_retry_round(session, auto=True)
    session.refresh_from_db()
    assert session.next_retry_at is not None and Schedule.objects.filter(func=retrying.ROUND_TASK).exists()

    assert cancelling.cancel(session) == "stopped automatic retries"

    session.refresh_from_db()
    assert (session.status, session.auto_retry, session.next_retry_at) == ("completed_with_errors", False, None)
    assert not Schedule.objects.filter(func=retrying.ROUND_TASK).exists()
    assert cancelling.cancel(session) == "", "nothing left to cancel"
