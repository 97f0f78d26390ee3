"""Importing a Roboflow project into storage (sessions_app/importing.py), in this process: the real
roboflow SDK against the loopback Roboflow API, into a local folder and into moto S3."""

from __future__ import annotations

import io
import json
import os
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django_q.models import OrmQ
from PIL import Image

from projects.destinations import ConfigError
from projects.destinations.local import LocalDestination
from projects.destinations.base import TEMP_FOLDER
from projects.destinations.s3 import S3Destination
from sessions_app import errors, importing, kinds, pipeline, retrying, starting, transferring, uploading
from sessions_app.models import FileStatus, SessionStatus, SyncSession
from tests.servers.roboflow_api import API_KEY, API_KEY_ENV, WORKSPACE, RoboflowAPI, StoredImage, make_image

RF_PROJECT = "imports"
MiB = 1024 * 1024


@pytest.fixture
def api(roboflow_api: RoboflowAPI, monkeypatch: pytest.MonkeyPatch, settings) -> RoboflowAPI:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    settings.UPLOAD_RETRY_BASE_SECONDS = 0.01
    settings.UPLOAD_RETRY_CAP_SECONDS = 0.05
    roboflow_api.add_project(WORKSPACE, RF_PROJECT)
    return roboflow_api


@pytest.fixture
def local_project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "store"), "prefix": "datasets/rf"},
                        project="into-local", max_retries=2)


def run_import(project, **params: Any) -> SyncSession:
    """What `import_roboflow --sync` does, to the end."""
    params = importing.import_params(project, WORKSPACE, RF_PROJECT, api_key_env=API_KEY_ENV, **params)
    session = starting.start(project, kind=kinds.IMPORT, params=params, created_by="test", enqueue_scan=False)
    return run_session(session)


def run_session(session: SyncSession) -> SyncSession:
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def local_file(project, key: str) -> Path:
    dest = project.destination()
    return Path(dest.options["path"]) / dest.prefix / key


def stem(image: StoredImage) -> str:
    return os.path.splitext(image.name)[0]


# -- keys, content, rows ------------------------------------------------------------------------
def test_import_into_local_writes_images_and_annotation_json_by_split(api, local_project):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 7)

    session = run_import(local_project)

    assert session.kind == SyncSession.Kind.IMPORT and session.status == SessionStatus.COMPLETED
    assert (session.found_count, session.uploaded_count, session.failed_count) == (7, 7, 0)
    assert session.bytes_uploaded == sum(len(image.data) for image in seeded)
    for image in seeded:
        assert local_file(local_project, f"images/{image.split}/{image.name}").read_bytes() == image.data
        document = json.loads(local_file(local_project, f"annotations/{image.split}/{stem(image)}.json").read_text())
        assert document["source"] == {"workspace": WORKSPACE, "project": RF_PROJECT, "image_id": image.id}
        assert (document["name"], document["split"], document["tags"]) == (image.name, image.split, ["seeded"])
        boxes = document["annotation"]["boxes"]
        assert [box["label"] for box in boxes] == [image.annotation.labelmap[image.annotation.text[0]]]
        assert document["annotation"]["width"] == image.width
        row = session.files.get(relative_path=image.id)
        assert (row.remote_id, row.remote_key, row.size) == (image.id, f"images/{image.split}/{image.name}",
                                                            len(image.data))
    assert api.fetches == {image.id: 1 for image in seeded}
    assert api.count("/search") == 1  # 7 ids: one page
    assert not list(local_file(local_project, "").rglob("*.uploading-*"))


def test_import_into_s3_under_the_prefix(api, make_project, s3_server):
    bucket = s3_server.make_bucket()
    project = make_project({"type": "s3", "bucket": bucket, "prefix": "rf/import", "endpoint_url": s3_server.endpoint_url},
                           project="into-s3")
    seeded = api.seed(WORKSPACE, RF_PROJECT, 5)

    session = run_import(project)

    assert (session.status, session.uploaded_count) == (SessionStatus.COMPLETED, 5)
    pages = s3_server.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = sorted(o["Key"] for page in pages for o in page.get("Contents", ()))
    assert keys == sorted([f"rf/import/images/{i.split}/{i.name}" for i in seeded]
                          + [f"rf/import/annotations/{i.split}/{stem(i)}.json" for i in seeded])
    for image in seeded:
        body = s3_server.client.get_object(Bucket=bucket, Key=f"rf/import/images/{image.split}/{image.name}")["Body"]
        assert body.read() == image.data
        raw = s3_server.client.get_object(Bucket=bucket, Key=f"rf/import/annotations/{image.split}/{stem(image)}.json")
        document = json.loads(raw["Body"].read())
        assert document["source"]["image_id"] == image.id and document["annotation"]["boxes"]


