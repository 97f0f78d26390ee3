"""The admin pages: lists with progress and counts, read-only detail pages, Start sync."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django_q.conf import Conf

from projects.models import ConfigHistory
from sessions_app.models import SessionStatus, SyncSession
from tests.conftest import run_session_inline, write_files


@pytest.fixture
def synced(make_project, source, tmp_path, settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1
    write_files(source, {"a.wav": "aaa", "b/c.wav": "cc"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    return run_session_inline(project)


def test_session_list_shows_progress_counts_and_bytes(admin_client, synced):
    page = admin_client.get("/admin/sessions_app/syncsession/").content.decode()
    assert "100.0%" in page and "Completed" in page
    assert "5\xa0bytes / 5\xa0bytes" in page


def test_session_detail_links_files_and_config_and_polls_live_counts(admin_client, synced):
    page = admin_client.get(f"/admin/sessions_app/syncsession/{synced.pk}/change/").content.decode()
    assert f"?session__id__exact={synced.pk}&status__exact=failed" in page
    assert f"/admin/projects/confighistory/{synced.config_id}/change/" in page
    assert f"/api/sessions/{synced.pk}/" in page
    live = admin_client.get(f"/api/sessions/{synced.pk}/").json()
    assert (live["status"], live["uploaded"], live["bytes_uploaded"]) == ("completed", 2, 5)


def test_files_are_searchable_and_filterable_and_read_only(admin_client, synced):
    page = admin_client.get("/admin/sessions_app/fileupload/?q=c.wav").content.decode()
    assert "b/c.wav" in page and ">a.wav<" not in page
    assert "b/c.wav" in admin_client.get("/admin/sessions_app/fileupload/?status__exact=uploaded").content.decode()
    file_id = synced.files.get(relative_path="a.wav").pk
    assert admin_client.post(f"/admin/sessions_app/fileupload/{file_id}/change/", {}).status_code == 403


def test_config_history_shows_the_change_from_the_previous_row(admin_client, make_project, tmp_path):
    make_project({"type": "local", "path": str(tmp_path / "out")}, upload_workers=4)
    make_project({"type": "local", "path": str(tmp_path / "out")}, upload_workers=9)
    latest = ConfigHistory.objects.order_by("-id").first()
    page = admin_client.get(f"/admin/projects/confighistory/{latest.pk}/change/").content.decode()
    assert "-  &quot;upload_workers&quot;: 4" in page and "+  &quot;upload_workers&quot;: 9" in page


def test_start_sync_action_queues_a_session_and_says_so(admin_client, make_project, source, tmp_path):
    write_files(source, {"a.wav": "a"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    resp = admin_client.post("/admin/projects/project/", {"action": "start_sync", "_selected_action": [project.pk]},
                             follow=True)
    session = SyncSession.objects.get()
    assert session.status == "queued"
    assert f"Started 1 sync session(s): test-project (session #{session.pk})" in resp.content.decode()


def test_start_sync_with_a_missing_source_reports_the_error(admin_client, make_project, source, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    source.rmdir()
    resp = admin_client.post("/admin/projects/project/", {"action": "start_sync", "_selected_action": [project.pk]},
                             follow=True)
    assert f"Not started: test-project: source_dir: folder not found: {source}" in resp.content.decode()
    assert not SyncSession.objects.exists()


def test_start_sync_needs_its_permission(client, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_project"))
    client.force_login(user)
    page = client.get("/admin/projects/project/").content.decode()
    assert 'value="start_sync"' not in page
    resp = client.post("/admin/projects/project/", {"action": "start_sync", "_selected_action": [project.pk]})
    assert resp.status_code == 403
    assert not SyncSession.objects.exists()


def test_start_sync_with_the_broker_unreachable_says_so_and_leaves_no_session_queued(
        admin_client, make_project, source, tmp_path, monkeypatch):
    write_files(source, {"a.wav": "a"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    # The Redis broker, on a port nobody listens on (django-q2 reads its settings once, into Conf).
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:1/0")
    resp = admin_client.post("/admin/projects/project/", {"action": "start_sync", "_selected_action": [project.pk]},
                             follow=True)
    session = SyncSession.objects.get()
    assert session.status == SessionStatus.FAILED and "cannot queue" in session.error
    page = resp.content.decode()
    assert f"Not started: test-project: session {session.pk} failed to start: cannot queue" in page
    assert "Started" not in page


def test_check_health_needs_the_change_permission(client, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_project"))
    client.force_login(user)
    assert 'value="check_health"' not in client.get("/admin/projects/project/").content.decode()
    resp = client.post("/admin/projects/project/", {"action": "check_health", "_selected_action": [project.pk]})
    assert resp.status_code == 403
    project.refresh_from_db()
    assert project.health_checked_at is None


def test_check_health_reports_the_answer_to_a_user_who_may_change_projects(client, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    user = User.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_project", "change_project"]))
    client.force_login(user)
    resp = client.post("/admin/projects/project/", {"action": "check_health", "_selected_action": [project.pk]},
                       follow=True)
    assert "Destination of test-project answers" in resp.content.decode()
    project.refresh_from_db()
    assert project.health_ok is True


def test_django_q_admin_pages_stay_available(admin_client):
    for url in ("/admin/django_q/schedule/", "/admin/django_q/success/", "/admin/django_q/failure/",
                "/admin/django_q/ormq/"):
        assert admin_client.get(url).status_code == 200, url


def test_session_page_shows_skip_counts_by_reason(admin_client, synced):
    again = run_session_inline(synced.project)
    page = admin_client.get(f"/admin/sessions_app/syncsession/{again.pk}/change/").content.decode()
    assert "Skipped, by reason" in page and "unchanged: 2" in page


def test_catalog_pages_list_counts_search_and_link_the_session(admin_client, synced):
    from sessions_app.models import Catalog

    known = Catalog.objects.get()
    page = admin_client.get("/admin/sessions_app/catalog/").content.decode()
    assert known.destination in page and f"?catalog__id__exact={known.pk}\">2<" in page
    found = admin_client.get("/admin/sessions_app/catalogentry/?q=c.wav").content.decode()
    assert "b/c.wav" in found and ">a.wav<" not in found
    assert f"/admin/sessions_app/syncsession/{synced.pk}/change/" in found
    for query in (f"catalog__id__exact={known.pk}", f"catalog__project__id__exact={known.project_id}",
                  "size=small", "arrived_at__gte=2000-01-01+00:00:00%2B00:00"):
        assert "b/c.wav" in admin_client.get(f"/admin/sessions_app/catalogentry/?{query}").content.decode()
    assert "b/c.wav" not in admin_client.get("/admin/sessions_app/catalogentry/?size=gib").content.decode()
    entry = known.entries.get(key="a.wav")
    assert admin_client.post(f"/admin/sessions_app/catalogentry/{entry.pk}/change/", {}).status_code == 403
    assert admin_client.post(f"/admin/sessions_app/catalogentry/{entry.pk}/delete/", {}).status_code == 403


@pytest.mark.parametrize("changelist, selected", [("projects/project", "project_id"), ("sessions_app/syncsession", "pk")])
def test_check_destination_action_starts_a_sync_that_lists_the_destination(admin_client, synced, changelist,
                                                                           selected):
    chosen = synced.project_id if selected == "project_id" else synced.pk
    resp = admin_client.post(f"/admin/{changelist}/", {"action": "check_destination", "_selected_action": [chosen]},
                             follow=True)
    started = SyncSession.objects.exclude(pk=synced.pk).get()
    assert started.params == {"check_destination": True} and started.status == "queued"
    assert f"Started 1 sync session(s) checking the destination: test-project (session #{started.pk})" in (
        resp.content.decode())


def test_session_pages_show_the_pace_of_a_throttled_session(admin_client, make_project, source, s3_server,
                                                            fault_proxy):
    write_files(source, {f"f{i:02d}.wav": "x" for i in range(20)})
    fault_proxy.fail_next(10, "503", method="PUT")
    project = make_project({"type": "s3", "bucket": s3_server.make_bucket(), "region": "us-east-1",
                            "endpoint_url": fault_proxy.endpoint_url})
    session = run_session_inline(project)
    assert (session.uploaded_count, session.failed_count) == (20, 0)
    page = admin_client.get(f"/admin/sessions_app/syncsession/{session.pk}/change/").content.decode()
    assert "throttled: sending at" in page and "(10 throttling answers, lowest" in page
    assert "throttled: sending at" in admin_client.get("/admin/sessions_app/syncsession/").content.decode()
