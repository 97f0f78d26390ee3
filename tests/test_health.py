"""Whether each SFTP destination answers, against the loopback sshd: recorded on the project,
shown in the admin and in the uploader stats, re-checked by the sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from projects.models import Project
from sessions_app import health, tasks
from tests.servers.sshd import sftp_options


@pytest.fixture
def sftp_project(make_project, sshd_server):
    sshd_server.start()  # a test may have left it stopped
    return make_project({"type": "sftp", **sftp_options(sshd_server)}, project="sftp-camera")


@pytest.fixture
def stopped_sshd(sshd_server):
    sshd_server.stop()
    try:
        yield sshd_server
    finally:
        sshd_server.start()


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def test_sftp_health_only_stats_the_remote_folder(make_project, sshd_server):
    sshd_server.start()
    remote = sshd_server.data_dir / "health" / "cam"
    remote.mkdir(parents=True)
    project = make_project({"type": "sftp", **sftp_options(sshd_server, remote_dir=str(remote))})
    assert health.check_destination(project) == (True, "ok")
    assert list(remote.iterdir()) == []  # no probe file, nothing written

    remote.rmdir()
    remote.parent.rmdir()
    ok, message = health.check_destination(project)
    assert ok is False and f"remote folder {remote} on" in message and "its parent does not exist" in message
    assert not remote.parent.exists()  # nothing created either


def test_answering_destination_is_recorded_ok(sftp_project):
    ok, message = health.check_destination(sftp_project)

    sftp_project.refresh_from_db()
    assert (ok, message) == (True, "ok")
    assert (sftp_project.health_ok, sftp_project.health_message) == (True, "ok")
    assert sftp_project.health_checked_at is not None


def test_server_down_is_recorded_with_the_reason(sftp_project, stopped_sshd):
    ok, message = health.check_destination(sftp_project)

    sftp_project.refresh_from_db()
    assert ok is False and sftp_project.health_ok is False
    assert "cannot connect" in message and sftp_project.health_message == message


def test_missing_remote_folder_parent_is_reported(make_project, sshd_server):
    options = sftp_options(sshd_server, remote_dir=str(sshd_server.data_dir / "no-such-parent" / "up"))
    project = make_project({"type": "sftp", **options})

    ok, message = health.check_destination(project)

    assert ok is False and "parent does not exist" in message


def test_a_check_does_not_count_as_a_config_change(sftp_project):
    updated_at = Project.objects.get(pk=sftp_project.pk).updated_at

    health.check_destination(sftp_project)

    assert Project.objects.get(pk=sftp_project.pk).updated_at == updated_at


def test_the_task(sftp_project):
    assert tasks.check_health(sftp_project.pk) == "sftp-camera: ok"


def test_sweep_queues_checks_of_sftp_destinations_when_due(sftp_project, make_project, tmp_path, settings):
    make_project({"type": "local", "path": str(tmp_path / "dest")}, project="local")

    assert health.enqueue_due_checks() == ["sftp-camera: destination check queued"]
    assert [q.name() for q in OrmQ.objects.all()] == [f"project-{sftp_project.pk}:health"]
    assert health.enqueue_due_checks() == []  # claimed: not queued again while it waits

    Project.objects.filter(pk=sftp_project.pk).update(
        health_checked_at=timezone.now() - timedelta(seconds=settings.HEALTH_CHECK_SECONDS + 1))
    assert health.enqueue_due_checks() == ["sftp-camera: destination check queued"]


def test_stats_show_the_destination_health(client, sftp_project, stopped_sshd):
    health.check_destination(sftp_project)

    body = client.get("/api/uploader-stats/", headers={"Authorization": f"Bearer {sftp_project.issue_api_token()}"})

    destination = body.json()["projects"][0]["destination"]
    assert (destination["kind"], destination["ok"]) == ("sftp", False)
    assert "cannot connect" in destination["message"] and destination["checked_at"]


def test_admin_action_checks_and_the_list_shows_it(admin_client, sftp_project):
    page = admin_client.get("/admin/projects/project/")
    assert "not checked yet" in page.content.decode()

    action = {"action": "check_health", "_selected_action": [sftp_project.pk]}
    done = admin_client.post("/admin/projects/project/", action, follow=True)

    text = done.content.decode()
    assert "Destination of sftp-camera answers" in text
    assert "icon-yes.svg" in text
    sftp_project.refresh_from_db()
    assert sftp_project.health_ok is True