def test_many_pages_are_listed_and_every_image_fetched_once(api, local_project):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 2 * importing.PAGE_SIZE + 3)

    session = run_import(local_project, concurrency=8)

    assert session.uploaded_count == len(seeded)
    assert api.count("/search") == 3
    assert api.fetches == {image.id: 1 for image in seeded}
    assert session.params["workers"] == 4  # 8 fetches shared by the project's 2 upload tasks


def test_each_fetch_thread_keeps_its_connection_to_roboflow_alive(api, local_project):
    # The SDK asks for each image's details with requests.get: a new TCP connection per image,
    # which cost more client CPU than the request itself.
    seeded = api.seed(WORKSPACE, RF_PROJECT, 30)

    session = run_import(local_project, concurrency=2)  # one fetch thread per upload task

    assert session.uploaded_count == len(seeded)
    assert api.count("/images/") == len(seeded)
    assert api.connections("/images/") <= 2  # not one per image


def test_clashing_names_and_unsafe_names_get_distinct_safe_keys(api, local_project):
    first = api.add_image(WORKSPACE, RF_PROJECT, "cat.jpg", make_image(1, "JPEG"))
    second = api.add_image(WORKSPACE, RF_PROJECT, "cat.jpg", make_image(2, "JPEG"))
    odd = api.add_image(WORKSPACE, RF_PROJECT, "../up/and/away.png", make_image(3), split="valid")

    session = run_import(local_project)

    keys = dict(session.files.values_list("remote_id", "remote_key"))
    assert keys == {first.id: "images/train/cat.jpg", second.id: f"images/train/cat-{second.id}.jpg",
                    odd.id: "images/valid/_up_and_away.png"}
    assert local_file(local_project, f"images/train/cat-{second.id}.jpg").read_bytes() == second.data
    assert local_file(local_project, f"annotations/train/cat-{second.id}.json").exists()
    document = json.loads(local_file(local_project, "annotations/valid/_up_and_away.json").read_text())
    assert document["annotation"]["boxes"] == []  # not annotated in Roboflow


# -- failures, retries, resume ----------------------------------------------------------------------
def test_failed_ids_are_listed_with_their_errors_and_a_retry_fetches_them(api, local_project):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 6)
    gone, flaky = seeded[1], seeded[4]
    api.fail_next(1, 404, path_contains=f"/{gone.id}/original")
    api.fail_next(3, 503, path_contains=f"/{flaky.id}/original")  # 1 + max_retries (2) tries

    session = run_import(local_project)

    assert (session.status, session.uploaded_count, session.failed_count) == (
        SessionStatus.COMPLETED_WITH_ERRORS, 4, 2)
    failed = dict(session.files.filter(status=FileStatus.FAILED).values_list("relative_path", "last_error"))
    assert failed == {
        gone.id: f"download of Roboflow image {gone.id}: HTTP 404: the image file is gone",
        flaky.id: f"gave up after 3 attempts: download of Roboflow image {flaky.id}: HTTP 503",
    }
    assert session.files.get(relative_path=gone.id).error_permanent
    assert not local_file(local_project, f"images/{gone.split}/{gone.name}").exists()

    queued = retrying.queue_retry_round(session, include_permanent=True, start=False)
    assert queued.failed == 2
    session = run_session_uploads(session)

    assert (session.status, session.uploaded_count, session.failed_count) == (SessionStatus.COMPLETED, 6, 0)
    assert local_file(local_project, f"images/{gone.split}/{gone.name}").read_bytes() == gone.data
    assert api.fetches[gone.id] == 1 and api.fetches[flaky.id] == 1  # failed answers are not counted


def run_session_uploads(session: SyncSession) -> SyncSession:
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def test_rate_limited_details_are_retried_after_the_wait_asked_for(api, local_project):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 1)
    api.fail_next(1, 429, path_contains=f"/images/{seeded[0].id}", retry_after=0)

    session = run_import(local_project)

    row = session.files.get()
    assert (row.status, row.attempts) == (FileStatus.UPLOADED, 2)
    assert api.count(f"/images/{seeded[0].id}") == 2


