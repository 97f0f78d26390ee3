"""POST /api/queue-upload/: token authentication, path checks, the backlog limit."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from django.test import Client

from sessions_app.models import FileStatus, FileUpload, SyncSession
from tests.conftest import write_files

URL = "/api/queue-upload/"


@pytest.fixture
def project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera", queue_limit=2)


@pytest.fixture
def token(project) -> str:
    return project.issue_api_token()


@pytest.fixture
def api() -> Client:
    return Client(enforce_csrf_checks=True)  # producers carry a token, never a CSRF cookie


def post(api: Client, token: str | None, body: object, scheme: str = "Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    data = body if isinstance(body, str) else json.dumps(body)
    return api.post(URL, data, content_type="application/json", headers=headers)


def test_queues_the_file_and_answers_202(api, token, project, source):
    write_files(source, {"cam/img-1.jpg": "jpeg"})

    r = post(api, token, {"path": str(source / "cam/img-1.jpg"), "remote_subdir": "2026-01-01", "tag": "cam1"})

    assert r.status_code == 202
    row = FileUpload.objects.get()
    assert r.json() == {"queued": True, "message": "queued", "file_id": row.pk, "duplicate": False}
    assert (row.remote_key, row.tag, row.status, row.session.kind) == (
        "2026-01-01/img-1.jpg", "cam1", FileStatus.PENDING, SyncSession.Kind.STREAM)


def test_same_file_again_is_a_duplicate(api, token, source):
    write_files(source, {"a.jpg": "a"})

    post(api, token, {"path": "a.jpg"})
    r = post(api, token, {"path": "a.jpg"})

    assert (r.status_code, r.json()["duplicate"]) == (202, True)
    assert FileUpload.objects.count() == 1


@pytest.mark.parametrize("auth", [None, "wrong-token", ""])
def test_without_a_valid_token_401(api, token, source, auth):
    write_files(source, {"a.jpg": "a"})

    r = post(api, auth, {"path": "a.jpg"})

    assert r.status_code == 401 and r["WWW-Authenticate"].startswith("Bearer")
    assert not FileUpload.objects.exists()


def test_other_auth_schemes_are_not_tokens(api, token, source):
    write_files(source, {"a.jpg": "a"})

    assert post(api, token, {"path": "a.jpg"}, scheme="Basic").status_code == 401


def test_only_the_hash_of_the_token_is_stored(token, project):
    project.refresh_from_db()

    assert token not in project.api_token_hash
    assert project.api_token_hash == hashlib.sha256(token.encode()).hexdigest()


def test_a_new_token_replaces_the_old_one(api, token, project, source):
    write_files(source, {"a.jpg": "a"})
    project.issue_api_token()

    assert post(api, token, {"path": "a.jpg"}).status_code == 401


def test_full_queue_429_with_retry_after_and_a_warning(api, token, source, caplog):
    write_files(source, {f"{i}.jpg": "x" for i in range(3)})
    assert [post(api, token, {"path": f"{i}.jpg"}).status_code for i in range(2)] == [202, 202]

    with caplog.at_level(logging.WARNING, logger="sessions_app.queueing"):
        r = post(api, token, {"path": "2.jpg"})

    assert r.status_code == 429 and r["Retry-After"]
    assert r.json() == {"queued": False, "message": "upload queue is full (2 files waiting, limit 2)"}
    assert "upload queue is full" in caplog.text
    assert FileUpload.objects.count() == 2


@pytest.mark.parametrize("path", ["../outside.jpg", "a/../../outside.jpg", "{outside}", "link.jpg", "dirlink/x.jpg",
                                  "/etc/passwd", "missing.jpg", "a"])
def test_paths_that_do_not_lead_to_a_file_in_the_source_400(api, token, source, tmp_path, path):
    write_files(tmp_path, {"outside.jpg": "o", "elsewhere/x.jpg": "x"})
    write_files(source, {"a/in.jpg": "in"})
    (source / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (source / "dirlink").symlink_to(tmp_path / "elsewhere")

    r = post(api, token, {"path": path.format(outside=tmp_path / "outside.jpg")})

    assert r.status_code == 400 and r.json()["queued"] is False
    assert not FileUpload.objects.exists()


def test_a_token_only_reaches_its_own_projects_files(api, token, make_project, tmp_path):
    other_source = write_files(tmp_path / "other", {"b.jpg": "b"})
    make_project({"type": "local", "path": str(tmp_path / "dest2")}, project="other", source_dir=other_source)

    r = post(api, token, {"path": str(other_source / "b.jpg")})

    assert r.status_code == 400 and "outside" in r.json()["message"]


@pytest.mark.parametrize("body", ["not json", "[1, 2]", {"path": 7}, {"path": "a.jpg", "remote_subdir": "../x"},
                                  {"path": "a.jpg", "tag": ["x"]}, {}])
def test_malformed_requests_400(api, token, source, body):
    write_files(source, {"a.jpg": "a"})

    r = post(api, token, body)

    assert r.status_code == 400
    assert not FileUpload.objects.exists()


def test_conflicting_target_409(api, token, source):
    write_files(source, {"a.jpg": "a"})
    post(api, token, {"path": "a.jpg", "remote_subdir": "one"})

    r = post(api, token, {"path": "a.jpg", "remote_subdir": "two"})

    assert r.status_code == 409 and r.json()["message"] == "already queued for one/a.jpg"


def test_only_post(api, token):
    assert api.get(URL, headers={"Authorization": f"Bearer {token}"}).status_code == 405


def tracebacks(caplog) -> list[logging.LogRecord]:
    """Errors logged beyond Django's one-line warning about any 4xx answer."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_an_oversized_body_413_and_no_traceback(api, token, source, caplog):
    write_files(source, {"a.jpg": "a"})
    body = json.dumps({"path": "a.jpg", "tag": "x" * (3 * 1024 * 1024)})

    with caplog.at_level(logging.WARNING):
        r = post(api, token, body)

    assert r.status_code == 413 and "too large" in r.json()["error"]
    assert not tracebacks(caplog) and not FileUpload.objects.exists()


