"""Admin actions on sessions and files: retry, notify, cancel; each behind its own permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.urls import reverse
from django_q.models import OrmQ

from sessions_app import starting
from sessions_app.models import FileStatus, FileUpload, Notification, SessionStatus, SyncSession
from tests.conftest import run_session_inline, write_files
from tests.sessions_helpers import fast_uploads, s3_project, sync_tasks  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_uploads")

SESSIONS = reverse("admin:sessions_app_syncsession_changelist")
FILES = reverse("admin:sessions_app_fileupload_changelist")
SESSION_ACTIONS = {"retry_failed", "retry_failed_including_permanent", "notify_endpoint", "cancel_sessions"}


def _staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    perms = Permission.objects.filter(content_type__app_label="sessions_app",
                                      codename__in=["view_syncsession", "view_fileupload", *codenames])
    user.user_permissions.add(*perms)
    return user


@pytest.fixture
def operator(db, client):
    client.force_login(_staff("operator", "retry_syncsession", "notify_syncsession", "cancel_syncsession"))
    return client


@pytest.fixture
def viewer(db, client):
    client.force_login(_staff("viewer"))
    return client


@pytest.fixture
def failed_session(make_project, s3_server, fault_proxy, source):
    """Ended with b.wav failed (transient: two 500s) and c.wav failed (permanent: 403)."""
    write_files(source, {"a.wav": "aaaa", "b.wav": "bbbbbb", "c.wav": "cc"})
    project = s3_project(make_project, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=1)
    fault_proxy.fail_next(2, "500", path_contains="b.wav")
    fault_proxy.fail_next(1, "403", path_contains="c.wav")
    session = run_session_inline(project)
    assert (session.status, session.failed_count) == (SessionStatus.COMPLETED_WITH_ERRORS, 2)
    return session


def _actions(client, changelist: str) -> set[str]:
    response = client.get(changelist)
    assert response.status_code == 200
    form = response.context["action_form"]  # None: no action at all for this user
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def _post(client, changelist: str, action: str, *pks: int, **extra) -> list[str]:
    response = client.post(changelist, {"action": action, "_selected_action": [str(pk) for pk in pks], **extra},
                           follow=True)
    assert response.status_code == 200
    return [str(m) for m in get_messages(response.wsgi_request)]


# -- permissions -----------------------------------------------------------------------------------


def test_staff_without_the_permissions_sees_none_of_the_actions(viewer, failed_session):
    assert not _actions(viewer, SESSIONS) & SESSION_ACTIONS
    assert "retry_selected_files" not in _actions(viewer, FILES)


def test_staff_with_the_permissions_sees_them(operator, failed_session):
    assert SESSION_ACTIONS <= _actions(operator, SESSIONS)
    assert "retry_selected_files" in _actions(operator, FILES)


@pytest.mark.parametrize("url, action", [(SESSIONS, a) for a in sorted(SESSION_ACTIONS)]
                         + [(FILES, "retry_selected_files")])
def test_crafted_post_without_the_permission_is_403(viewer, failed_session, url, action):
    pk = failed_session.pk if url == SESSIONS else FileUpload.objects.get(relative_path="b.wav").pk
    response = viewer.post(url, {"action": action, "_selected_action": [str(pk)], "confirm": "yes",
                                 "url": "http://127.0.0.1:9/x"})
    assert response.status_code == 403
    failed_session.refresh_from_db()
    assert (failed_session.status, failed_session.retry_round) == (SessionStatus.COMPLETED_WITH_ERRORS, 0)
    assert not Notification.objects.exists()


def test_one_permission_does_not_grant_the_others(client, failed_session):
    client.force_login(_staff("retrier", "retry_syncsession"))
    assert _actions(client, SESSIONS) & SESSION_ACTIONS == {"retry_failed", "retry_failed_including_permanent"}
    response = client.post(SESSIONS, {"action": "cancel_sessions", "_selected_action": [str(failed_session.pk)]})
    assert response.status_code == 403


# -- retry ------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("sync_tasks")
def test_retry_failed_files_takes_the_transient_ones_and_says_what_it_did(operator, failed_session, make_project,
                                                                          s3_server):
    running = starting.create_session(failed_session.project)
    completed = SyncSession.objects.create(project=failed_session.project, status=SessionStatus.COMPLETED,
                                           scan_finished_at=failed_session.scan_finished_at)

    msgs = _post(operator, SESSIONS, "retry_failed", failed_session.pk, running.pk, completed.pk)

    assert msgs == ["Queued 1 file from 1 session; 1 session ignored: nothing to retry (or only permanent errors); "
                    "1 session ignored: still running"]
    b, c = FileUpload.objects.filter(session=failed_session).exclude(relative_path="a.wav").order_by("relative_path")
    assert (b.status, b.retries) == (FileStatus.UPLOADED, 1)
    assert (c.status, c.retries, c.error_permanent) == (FileStatus.FAILED, 0, True)


@pytest.mark.usefixtures("sync_tasks")
def test_retry_including_permanent_takes_every_failed_file(operator, failed_session):
    msgs = _post(operator, SESSIONS, "retry_failed_including_permanent", failed_session.pk)

    assert msgs == ["Queued 2 files from 1 session"]
    failed_session.refresh_from_db()
    assert (failed_session.status, failed_session.uploaded_count) == (SessionStatus.COMPLETED, 3)


@pytest.mark.usefixtures("sync_tasks")
def test_retry_selected_files_ignores_those_that_did_not_fail(operator, failed_session):
    pks = list(FileUpload.objects.filter(session=failed_session).values_list("pk", flat=True))

    msgs = _post(operator, FILES, "retry_selected_files", *pks)

    assert msgs == ["Queued 2 files from 1 session; 1 ignored: not failed"]
    assert set(FileUpload.objects.values_list("status", flat=True)) == {FileStatus.UPLOADED}


# -- notify -----------------------------------------------------------------------------------------


def test_notify_asks_for_the_url_then_queues_a_task_without_contacting_it(operator, failed_session, receiver,
                                                                         loopback_allowed):
    failed_session.project.notify_url = "http://user:secret@127.0.0.1:9/project-hook"
    failed_session.project.save()

    page = operator.post(SESSIONS, {"action": "notify_endpoint", "_selected_action": [str(failed_session.pk)]})

    assert page.status_code == 200
    assert [t.name for t in page.templates][0] == "admin/sessions_app/notify_confirm.html"
    html = page.content.decode()
    assert "http://127.0.0.1:9/project-hook" in html and "secret" not in html

    msgs = _post(operator, SESSIONS, "notify_endpoint", failed_session.pk, confirm="yes", url=receiver.url())

    assert msgs == [f"Queued the notification of 1 session to {receiver.url()}; a worker sends it and lists every "
                    f"attempt under the session"]
    queued = [q.task for q in OrmQ.objects.all()]
    assert [(t["func"], t["args"]) for t in queued] == [("sessions_app.tasks.notify",
                                                         (failed_session.pk, "admin", receiver.url()))]
    assert (receiver.connections, Notification.objects.count()) == (0, 0), "nothing sent inside the request"


@pytest.mark.usefixtures("sync_tasks", "loopback_allowed")
def test_the_queued_task_posts_the_summary_and_records_the_attempt(operator, failed_session, receiver):
    receiver.fail_next(1, 404)
    _post(operator, SESSIONS, "notify_endpoint", failed_session.pk, confirm="yes", url=receiver.url())
    failed_session.project.notify_url = receiver.url("/project-hook")
    failed_session.project.save()

    _post(operator, SESSIONS, "notify_endpoint", failed_session.pk, confirm="yes", url="")

    assert [r.path for r in receiver.requests] == ["/hook", "/project-hook"]
    assert sorted(f["path"] for f in receiver.requests[1].json()["failed_files"]) == ["b.wav", "c.wav"]
    rows = Notification.objects.order_by("id")
    assert [(n.trigger, n.succeeded, n.error) for n in rows] == [
        ("admin", False, "404 Not Found: the endpoint refused the notification (not retried)"), ("admin", True, "")]


@pytest.mark.usefixtures("sync_tasks")
def test_notify_to_an_internal_address_is_refused_on_the_attempt(operator, failed_session, receiver, settings):
    settings.NOTIFY_ALLOWED_NETWORKS = []

    _post(operator, SESSIONS, "notify_endpoint", failed_session.pk, confirm="yes", url=receiver.url())

    row = Notification.objects.get()
    assert row.error.startswith("refused 127.0.0.1: 127.0.0.1 is a loopback address")
    assert (row.response_excerpt, receiver.requests) == ("", [])


def test_notify_says_so_when_the_broker_cannot_take_the_task(operator, failed_session, receiver, refused_url,
                                                             monkeypatch):
    """The broker is django-q2's Redis one, pointed at a port nobody listens on."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", refused_url.replace("http://", "redis://").replace("/hook", "/0"))

    msgs = _post(operator, SESSIONS, "notify_endpoint", failed_session.pk, confirm="yes", url=receiver.url())

    assert len(msgs) == 1
    assert msgs[0].startswith(f"session {failed_session.pk}: cannot queue session-{failed_session.pk}:notify: "
                              f"ConnectionError: ")
    assert (receiver.connections, Notification.objects.count()) == (0, 0)