def test_interrupted_rows_are_checked_at_the_destination_before_any_fetch(api, local_project):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 4)
    session = run_import(local_project)
    assert api.fetches == {image.id: 1 for image in seeded}
    # As a SIGKILL leaves them: mid-transfer, one of them never written.
    local_file(local_project, f"images/{seeded[2].split}/{seeded[2].name}").unlink()
    session.files.update(status=FileStatus.UPLOADING)
    SyncSession.objects.filter(pk=session.pk).update(status=SessionStatus.UPLOADING, finished_at=None)
    session.refresh_from_db()

    pipeline.resume(session, force=True)
    session = run_session_uploads(session)

    assert (session.status, session.uploaded_count) == (SessionStatus.COMPLETED, 4)
    assert api.fetches == {image.id: 2 if image is seeded[2] else 1 for image in seeded}
    notes = dict(session.files.values_list("relative_path", "note"))
    assert notes == {image.id: "" if image is seeded[2] else transferring.VERIFIED_NOTE for image in seeded}
    assert session.files.get(relative_path=seeded[0].id).size == len(seeded[0].data)


def test_a_second_import_fetches_only_new_images(api, local_project):
    api.seed(WORKSPACE, RF_PROJECT, 3)
    run_import(local_project)
    added = api.seed(WORKSPACE, RF_PROJECT, 2)

    session = run_import(local_project)

    assert (session.found_count, session.skipped_count, session.uploaded_count) == (5, 3, 2)
    assert set(session.files.filter(status=FileStatus.UPLOADED).values_list("remote_id", flat=True)) == {
        image.id for image in added}
    assert set(session.files.filter(status=FileStatus.SKIPPED).values_list("skip_reason", flat=True)) == {
        importing.SKIP_EARLIER}
    assert max(api.fetches.values()) == 1


def test_broken_image_details_are_a_permanent_error_and_the_sdk_print_goes_to_logging(api, local_project, caplog,
                                                                                       capsys):
    caplog.set_level("INFO", logger="projects.destinations.roboflow.sdk")
    seeded = api.seed(WORKSPACE, RF_PROJECT, 2)
    api.fail_next(1, 200, path_contains=f"/images/{seeded[0].id}", body={"unexpected": True})

    session = run_import(local_project)

    row = session.files.get(relative_path=seeded[0].id)
    assert (row.status, row.error_permanent) == (FileStatus.FAILED, True)
    assert row.last_error == f"Roboflow image {seeded[0].id}: HTTP 200: Image not found"
    assert seeded[0].id not in capsys.readouterr().out  # the SDK printed the answer and the id...
    assert any(seeded[0].id in r.getMessage() for r in caplog.records if r.name.endswith(".sdk"))  # ...to logging


# -- starting -----------------------------------------------------------------------------------
def test_params_keep_the_key_variable_name_never_the_key(api, local_project):
    api.seed(WORKSPACE, RF_PROJECT, 1)
    session = run_import(local_project, concurrency=20)
    assert session.params == {"workspace": WORKSPACE, "project": RF_PROJECT, "api_key_env": API_KEY_ENV,
                               "concurrency": 20, "workers": 10}
    stored = json.dumps([session.params, session.log, session.error, session.config.config,
                         list(session.files.values_list("last_error", "note"))])
    assert API_KEY not in stored


@pytest.mark.parametrize("workspace, rf_project, options, message", [
    ("acme", "a/b", {}, "project: must be a Roboflow url slug"),
    ("", "p", {}, "workspace: required"),
    ("acme", "p", {"api_key_env": "MY KEY"}, "api_key_env: must be the name of an environment variable"),
    ("acme", "p", {"concurrency": 0}, "concurrency: must be between 1 and 200"),
])
def test_bad_params_are_config_errors(local_project, workspace, rf_project, options, message):
    with pytest.raises(ConfigError, match=message):
        importing.import_params(local_project, workspace or None, rf_project, **options)


def test_a_project_whose_destination_cannot_take_streams_is_refused(api, make_project):
    project = make_project({"type": "roboflow", "workspace": WORKSPACE, "project": "widgets",
                            "api_key_env": API_KEY_ENV}, project="rf-upload")
    params = importing.import_params(project, WORKSPACE, RF_PROJECT, api_key_env=API_KEY_ENV)
    with pytest.raises(errors.StartError, match="a roboflow destination cannot receive imports"):
        starting.start(project, kind=kinds.IMPORT, params=params, created_by="test", enqueue_scan=False)
    assert not SyncSession.objects.exists()