@pytest.mark.parametrize("body", ["[" * 30_000 + "]" * 30_000, '{"a": ' * 8_000 + "1" + "}" * 8_000,
                                  b'{"path": "\xff.jpg"}'])
def test_too_deeply_nested_or_undecodable_json_400_and_no_traceback(api, token, source, caplog, body):
    write_files(source, {"a.jpg": "a"})

    with caplog.at_level(logging.WARNING):
        r = api.post(URL, body, content_type="application/json", headers={"Authorization": f"Bearer {token}"})

    assert r.status_code == 400 and r.json()["error"].startswith("expected a JSON object")
    assert not tracebacks(caplog) and not FileUpload.objects.exists()


def test_a_file_the_projects_extensions_exclude_400_naming_the_rule(api, make_project, tmp_path, source):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera",
                           extensions=[".jpg"])
    write_files(source, {"notes.txt": "text"})

    r = post(api, project.issue_api_token(), {"path": "notes.txt"})

    assert (r.status_code, r.json()) == (400, {"queued": False, "message": "excluded by the project's extensions: .txt: notes.txt"})
    assert not FileUpload.objects.exists()


def test_a_file_an_exclude_pattern_matches_400_naming_the_pattern(api, make_project, tmp_path, source):
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera",
                           exclude=["tmp/", "*.partial.jpg"])
    write_files(source, {"tmp/a.jpg": "a", "cam/b.partial.jpg": "b", "cam/c.jpg": "c"})
    token = project.issue_api_token()

    assert post(api, token, {"path": "tmp/a.jpg"}).json()["message"] == "excluded by pattern tmp/: tmp/a.jpg"
    r = post(api, token, {"path": "cam/b.partial.jpg"})
    assert (r.status_code, r.json()["message"]) == (400, "excluded by pattern *.partial.jpg: cam/b.partial.jpg")
    assert post(api, token, {"path": "cam/c.jpg"}).status_code == 202
    assert list(FileUpload.objects.values_list("relative_path", flat=True)) == ["cam/c.jpg"]


def test_a_roboflow_project_without_extensions_takes_only_images(api, make_project, source):
    project = make_project({"type": "roboflow", "workspace": "ws", "project": "p"}, project="camera")
    write_files(source, {"notes.txt": "text"})

    r = post(api, project.issue_api_token(), {"path": "notes.txt"})

    assert r.status_code == 400 and r.json()["message"].startswith("excluded by the project's extensions: .txt")
