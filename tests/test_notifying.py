"""Notifications: the JSON body, its signature, retries, the record of every attempt, the outbound
policy and URL secrets as the rows see them, and the automatic notification at the end of a
session; against a real HTTP receiver on loopback (allowed explicitly: loopback_allowed)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from projects.errors import ConfigError
from projects.models import ConfigHistory, Project
from sessions_app import notifying
from sessions_app.models import FileStatus, FileUpload, Notification, SessionStatus, SyncSession
from tests.conftest import run_session_inline, write_files
from tests.sessions_helpers import fast_uploads, s3_project, sync_tasks  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_uploads", "loopback_allowed")


@pytest.fixture
def files(source):
    return write_files(source, {"a.wav": "aaaa", "day1/b.wav": "bbbbbb", "c.wav": "cc"})


@pytest.fixture
def finished(make_project, s3_server, fault_proxy, files):
    """A session that ended with one permanently failed file (c.wav: 403)."""
    bucket = s3_server.make_bucket()
    project = s3_project(make_project, fault_proxy.endpoint_url, bucket, max_retries=0)
    fault_proxy.fail_next(1, "403", path_contains="c.wav")
    session = run_session_inline(project)
    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    return session


SLACK_TOKEN = "abcDEF123ghiJKL456mnoPQR"


def _set(project, **fields) -> None:
    for k, v in fields.items():
        setattr(project, k, v)
    project.save()


def test_body_summarises_the_session_and_lists_its_failed_files(finished, receiver, fault_proxy):
    row = notifying.deliver(finished, receiver.url(), Notification.Trigger.COMMAND)

    assert (row.succeeded, row.status_code, row.attempt, row.error) == (True, 200, 1, "")
    assert '"ok": true' in row.response_excerpt
    (req,) = receiver.wait_for(1)
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("DataUploader/")
    assert req.headers["idempotency-key"] == row.idempotency_key
    body = req.json()
    finished.refresh_from_db()
    assert body["session_id"] == finished.pk
    assert body["project"] == "test-project"
    assert body["destination"]["kind"] == "s3"
    assert body["destination"]["prefix"] == "rec"
    assert body["destination"]["bucket"] == finished.project.destination_options["bucket"]
    assert body["status"] == "completed_with_errors"
    assert (body["total_files"], body["files_uploaded"], body["files_skipped"], body["files_failed"]) == (3, 2, 0, 1)
    assert body["bytes_uploaded"] == 10
    assert body["started_at"] == finished.started_at.isoformat()
    assert body["finished_at"] == finished.finished_at.isoformat()
    assert body["duration_seconds"] == round((finished.finished_at - finished.started_at).total_seconds(), 3)
    assert body["admin_url"].endswith(f"/admin/sessions_app/syncsession/{finished.pk}/change/")
    assert body["failed_files"] == [{"path": "c.wav", "error": FileUpload.objects.get(relative_path="c.wav").last_error,
                                     "permanent": True}]
    assert "403" in body["failed_files"][0]["error"]
    assert body["failed_files_truncated"] is False


def test_failed_file_list_stops_at_1000_with_a_flag(make_project, source, receiver):
    project = make_project({"type": "local", "path": str(source.parent / "out")})
    now = timezone.now()
    session = SyncSession.objects.create(project=project, status=SessionStatus.COMPLETED_WITH_ERRORS,
                                         started_at=now, finished_at=now, failed_count=1001, found_count=1001)
    FileUpload.objects.bulk_create(
        FileUpload(session=session, project=project, relative_path=f"f{i:04d}.wav", status=FileStatus.FAILED,
                   last_error="boom") for i in range(1001))

    notifying.deliver(session, receiver.url())

    body = receiver.wait_for(1)[0].json()
    assert len(body["failed_files"]) == 1000
    assert body["failed_files"][0] == {"path": "f0000.wav", "error": "boom", "permanent": False}
    assert body["failed_files"][-1]["path"] == "f0999.wav"
    assert body["failed_files_truncated"] is True
    assert body["files_failed"] == 1001


def test_signature_verifies_with_the_shared_secret(finished, receiver, monkeypatch):
    secret = "s3cr3t-shared-with-the-receiver"
    monkeypatch.setenv("UPLOADER_SECRET_HOOK", secret)
    _set(finished.project, notify_secret_env="UPLOADER_SECRET_HOOK")

    row = notifying.deliver(finished, receiver.url())

    req = receiver.wait_for(1)[0]
    # What the README tells a receiver to do, with nothing of ours:
    expected = "sha256=" + hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(req.headers["x-uploader-signature"], expected)
    tampered = req.body.replace(b'"files_failed":1', b'"files_failed":0')
    assert tampered != req.body
    forged = "sha256=" + hmac.new(secret.encode(), tampered, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(req.headers["x-uploader-signature"], forged)
    assert notifying.verify(req.body, secret, req.headers["x-uploader-signature"])
    stored = json.dumps(list(Notification.objects.values()), default=str)
    assert secret not in stored and row.succeeded


def test_unsigned_without_a_secret(finished, receiver):
    notifying.deliver(finished, receiver.url())
    assert "x-uploader-signature" not in receiver.wait_for(1)[0].headers


def test_secret_variable_that_is_not_set_is_an_error_and_nothing_is_sent(finished, receiver, monkeypatch):
    monkeypatch.delenv("UPLOADER_SECRET_HOOK_UNSET", raising=False)
    _set(finished.project, notify_secret_env="UPLOADER_SECRET_HOOK_UNSET")

    row = notifying.deliver(finished, receiver.url())

    assert not row.succeeded
    assert "UPLOADER_SECRET_HOOK_UNSET, which is not set" in row.error
    assert receiver.requests == []


def test_server_errors_are_retried_under_one_idempotency_key(finished, receiver):
    receiver.fail_next(2, 500)

    row = notifying.deliver(finished, receiver.url())

    reqs = receiver.wait_for(3)
    assert len(reqs) == 3
    assert len({r.headers["idempotency-key"] for r in reqs}) == 1
    assert len({r.body for r in reqs}) == 1
    assert (row.succeeded, row.attempt) == (True, 3)
    attempts = list(finished.notifications.order_by("attempt").values_list("attempt", "status_code", "succeeded",
                                                                             "error"))
    assert attempts == [(1, 500, False, "500 Internal Server Error: server error"),
                        (2, 500, False, "500 Internal Server Error: server error"), (3, 200, True, "")]


def test_404_is_not_retried(finished, receiver):
    receiver.fail_next(5, 404)

    row = notifying.deliver(finished, receiver.url())

    assert len(receiver.requests) == 1
    assert (row.succeeded, row.status_code, row.attempt) == (False, 404, 1)
    assert row.error == "404 Not Found: the endpoint refused the notification (not retried)"
    assert finished.notifications.count() == 1


def test_retries_stop_after_the_last_attempt(finished, receiver, settings):
    settings.NOTIFY_ATTEMPTS = 3
    receiver.fail_next(10, 503)

    row = notifying.deliver(finished, receiver.url())

    assert len(receiver.requests) == 3
    assert (row.succeeded, row.attempt, row.status_code) == (False, 3, 503)


def test_timeout_is_retried(finished, receiver):
    _set(finished.project, notify_timeout=0.3)
    receiver.stall_next(1)

    row = notifying.deliver(finished, receiver.url())

    assert (row.succeeded, row.attempt) == (True, 2)
    first = finished.notifications.get(attempt=1)
    assert (first.status_code, first.error) == (None, "no answer within 0.3s (timeout)")


def test_refused_connection_is_a_clear_error(finished, refused_url, settings):
    settings.NOTIFY_ATTEMPTS = 2
    port = refused_url.split(":")[2].split("/")[0]

    row = notifying.deliver(finished, refused_url)

    assert not row.succeeded and row.attempt == 2
    assert row.error == f"cannot connect to 127.0.0.1:{port}: Connection refused"


def test_password_in_the_url_is_never_recorded(finished, receiver):
    url = receiver.url().replace("http://", "http://hook-user:hunter2@")

    row = notifying.deliver(finished, url)

    assert row.succeeded
    assert row.url == receiver.url()
    assert receiver.requests[0].headers["authorization"] == "Basic aG9vay11c2VyOmh1bnRlcjI="  # hook-user:hunter2
    assert "hunter2" not in json.dumps(list(Notification.objects.values()), default=str)


def test_tokens_in_the_path_or_query_are_sent_but_never_recorded(finished, receiver):
    row = notifying.deliver(finished, receiver.url(f"/services/T0AAAA1BB/{SLACK_TOKEN}?key=k3y-s3cret"))

    assert receiver.requests[0].path == f"/services/T0AAAA1BB/{SLACK_TOKEN}?key=k3y-s3cret"
    assert row.url == receiver.url("/services/T0AAAA1BB/***?key=***")
    assert row.url in notifying.outcome_text(row)
    stored = json.dumps(list(Notification.objects.values()), default=str)
    assert SLACK_TOKEN not in stored and "k3y-s3cret" not in stored


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook"])
def test_only_http_urls_are_accepted(finished, url):
    with pytest.raises(notifying.NotifyError, match="must be an http:// or https:// URL"):
        notifying.deliver(finished, url)
    assert not Notification.objects.exists()


def test_each_attempt_row_is_saved_before_the_request_and_updated_after(finished, receiver):
    from django.db.models.signals import post_save

    seen: list[tuple[bool, int]] = []

    def on_save(sender, instance, created, **kwargs):
        seen.append((created, len(receiver.requests)))

    post_save.connect(on_save, sender=Notification, dispatch_uid="test-rows")
    try:
        row = notifying.deliver(finished, receiver.url())
    finally:
        post_save.disconnect(sender=Notification, dispatch_uid="test-rows")

    assert row.succeeded
    assert seen == [(True, 0), (False, 1)], "created with nothing sent yet, updated once the answer came"


# -- the outbound policy, as the rows record it ------------------------------------------------------


def test_internal_address_is_refused_and_recorded_without_contacting_it(finished, receiver, settings):
    """The SSRF: an internal service (here the receiver stands for 127.0.0.1:6379) answered, and its
    reply was kept on the row for the admin to read. Now refused, permanently, on the row."""
    reproduced = notifying.deliver(finished, receiver.url("/internal"))
    assert '"ok": true' in reproduced.response_excerpt

    settings.NOTIFY_ALLOWED_NETWORKS = []
    row = notifying.deliver(finished, receiver.url("/internal"))

    assert (row.succeeded, row.attempt, row.status_code, row.response_excerpt) == (False, 1, None, "")
    assert row.error.startswith("refused 127.0.0.1: 127.0.0.1 is a loopback address; ")
    settings.NOTIFY_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    notifying.deliver(finished, receiver.url("/internal"))
    assert receiver.connections == 2, "the refused notification opened no connection (accepts are in order)"


def test_a_slow_answer_ends_at_the_deadline_and_is_retried(finished, receiver, settings):
    settings.NOTIFY_ATTEMPTS = 2
    _set(finished.project, notify_timeout=0.3)
    receiver.trickle_next(1)

    row = notifying.deliver(finished, receiver.url())

    assert (row.succeeded, row.attempt) == (True, 2)
    assert finished.notifications.get(attempt=1).error == "no answer within 0.3s (timeout)"
    assert receiver.wait_for_hang_up() > 0


def test_the_response_excerpt_keeps_1_kib(finished, receiver):
    receiver.huge_next(1, 64 * 1024 * 1024)

    row = notifying.deliver(finished, receiver.url())

    assert row.succeeded and row.response_excerpt == "x" * 1024


# -- the URL from the environment (notify_url_env) -------------------------------------------------


@pytest.fixture
def hook_url(receiver, monkeypatch) -> str:
    url = receiver.url(f"/services/T0AAAA1BB/{SLACK_TOKEN}")
    monkeypatch.setenv("UPLOADER_SECRET_HOOK_URL", url)
    return url


def test_url_from_the_environment_is_used_and_never_stored(make_project, source, receiver, hook_url):
    project = make_project({"type": "local", "path": str(source.parent / "out")}, notify_url_env="UPLOADER_SECRET_HOOK_URL")
    session = run_session_inline(project)

    row = notifying.deliver(session)

    assert row.succeeded and receiver.requests[0].path == f"/services/T0AAAA1BB/{SLACK_TOKEN}"
    assert row.url == receiver.url("/services/T0AAAA1BB/***")
    assert project.effective_config()["notify_url_env"] == "UPLOADER_SECRET_HOOK_URL"
    stored = json.dumps([list(m.objects.values()) for m in (Notification, ConfigHistory, Project)], default=str)
    assert SLACK_TOKEN not in stored and "UPLOADER_SECRET_HOOK_URL" in stored


def test_url_variable_that_is_not_set_is_a_clear_error(make_project, source, monkeypatch):
    monkeypatch.delenv("UPLOADER_SECRET_HOOK_URL_UNSET", raising=False)
    project = make_project({"type": "local", "path": str(source.parent / "out")},
                           notify_url_env="UPLOADER_SECRET_HOOK_URL_UNSET")
    session = run_session_inline(project)

    with pytest.raises(notifying.NotifyError, match="notify_url_env names UPLOADER_SECRET_HOOK_URL_UNSET, which is not set"):
        notifying.deliver(session)


def test_notify_url_and_notify_url_env_do_not_go_together(make_project, source):
    with pytest.raises(ConfigError, match="notify_url_env: give notify_url or notify_url_env, not both"):
        make_project({"type": "local", "path": str(source.parent / "out")}, notify_url="https://hooks.example.com/",
                     notify_url_env="UPLOADER_SECRET_HOOK_URL")


def test_config_history_redacts_the_token_of_a_notify_url(make_project, source):
    project = make_project({"type": "local", "path": str(source.parent / "out")},
                           notify_url=f"https://hooks.slack.com/services/T0AAAA1BB/B0CCCC2DD/{SLACK_TOKEN}?x=1")

    (history,) = ConfigHistory.objects.filter(project=project)

    assert history.config["notify_url"] == "https://hooks.slack.com/services/T0AAAA1BB/B0CCCC2DD/***?x=***"
    assert SLACK_TOKEN not in history.diff_from_previous()


# -- automatic notification at the end of a session ---------------------------------------------------


@pytest.mark.usefixtures("sync_tasks")
@pytest.mark.parametrize(
    "notify_on, fail, expected",
    [("always", True, 1), ("always", False, 1), ("completed", False, 1), ("completed", True, 0), ("never", False, 0)],
)
def test_session_end_notifies_when_the_project_says_so(make_project, s3_server, fault_proxy, files, receiver,
                                                       notify_on, fail, expected):
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=0,
                         notify_url=receiver.url(), notify_on=notify_on)
    if fail:
        fault_proxy.fail_next(1, "403", path_contains="a.wav")

    session = run_session_inline(project)

    assert len(receiver.requests) == expected
    assert Notification.objects.filter(session=session, trigger="auto", succeeded=True).count() == expected
    if expected:
        assert receiver.requests[0].json()["status"] == session.status


def test_session_end_queues_the_notification_as_a_task(make_project, s3_server, files, receiver):
    """Without sync_tasks: the upload task only queues it, a worker delivers it later."""
    project = s3_project(make_project, s3_server.endpoint_url, s3_server.make_bucket(), notify_url=receiver.url(),
                         notify_on="always")

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED
    assert receiver.requests == []
    queued = [q.task for q in OrmQ.objects.all()]
    assert [(t["func"], t["args"]) for t in queued] == [("sessions_app.tasks.notify", (session.pk, "auto", ""))]


@pytest.mark.usefixtures("sync_tasks")
def test_automatic_rounds_notify_once_at_the_very_end(make_project, s3_server, fault_proxy, files, receiver):
    from django.core.management import call_command

    from tests.conftest import wait_for
    from tests.sessions_helpers import run_due_schedules

    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=2,
                         retry_backoff_base=0.01, retry_backoff_cap=0.01, notify_url=receiver.url(),
                         notify_on="always")
    fault_proxy.fail_next(6, "500", path_contains="a.wav")  # the upload and round 1 (3 tries each)
    session = run_session_inline(project)
    assert len(receiver.requests) == 1, "an ordinary end notifies"

    call_command("retry", str(session.pk), "--auto", stdout=open("/dev/null", "w"))
    wait_for(lambda: run_due_schedules() and SyncSession.objects.get().status == SessionStatus.COMPLETED, 30)

    assert len(receiver.requests) == 2, "round 1 ended with a round 2 scheduled: no notification then"
    assert receiver.requests[1].json()["status"] == "completed"
    assert receiver.requests[1].json()["retry_rounds"] == 2


@pytest.mark.usefixtures("sync_tasks")
def test_session_end_notifies_the_url_from_the_environment(make_project, s3_server, files, receiver, hook_url):
    project = s3_project(make_project, s3_server.endpoint_url, s3_server.make_bucket(), notify_url_env="UPLOADER_SECRET_HOOK_URL",
                         notify_on="always")

    session = run_session_inline(project)

    assert [r.json()["session_id"] for r in receiver.requests] == [session.pk]