@pytest.mark.parametrize("workspace, rf_project, env, message", [
    (WORKSPACE, "nope", API_KEY, f"Roboflow: Roboflow project {WORKSPACE}/nope: not found"),
    ("globex", RF_PROJECT, API_KEY, f"belongs to workspace '{WORKSPACE}', not 'globex'"),
    (WORKSPACE, RF_PROJECT, "", f"environment variable {API_KEY_ENV} is not set"),
    (WORKSPACE, RF_PROJECT, "wrongKey123abc", "was refused (HTTP 401)"),
])
def test_the_roboflow_end_is_checked_before_a_session_exists(api, local_project, monkeypatch, workspace,
                                                              rf_project, env, message):
    monkeypatch.setenv(API_KEY_ENV, env)
    params = importing.import_params(local_project, workspace, rf_project, api_key_env=API_KEY_ENV)
    with pytest.raises(errors.StartError, match=re.escape(message)) as info:
        starting.start(local_project, kind=kinds.IMPORT, params=params, created_by="test", enqueue_scan=False)
    assert "wrongKey123abc" not in str(info.value)
    assert not SyncSession.objects.exists()


def test_start_queues_the_listing_for_the_cluster(api, local_project):
    params = importing.import_params(local_project, WORKSPACE, RF_PROJECT, api_key_env=API_KEY_ENV)
    session = starting.start(local_project, kind=kinds.IMPORT, params=params, created_by="test")
    assert session.status == SessionStatus.QUEUED
    assert [task.name() for task in OrmQ.objects.all()] == [f"session-{session.pk}:scan"]


# -- streaming into destinations ----------------------------------------------------------------
class Stream:
    """A non-seekable source of `size` bytes, like a response body, read in the caller's chunks."""

    def __init__(self, size: int, stop_at: int | None = None):
        self.left, self.stop_at, self.sent, self.largest_read = size, stop_at, 0, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise AssertionError("read the whole stream at once")
        if self.stop_at is not None and self.sent >= self.stop_at:
            return b""
        n = min(n, self.left, (self.stop_at - self.sent) if self.stop_at is not None else n)
        self.left, self.sent, self.largest_read = self.left - n, self.sent + n, max(self.largest_read, n)
        return bytes([self.sent % 251]) * n


