"""GET /api/uploader-stats/: the upload queue's figures per project and in total, whether a qcluster
is alive, and who may see what."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from django.test import Client

from sessions_app import uploading
from sessions_app.models import SyncSession
from sessions_app.queueing import queue_upload
from tests.conftest import wait_for, write_files

URL = "/api/uploader-stats/"


@pytest.fixture(autouse=True)
def quick_drains(settings) -> None:
    settings.QUEUE_LINGER_SECONDS = 0
    settings.UPLOAD_FLUSH_SECONDS = 0.05


@pytest.fixture
def camera(make_project, source, tmp_path: Path):
    """5 files queued and drained (4 uploaded, 1 failed: gone before its upload), then 2 waiting."""
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera")
    write_files(source, {f"{i}.jpg": "x" * (i + 1) for i in range(7)})
    for i in range(5):
        assert queue_upload(project, f"{i}.jpg")
    (source / "3.jpg").unlink()
    session = SyncSession.objects.get(project=project, kind=SyncSession.Kind.STREAM)
    uploading.drain(session.pk)
    for i in (5, 6):
        assert queue_upload(project, f"{i}.jpg")
    return project


@pytest.fixture
def doorbell(make_project, tmp_path: Path):
    source = write_files(tmp_path / "doorbell", {"ring.jpg": "ring"})
    project = make_project({"type": "local", "path": str(tmp_path / "dest2")}, project="doorbell", source_dir=source)
    assert queue_upload(project, "ring.jpg")
    return project


def get(client: Client, token: str | None = None):
    return client.get(URL, headers={"Authorization": f"Bearer {token}"} if token else {})


def test_figures_of_a_project(client, camera):
    r = get(client, camera.issue_api_token())

    assert r.status_code == 200
    body = r.json()
    stats = body["stats"]
    assert {k: stats[k] for k in ("total_queued", "total_uploaded", "total_failed", "queue_size")} == {
        "total_queued": 7, "total_uploaded": 4, "total_failed": 1, "queue_size": 2}
    assert stats["last_success_at"] is not None
    assert stats["last_error"]["path"] == "3.jpg" and "not found" in stats["last_error"]["message"]
    assert stats["last_error"]["at"] is not None
    assert body["running"] is False
    [entry] = body["projects"]
    assert entry["project"] == "camera" and entry["stats"]["queue_limit"] == 100
    assert entry["destination"] == {"kind": "local", "ok": None, "message": "", "checked_at": None}


def test_a_token_sees_its_own_project_only(client, camera, doorbell):
    body = get(client, doorbell.issue_api_token()).json()

    assert [p["project"] for p in body["projects"]] == ["doorbell"]
    assert (body["stats"]["total_queued"], body["stats"]["queue_size"], body["stats"]["last_error"]) == (1, 1, None)


def test_staff_see_every_project_and_the_totals(client, camera, doorbell, django_user_model):
    client.force_login(django_user_model.objects.create_user("ops", is_staff=True))

    body = get(client).json()

    assert [p["project"] for p in body["projects"]] == ["camera", "doorbell"]
    totals = body["stats"]
    assert (totals["total_queued"], totals["total_uploaded"], totals["total_failed"], totals["queue_size"]) == (
        8, 4, 1, 3)
    assert totals["last_error"]["project"] == "camera"
    assert totals["last_success_at"] == body["projects"][0]["stats"]["last_success_at"]


def test_a_project_that_never_queued_has_zeroes(client, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")})

    stats = get(client, project.issue_api_token()).json()["stats"]

    assert stats == {"total_queued": 0, "total_uploaded": 0, "total_failed": 0, "queue_size": 0,
                     "last_success_at": None, "last_error": None}


def test_anonymous_or_bad_token_401_and_non_staff_403(client, camera, django_user_model):
    assert get(client).status_code == 401
    assert get(client, "nope").status_code == 401
    client.force_login(django_user_model.objects.create_user("visitor"))
    assert get(client).status_code == 403
    assert get(client, "nope").status_code == 401  # a wrong token is never rescued by a login


@pytest.mark.slow
def test_running_while_a_qcluster_is_alive(client, cluster_factory, make_project, tmp_path):
    token = make_project({"type": "local", "path": str(tmp_path / "dest")}).issue_api_token()
    wait_for(lambda: get(client, token).json()["running"] is False, 10, what="no cluster left from other tests")

    cluster = cluster_factory()
    wait_for(lambda: get(client, token).json()["running"] is True, 60, what="running")
    os.kill(cluster.proc.pid, signal.SIGTERM)
    cluster.proc.wait(60)

    wait_for(lambda: get(client, token).json()["running"] is False, 10, what="not running once stopped")
