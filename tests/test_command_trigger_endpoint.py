"""The `trigger_endpoint` command: notify now, print every attempt, exit 0 / 1 / 2."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from sessions_app.models import Notification
from tests.conftest import manage, manage_env, run_session_inline, write_files
from tests.sessions_helpers import fast_uploads, s3_project  # noqa: F401

pytestmark = pytest.mark.usefixtures("fast_uploads", "loopback_allowed")


@pytest.fixture
def session(make_project, s3_server, source):
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb"})
    project = s3_project(make_project, s3_server.endpoint_url, s3_server.make_bucket())
    return run_session_inline(project)


def _trigger(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("trigger_endpoint", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_posts_the_summary_to_the_given_url(session, receiver):
    code, out, err = _trigger(str(session.pk), "--url", receiver.url("/given"))

    assert (code, err) == (0, "")
    assert "attempt 1: 200" in out
    assert f"session {session.pk}: notified {receiver.url('/given')}: 200" in out
    (req,) = receiver.requests
    assert req.path == "/given"
    assert (req.json()["session_id"], req.json()["status"]) == (session.pk, "completed")
    assert Notification.objects.get().trigger == Notification.Trigger.COMMAND


def test_defaults_to_the_projects_notify_url(session, receiver):
    session.project.notify_url = receiver.url("/project-hook")
    session.project.save()

    code, _, _ = _trigger(str(session.pk))

    assert code == 0
    assert [r.path for r in receiver.requests] == ["/project-hook"]


def test_server_errors_are_retried_and_every_attempt_printed(session, receiver):
    receiver.fail_next(2, 502)

    code, out, _ = _trigger(str(session.pk), "--url", receiver.url())

    assert code == 0
    assert "attempt 1: 502" in out and "attempt 2: 502" in out and "attempt 3: 200" in out
    assert "after 3 attempts" in out
    assert len(receiver.requests) == 3


def test_404_exits_1_with_a_clear_error_and_no_retry(session, receiver):
    receiver.fail_next(1, 404)

    code, out, err = _trigger(str(session.pk), "--url", receiver.url())

    assert code == 1
    assert "404 Not Found: the endpoint refused the notification (not retried)" in err
    assert err.startswith("error: ")
    assert len(receiver.requests) == 1


def test_unreachable_endpoint_exits_1(session, refused_url, settings):
    settings.NOTIFY_ATTEMPTS = 2

    code, out, err = _trigger(str(session.pk), "--url", refused_url)

    assert code == 1
    assert "Connection refused" in err
    assert "attempt 2:" in out


def test_an_internal_address_is_refused_with_exit_1_and_nothing_sent(session, receiver, settings):
    settings.NOTIFY_ALLOWED_NETWORKS = []

    code, out, err = _trigger(str(session.pk), "--url", receiver.url())

    assert code == 1
    assert "refused 127.0.0.1: 127.0.0.1 is a loopback address" in err
    assert out.count("attempt ") == 1, "a refused address is not retried"
    assert receiver.requests == []


def test_tokens_in_the_url_are_not_printed(session, receiver):
    code, out, err = _trigger(str(session.pk), "--url", receiver.url("/hook/abcDEF123ghiJKL456mnoPQR?token=s3cr3t"))

    assert code == 0
    assert f"notified {receiver.url('/hook/***?token=***')}: 200" in out
    assert "abcDEF123ghiJKL456mnoPQR" not in out + err and "s3cr3t" not in out + err


def test_no_url_anywhere_exits_2(session):
    with pytest.raises(CommandError, match="has no notify_url; give a URL") as exc:
        call_command("trigger_endpoint", str(session.pk))
    assert exc.value.returncode == 2


def test_a_url_that_is_not_http_exits_2(session):
    with pytest.raises(CommandError, match="must be an http:// or https:// URL") as exc:
        call_command("trigger_endpoint", str(session.pk), "--url", "ftp://files.example.com/drop")
    assert exc.value.returncode == 2
    assert not Notification.objects.exists()


def test_from_the_shell_exit_codes_and_streams(transactional_db, session, receiver, loopback_allowed):
    env = manage_env(NOTIFY_ALLOWED_NETWORKS=loopback_allowed)
    ok = manage("trigger_endpoint", str(session.pk), "--url", receiver.url(), env=env)
    receiver.fail_next(1, 403)
    refused = manage("trigger_endpoint", str(session.pk), "--url", receiver.url(), env=env)
    unknown = manage("trigger_endpoint", "999999", "--url", receiver.url(), env=env)
    internal = manage("trigger_endpoint", str(session.pk), "--url", receiver.url(),
                      env=manage_env(NOTIFY_ALLOWED_NETWORKS=""))

    assert (ok.returncode, refused.returncode, unknown.returncode, internal.returncode) == (0, 1, 2, 1)
    assert "notified" in ok.stdout
    assert "403 Forbidden" in refused.stderr
    assert "no session with id 999999" in unknown.stderr
    assert "is a loopback address" in internal.stderr
    assert len(receiver.requests) == 2