def peak_memory(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def stream_destinations(tmp_path, s3_server):
    bucket = s3_server.make_bucket()
    dests = {
        "local": LocalDestination({"path": str(tmp_path / "store")}),
        "s3": S3Destination({"bucket": bucket, "endpoint_url": s3_server.endpoint_url, "multipart_threshold_mb": 8,
                             "multipart_chunk_mb": 5}),
    }
    yield dests
    for dest in dests.values():
        dest.close()


@pytest.mark.parametrize("kind, known_size, limit", [
    ("local", True, 3 * MiB),  # 1 MiB chunks
    ("local", False, 3 * MiB),
    ("s3", True, 2 * MiB),  # one streaming PUT
    ("s3", False, 15 * MiB),  # multipart: a few 5 MiB parts
])
def test_upload_stream_holds_a_bounded_part_of_the_stream(stream_destinations, kind, known_size, limit):
    dest, size = stream_destinations[kind], 40 * MiB
    assert dest.supports_stream_upload
    for warm_up_size in (7, None):  # the clients' one-off set-up, PUT and multipart, is not the point
        dest.upload_stream(Stream(6 * MiB), "warm-up", warm_up_size and 6 * MiB)
    stream = Stream(size)
    result: list[Any] = []
    peak = peak_memory(lambda: result.append(dest.upload_stream(stream, "big/blob.bin", size if known_size else None)))
    assert result[0].size == size and dest.stat("big/blob.bin").size == size
    assert stream.largest_read <= 5 * MiB
    assert peak < limit, f"{peak} bytes held at once for a {size}-byte stream"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_stream_shorter_than_announced_leaves_nothing(stream_destinations, kind):
    dest = stream_destinations[kind]
    with pytest.raises(Exception) as info:
        dest.upload_stream(Stream(1000, stop_at=600), "short.bin", 1000)
    assert "600 of 1000 bytes" in str(info.value) and not info.value.permanent
    assert dest.stat("short.bin") is None
    if kind == "local":  # the temporary folder stays, empty
        assert os.listdir(dest.root) == [TEMP_FOLDER] and os.listdir(os.path.join(dest.root, TEMP_FOLDER)) == []


def test_a_large_image_is_streamed_into_s3_without_being_held_whole(api, make_project, s3_server):
    bucket = s3_server.make_bucket()
    project = make_project({"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint_url},
                           project="into-s3-big")
    small = api.seed(WORKSPACE, RF_PROJECT, 1)[0]
    noise = Image.frombytes("RGB", (1500, 1500), os.urandom(1500 * 1500 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")
    big = api.add_image(WORKSPACE, RF_PROJECT, "noise.png", out.getvalue())
    params = importing.import_params(project, WORKSPACE, RF_PROJECT, api_key_env=API_KEY_ENV)
    session = starting.start(project, kind=kinds.IMPORT, params=params, created_by="test", enqueue_scan=False)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    # The upload task's transfer of each row, as the Drainer calls it; the first one pays for
    # the clients' one-off set-up (service models, connections), which is not the point here.
    fetch, dest = importing.Fetcher(session), project.destination()
    outcomes = [fetch(dest, session.files.get(remote_id=small.id), "", 1)]
    peak = peak_memory(lambda: outcomes.append(fetch(dest, session.files.get(remote_id=big.id), "", 1)))
    dest.close()

    assert [o.status for o in outcomes] == [FileStatus.UPLOADED] * 2 and outcomes[1].row.size == len(big.data)
    body = s3_server.client.get_object(Bucket=bucket, Key="images/train/noise.png")["Body"].read()
    assert body == big.data and len(big.data) > 6 * MiB
    assert peak < len(big.data) / 4, f"{peak} bytes held at once while importing a {len(big.data)}-byte image"


# -- admin ---------------------------------------------------------------------------------------
@pytest.fixture
def admin_client(client, db):
    user = User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(user)
    return client


def _action(client, project_ids: list[int], **form: Any):
    data = {"action": "import_from_roboflow", "_selected_action": project_ids, **form}
    return client.post("/admin/projects/project/", data, follow=True)


def test_admin_action_asks_for_workspace_and_project_then_starts_an_import(api, local_project, admin_client):
    page = _action(admin_client, [local_project.pk])
    assert page.status_code == 200
    assert b'name="workspace"' in page.content and b'name="rf_project"' in page.content
    assert b"ROBOFLOW_API_KEY" in page.content

    done = _action(admin_client, [local_project.pk], apply="1", workspace=WORKSPACE, rf_project=RF_PROJECT,
                   api_key_env=API_KEY_ENV, concurrency="12")

    session = SyncSession.objects.get()
    assert (session.kind, session.status, session.created_by) == (SyncSession.Kind.IMPORT, SessionStatus.QUEUED,
                                                                  "admin")
    assert session.params["project"] == RF_PROJECT and session.params["concurrency"] == 12
    assert done.redirect_chain[-1][0] == f"/admin/sessions_app/syncsession/{session.pk}/change/"
    assert f"Import session #{session.pk} started".encode() in done.content
    assert OrmQ.objects.count() == 1


def test_admin_action_shows_what_is_wrong_on_the_form(api, local_project, admin_client):
    page = _action(admin_client, [local_project.pk], apply="1", workspace=WORKSPACE, rf_project="nope",
                   api_key_env=API_KEY_ENV, concurrency="20")
    assert page.status_code == 200
    assert f"Roboflow project {WORKSPACE}/nope: not found".encode() in page.content
    assert not SyncSession.objects.exists()


def test_admin_action_takes_one_project_at_a_time(api, local_project, make_project, admin_client, tmp_path):
    other = make_project({"type": "local", "path": str(tmp_path / "other")}, project="other")
    page = _action(admin_client, [local_project.pk, other.pk])
    assert b"Select exactly one project to import into" in page.content
    assert not SyncSession.objects.exists()


def test_import_session_progress_shows_in_the_session_admin(api, local_project, admin_client):
    api.seed(WORKSPACE, RF_PROJECT, 3)
    session = run_import(local_project)
    listing = admin_client.get("/admin/sessions_app/syncsession/?kind=import")
    assert listing.status_code == 200 and b"Import" in listing.content
    assert listing.context["cl"].result_list[0].uploaded_count == 3
    page = admin_client.get(f"/admin/sessions_app/syncsession/{session.pk}/change/")
    assert page.status_code == 200 and b"100.0%" in page.content  # the progress bar
