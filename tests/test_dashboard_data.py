"""GET /api/overview/: everything the Dashboard draws, in one JSON answer (staff only)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from projects.models import Project
from sessions_app import files, pipeline, starting, uploading
from sessions_app.models import FileUpload, Throughput
from sessions_app.overview import reason_of
from tests.conftest import run_session_inline, write_files


@pytest.fixture(autouse=True)
def fast_flush(settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1


def test_the_overview_needs_a_staff_login(client, django_user_model, db):
    assert client.get("/api/overview/").status_code == 302
    client.force_login(django_user_model.objects.create_user("plain", password="x"))
    assert client.get("/api/overview/").status_code == 302


def test_the_overview_has_last_syncs_today_week_charts_reasons_and_live_sessions(admin_client, make_project,
                                                                                  source, tmp_path):
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb", "gone.wav": "g"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    (source / "gone.wav").unlink()
    uploading.drain(session.pk)
    Throughput.objects.create(project=project, hour=timezone.now().replace(minute=0, second=0, microsecond=0)
                              - timedelta(days=3), uploaded=10, uploaded_bytes=1000)
    running = starting.create_session(project)
    running.mark_scanning()

    data = admin_client.get("/api/overview/").json()

    [row] = data["projects"]
    assert row["project"] == "test-project"
    assert (row["today_files"], row["today_bytes"], row["week_files"], row["week_bytes"]) == (2, 6, 12, 1006)
    assert row["last_session"]["id"] == running.pk and row["last_session"]["status"] == "scanning"
    hourly, daily = data["throughput"]["hourly"], data["throughput"]["daily"]
    assert len(hourly["labels"]) == 24 and len(daily["labels"]) == 30
    assert hourly["projects"][0]["files"][-1] == 2 and hourly["failed"][-1] == 1
    assert daily["projects"][0]["files"][-1] == 2 and daily["projects"][0]["files"][-4] == 10
    assert data["failure_reasons"] == [{"reason": "file not found: <path>", "files": 1}]
    assert [s["id"] for s in data["live"]] == [running.pk]
    assert data["live"][0]["url"] == f"/admin/sessions_app/syncsession/{running.pk}/change/"


def test_failure_reasons_group_files_by_error_without_their_paths_top_10(admin_client, make_project, source,
                                                                         tmp_path):
    session = starting.create_session(make_project({"type": "local", "path": str(tmp_path / "out")}))
    rows = [(session.pk, session.project_id, f"d/{i}.wav", f"d/{i}.wav", 1, 1.0, None, None, False)
            for i in range(24)]
    files.add_pending(session, rows)
    claimed = files.claim(session, 24)
    for i, row in enumerate(claimed):
        row.last_error = f"error kind {i % 12}: cannot open {source}/{row.relative_path}" if i < 23 else "timeout"
    files.record(session, [files.Outcome(row, "failed") for row in claimed])

    reasons = admin_client.get("/api/overview/").json()["failure_reasons"]

    assert len(reasons) == 10
    assert reasons[0] == {"reason": "error kind 0: cannot open <path>", "files": 2}
    assert all("d/" not in r["reason"] for r in reasons)


def test_a_reason_drops_the_files_own_path():
    assert reason_of("upload of a/b.wav refused", "a/b.wav") == "upload of <path> refused"
    assert reason_of("403 AccessDenied\ntraceback...", "x.wav") == "403 AccessDenied"
    assert reason_of("", "x.wav") == "(no message)"


def test_the_project_list_shows_the_last_session_with_progress_and_age(admin_client, make_project, source, tmp_path):
    write_files(source, {"a.wav": "a"})
    session = run_session_inline(make_project({"type": "local", "path": str(tmp_path / "out")}))

    page = admin_client.get("/admin/projects/project/").content.decode()

    assert f"#{session.pk} Completed</a>" in page
    assert 'title="100.0%"' in page
    assert " ago</small>" in page
    assert Project.objects.count() == 1 and FileUpload.objects.count() == 1