def test_notify_without_any_url_says_so(operator, failed_session):
    msgs = _post(operator, SESSIONS, "notify_endpoint", failed_session.pk, confirm="yes", url="")
    assert msgs == [f"session {failed_session.pk}: project 'test-project' has no notify_url; give a URL"]
    assert not OrmQ.objects.exists()


def test_notify_shows_a_url_from_the_environment_by_its_name(operator, failed_session):
    failed_session.project.notify_url_env = "HOOK_URL"
    failed_session.project.save()

    page = operator.post(SESSIONS, {"action": "notify_endpoint", "_selected_action": [str(failed_session.pk)]})

    assert "$HOOK_URL (from the environment)" in page.content.decode()


@pytest.mark.parametrize("url, error", [
    ("ftp://example.com/x", "must be an http:// or https:// URL"),
    ("https://hooks.example.com/in?token=s3cr3t", "this URL carries a credential"),
    ("https://hooks.slack.com/services/T0AAAA1BB/B0CCCC2DD/abcDEF123ghiJKL456mnoPQR", "this URL carries a credential"),
])
def test_notify_refuses_a_typed_url_that_is_not_http_or_carries_a_secret(operator, failed_session, url, error):
    page = operator.post(SESSIONS, {"action": "notify_endpoint", "_selected_action": [str(failed_session.pk)],
                                    "confirm": "yes", "url": url})
    assert page.status_code == 200
    assert error in page.content.decode()
    assert not OrmQ.objects.exists() and not Notification.objects.exists()


# -- cancel -----------------------------------------------------------------------------------------


def test_cancel_action_cancels_running_sessions_and_ignores_ended_ones(operator, failed_session):
    running = starting.create_session(failed_session.project)

    msgs = _post(operator, SESSIONS, "cancel_sessions", running.pk, failed_session.pk)

    assert msgs == ["Cancelled 1 session: transfers in flight finish, the remaining files are cancelled; "
                    "1 session ignored: not running"]
    running.refresh_from_db()
    assert running.status == SessionStatus.CANCELLED
