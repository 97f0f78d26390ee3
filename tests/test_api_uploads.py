"""POST /api/projects/<name>/uploads/ and the tus 1.0 endpoints, as the README documents them."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from sessions_app import receiving, tasks
from sessions_app.models import Arrival, FileStatus, FileUpload, SessionStatus, SyncSession
from tests.uploads_helpers import OFFSET_TYPE, TUS, staging  # noqa: F401 (fixture)


@pytest.fixture
def project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="drops")


@pytest.fixture
def token(project) -> str:
    return project.issue_api_token()


@pytest.fixture
def api() -> Client:
    return Client(enforce_csrf_checks=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **TUS}


def send_manifest(api: Client, token: str, files: list, project: str = "drops", headers: dict | None = None):
    return api.post(f"/api/projects/{project}/uploads/", json.dumps({"files": files}), content_type="application/json",
                    headers=headers if headers is not None else bearer(token))


def patch(api: Client, url: str, token: str, offset: int, data: bytes, **headers: str):
    return api.patch(url, data, content_type=OFFSET_TYPE, headers={**bearer(token), "Upload-Offset": str(offset),
                                                                    **headers})


def one_upload(api, token, path="a/b.bin", size=10) -> str:
    r = send_manifest(api, token, [{"path": path, "size": size}])
    assert r.status_code == 201, r.content
    return r.json()["files"][0]["upload_url"]


def test_manifest_answers_201_with_a_session_an_upload_url_per_file_and_reasons_for_the_refused(api, token):
    r = send_manifest(api, token, [
        {"path": "cam/a.jpg", "size": 123, "type": "image/jpeg"},
        {"path": "cam/b.jpg", "size": 5},
        {"path": "cam/a.jpg", "size": 7},
    ])

    assert r.status_code == 201
    body = r.json()
    session = SyncSession.objects.get(pk=body["session"])
    assert (session.kind, session.status, session.found_count, session.bytes_total) == (
        SyncSession.Kind.BROWSER, SessionStatus.UPLOADING, 2, 128)
    assert [f["path"] for f in body["files"]] == ["cam/a.jpg", "cam/b.jpg"]
    assert all(f["upload_url"].startswith("http://testserver/api/uploads/") for f in body["files"])
    assert body["refused"] == [{"path": "cam/a.jpg", "reason": "duplicate path"}]
    assert set(FileUpload.objects.values_list("status", flat=True)) == {FileStatus.RECEIVING}


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../b", "/etc/passwd", "a\x00b", "a\\b.jpg", "C:/x.jpg",
                                  "a//b", "./a", "", "a/" + "x" * 300])
def test_manifest_refuses_unsafe_names(api, token, path):
    r = send_manifest(api, token, [{"path": path, "size": 1}, {"path": "ok.jpg", "size": 1}])

    assert r.status_code == 201
    body = r.json()
    assert [f["path"] for f in body["files"]] == ["ok.jpg"]
    assert len(body["refused"]) == 1 and body["refused"][0]["reason"].startswith("bad name:")


def test_manifest_refuses_bad_sizes_too_large_files_types_not_allowed_and_past_the_quota(api, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "d")}, project="limited", extensions=[".jpg"],
                           upload_max_file_mb=2, upload_quota_mb=3)
    token = project.issue_api_token()
    mib = 1024 * 1024

    r = send_manifest(api, token, [
        {"path": "a.jpg", "size": 2 * mib}, {"path": "big.jpg", "size": 2 * mib + 1}, {"path": "notes.txt", "size": 1},
        {"path": "b.jpg", "size": -1}, {"path": "c.jpg", "size": "12"}, {"path": "d.jpg", "size": mib + 1},
        {"path": "e.jpg", "size": mib},
    ], project="limited")

    reasons = {x["path"]: x["reason"] for x in r.json()["refused"]}
    assert [f["path"] for f in r.json()["files"]] == ["a.jpg", "e.jpg"]
    assert reasons["big.jpg"].startswith("too large:")
    assert reasons["notes.txt"].startswith("type not allowed:")
    assert reasons["b.jpg"].startswith("bad size") and reasons["c.jpg"].startswith("bad size")
    assert reasons["d.jpg"] == "over the project's quota of 3 MiB"


def test_manifest_needs_credentials_and_this_project_s_token(api, token, make_project, tmp_path):
    other = make_project({"type": "local", "path": str(tmp_path / "o")}, project="other").issue_api_token()

    assert send_manifest(api, token, [], headers={}).status_code == 401
    assert send_manifest(api, "wrong", [], headers=bearer("wrong")).status_code == 401
    assert send_manifest(api, other, [], headers=bearer(other)).status_code == 404
    assert send_manifest(api, token, [], project="nope").status_code == 404
    assert SyncSession.objects.count() == 0


def test_manifest_that_is_not_a_list_of_files_is_a_400(api, token):
    r = api.post("/api/projects/drops/uploads/", "{", content_type="application/json", headers=bearer(token))
    assert r.status_code == 400
    assert send_manifest(api, token, "a.jpg").status_code == 400  # type: ignore[arg-type]


def test_head_gives_the_offset_and_patch_appends_at_it_until_the_file_is_received(api, token, staging):
    url = one_upload(api, token, size=10)

    head = api.head(url, headers=bearer(token))
    assert (head.status_code, head["Upload-Offset"], head["Upload-Length"], head["Tus-Resumable"]) == (
        200, "0", "10", "1.0.0")
    assert "Upload-Expires" in head

    r1 = patch(api, url, token, 0, b"01234")
    r2 = patch(api, url, token, 5, b"56789")

    assert (r1.status_code, r1["Upload-Offset"], r2.status_code, r2["Upload-Offset"]) == (204, "5", 204, "10")
    row = FileUpload.objects.get()
    assert row.status == FileStatus.PENDING
    arrival = row.arrival
    assert Path(receiving.staging_path(arrival)).read_bytes() == b"0123456789"
    assert arrival.received_at is not None and api.head(url, headers=bearer(token))["Upload-Offset"] == "10"


def test_patch_at_a_wrong_offset_is_a_409_and_stores_nothing(api, token):
    url = one_upload(api, token, size=10)
    patch(api, url, token, 0, b"0123")

    r = patch(api, url, token, 2, b"xx")

    assert r.status_code == 409 and "4" in r.json()["error"]
    assert api.head(url, headers=bearer(token))["Upload-Offset"] == "4"


def test_more_bytes_than_declared_is_a_413_before_any_byte_is_stored(api, token):
    url = one_upload(api, token, size=4)

    r = patch(api, url, token, 0, b"0123456789")

    assert r.status_code == 413
    assert api.head(url, headers=bearer(token))["Upload-Offset"] == "0"
    assert FileUpload.objects.get().status == FileStatus.RECEIVING


def test_unknown_upload_id_is_a_404(api, token):
    one_upload(api, token)
    for url in ("/api/uploads/00000000-0000-0000-0000-000000000000", "/api/uploads/not-a-uuid"):
        assert api.head(url, headers=bearer(token)).status_code == 404
        assert patch(api, url, token, 0, b"x").status_code == 404


def test_another_project_s_token_gets_a_404_and_another_user_a_403(api, token, make_project, tmp_path,
                                                                    django_user_model):
    url = one_upload(api, token)
    other = make_project({"type": "local", "path": str(tmp_path / "o")}, project="other").issue_api_token()
    owner, someone = (Client(), Client())
    owner.force_login(django_user_model.objects.create_superuser("owner", "o@example.com", "pw"))
    someone.force_login(django_user_model.objects.create_superuser("someone", "s@example.com", "pw"))
    r = owner.post("/api/projects/drops/uploads/", json.dumps({"files": [{"path": "x.bin", "size": 1}]}),
                   content_type="application/json")
    users_url = r.json()["files"][0]["upload_url"]

    assert patch(api, url, other, 0, b"x").status_code == 404
    assert someone.head(users_url, headers=TUS).status_code == 403
    assert api.head(users_url, headers=bearer(other)).status_code == 404
    assert owner.head(users_url, headers=TUS).status_code == 200
    assert api.head(url, headers=bearer(token))["Upload-Offset"] == "0"


def test_a_staff_login_sends_the_manifest_and_bytes_with_its_csrf_token(django_user_model, project):
    user = django_user_model.objects.create_user("op", password="pw", is_staff=True)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    files = json.dumps({"files": [{"path": "x.bin", "size": 3}]})

    assert browser.post("/api/projects/drops/uploads/", files, content_type="application/json").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="add_syncsession"))
    browser.get("/admin/")  # sets the CSRF cookie
    csrf = {"X-CSRFToken": browser.cookies["csrftoken"].value}
    assert browser.post("/api/projects/drops/uploads/", files, content_type="application/json").status_code == 403
    r = browser.post("/api/projects/drops/uploads/", files, content_type="application/json", headers=csrf)
    assert r.status_code == 201
    url = r.json()["files"][0]["upload_url"]

    no_csrf = browser.patch(url, b"abc", content_type=OFFSET_TYPE, headers={**TUS, "Upload-Offset": "0"})
    ok = browser.patch(url, b"abc", content_type=OFFSET_TYPE, headers={**TUS, **csrf, "Upload-Offset": "0"})

    assert (no_csrf.status_code, ok.status_code) == (403, 204)
    assert FileUpload.objects.get().status == FileStatus.PENDING


def test_tus_requests_need_the_version_header_and_the_offset_content_type(api, token):
    url = one_upload(api, token)

    assert api.head(url, headers={"Authorization": f"Bearer {token}"}).status_code == 412
    r = api.patch(url, b"x", content_type="application/octet-stream", headers={**bearer(token), "Upload-Offset": "0"})
    assert r.status_code == 415


def test_options_announces_tus_1_0_and_its_extensions(api):
    r = api.options("/api/uploads/")

    assert (r.status_code, r["Tus-Version"], r["Tus-Resumable"]) == (204, "1.0.0", "1.0.0")
    assert r["Tus-Extension"] == "creation,termination,expiration"


def test_creation_starts_a_manifest_s_file_over_and_answers_its_url(api, token):
    url = one_upload(api, token, path="a/b.bin", size=3)
    patch(api, url, token, 0, b"a")
    session = SyncSession.objects.get()
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in
                    {"session": str(session.pk), "path": "a/b.bin"}.items())

    wrong = api.post("/api/uploads/", b"", content_type="", headers={**bearer(token), "Upload-Length": "4",
                                                                    "Upload-Metadata": meta})
    r = api.post("/api/uploads/", b"", content_type="", headers={**bearer(token), "Upload-Length": "3",
                                                                "Upload-Metadata": meta})

    assert wrong.status_code == 413
    assert (r.status_code, r["Location"]) == (201, url)
    assert api.head(url, headers=bearer(token))["Upload-Offset"] == "0"


def test_termination_deletes_the_bytes_and_cancels_the_file_and_the_session_ends(api, token):
    url = one_upload(api, token, size=4)
    patch(api, url, token, 0, b"ab")
    staged = receiving.staging_path(Arrival.objects.get())

    r = api.delete(url, headers=bearer(token))

    assert r.status_code == 204
    assert not os.path.exists(staged)
    session = SyncSession.objects.get()
    assert (FileUpload.objects.get().status, session.status) == (FileStatus.CANCELLED, SessionStatus.COMPLETED)


def test_the_sweep_expires_unfinished_uploads_their_bytes_go_and_their_files_fail(api, token):
    url = one_upload(api, token, size=4)
    patch(api, url, token, 0, b"ab")
    staged = receiving.staging_path(Arrival.objects.get())
    Arrival.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert patch(api, url, token, 2, b"cd").status_code == 410
    out = tasks.sweep()

    assert "1 unfinished uploads expired" in out
    assert not os.path.exists(staged)
    row = FileUpload.objects.get()
    assert (row.status, row.error_permanent, row.session.status) == (
        FileStatus.FAILED, True, SessionStatus.COMPLETED_WITH_ERRORS)
    assert "expired" in row.last_error


def test_an_empty_file_is_received_with_its_manifest(api, token):
    one_upload(api, token, path="empty.txt", size=0)
    assert FileUpload.objects.get().status == FileStatus.PENDING


def test_a_manifest_of_only_refused_files_ends_its_session_at_once(api, token):
    r = send_manifest(api, token, [{"path": "../x", "size": 1}])

    assert r.status_code == 201 and r.json()["files"] == []
    assert SyncSession.objects.get().status == SessionStatus.COMPLETED


def test_a_full_staging_disk_is_a_507_and_keeps_the_bytes_before(api, token, monkeypatch):
    import resource
    import signal

    url = one_upload(api, token, size=3 * 1024 * 1024)
    patch(api, url, token, 0, b"x" * 1024)
    # The file-size limit makes this process's writes fail as a full disk would (EFBIG).
    old_limit, old_handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, old_limit[1]))
    try:
        r = patch(api, url, token, 1024, b"y" * (2 * 1024 * 1024))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)

    assert r.status_code == 507 and "staging disk is full" in r.json()["error"]
    offset = int(api.head(url, headers=bearer(token))["Upload-Offset"])
    assert 1024 <= offset <= 1024 * 1024 and offset % 1024 == 0
    assert FileUpload.objects.get().status == FileStatus.RECEIVING


def test_session_status_shows_the_phase_and_both_bars(api, token):
    url = one_upload(api, token, size=4)
    patch(api, url, token, 0, b"ab")
    session_id = SyncSession.objects.get().pk

    r = api.get(f"/api/sessions/{session_id}/", headers=bearer(token))

    body = r.json()
    assert (r.status_code, body["phase"], body["bytes_received"], body["received_percent"]) == (
        200, "receiving", 2, 50.0)
    patch(api, url, token, 2, b"cd")
    assert api.get(f"/api/sessions/{session_id}/", headers=bearer(token)).json()["phase"] == "processing"


def test_options_on_an_upload_url_and_creation_of_an_unknown_or_received_file(api, token):
    url = one_upload(api, token, path="a.bin", size=1)
    patch(api, url, token, 0, b"x")
    session = SyncSession.objects.get()

    def create(path: str):
        meta = f"session {base64.b64encode(str(session.pk).encode()).decode()},path {base64.b64encode(path.encode()).decode()}"
        return api.post("/api/uploads/", b"", content_type="", headers={**bearer(token), "Upload-Length": "1",
                                                                        "Upload-Metadata": meta})

    assert api.options(url)["Tus-Extension"] == "creation,termination,expiration"
    assert create("nope.bin").status_code == 404
    assert create("a.bin").status_code == 409


def test_a_patch_while_another_writes_the_same_upload_is_a_423(api, token):
    import fcntl

    url = one_upload(api, token, size=4)
    staged = Path(receiving.staging_path(Arrival.objects.get()))
    staged.parent.mkdir(parents=True, exist_ok=True)
    with open(staged, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = patch(api, url, token, 0, b"ab")

    assert r.status_code == 423
    assert patch(api, url, token, 0, b"ab").status_code == 204


def test_a_manifest_over_the_file_limit_is_a_413(api, token, settings):
    settings.UPLOAD_MANIFEST_MAX_FILES = 2

    r = send_manifest(api, token, [{"path": f"{i}.bin", "size": 1} for i in range(3)])

    assert r.status_code == 413 and SyncSession.objects.count() == 0


def test_a_project_whose_destination_is_misconfigured_is_a_409(api, token, project):
    type(project).objects.filter(pk=project.pk).update(destination_options={})

    r = send_manifest(api, token, [{"path": "a.bin", "size": 1}])

    assert r.status_code == 409 and "path" in r.json()["error"]
    assert SyncSession.objects.count() == 0
