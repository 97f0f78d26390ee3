"""The `import_roboflow` command: a real subprocess, the loopback Roboflow API and, for the runs
on workers, a real qcluster; killed halfway, it resumes without fetching any image twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sessions_app import transferring
from sessions_app.models import FileStatus, SessionStatus, SyncSession
from tests.conftest import manage, manage_env, wait_for
from tests.servers.roboflow_api import API_KEY, API_KEY_ENV, WORKSPACE, RoboflowAPI

RF_PROJECT = "imports"


@pytest.fixture
def api(roboflow_api: RoboflowAPI, monkeypatch: pytest.MonkeyPatch) -> RoboflowAPI:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    roboflow_api.add_project(WORKSPACE, RF_PROJECT)
    return roboflow_api


@pytest.fixture
def local_project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "store")}, project="into-local", max_retries=1)


def import_roboflow(*args: str, into: str = "into-local", **env: str):
    return manage("import_roboflow", "--workspace", WORKSPACE, "--project", RF_PROJECT, "--into", into,
                  "--api-key-env", API_KEY_ENV, *args, env=manage_env(UPLOAD_RETRY_BASE_SECONDS="0.01", **env))


def s3_keys(s3_server, bucket: str) -> set[str]:
    pages = s3_server.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", ())}


# -- in this process (--sync) ---------------------------------------------------------------------
def test_sync_import_prints_progress_and_summary_and_exits_0(api, local_project, tmp_path, transactional_db):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 12)

    result = import_roboflow("--sync")

    assert result.returncode == 0, result.stderr
    session = SyncSession.objects.get()
    lines = result.stdout.splitlines()
    assert lines[0] == f"import session {session.pk} started: {session.admin_url()}"
    assert lines[1].startswith(f"session {session.pk} completed: 12 found, 12 uploaded, 0 skipped, 0 failed")
    assert len(lines) == 2
    assert "12/12 files" in result.stderr  # the progress bar
    assert (tmp_path / "store" / "images" / seeded[4].split / seeded[4].name).read_bytes() == seeded[4].data
    assert API_KEY not in result.stdout + result.stderr


def test_sdk_chatter_stays_out_of_stdout_and_the_progress_bar(api, local_project, transactional_db):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 3)
    # An answer without "image": the SDK prints it, with the id, before raising.
    api.fail_next(1, 200, path_contains=f"/images/{seeded[1].id}", body={"chatter": "marker-7f3a"})

    result = import_roboflow("--sync")

    assert result.returncode == 1
    # Captured into the logger projects.destinations.roboflow.sdk, which the settings keep below
    # the console's level: neither the summary nor the progress bar carries it.
    assert "marker-7f3a" not in result.stdout + result.stderr
    assert f"{seeded[1].id}" in result.stderr  # the failure itself is reported


@pytest.mark.parametrize("args, message", [
    (("--into", "nope"), "no project named 'nope'"),
    (("--concurrency", "0"), "concurrency: must be between 1 and 200"),
    (("--api-key-env", "MY KEY"), "api_key_env: must be the name of an environment variable"),
])
def test_bad_input_exits_2_with_one_clear_message(api, local_project, transactional_db, args, message):
    result = import_roboflow(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not SyncSession.objects.exists()


def test_a_project_that_cannot_receive_imports_exits_2(api, make_project, transactional_db):
    make_project({"type": "roboflow", "workspace": WORKSPACE, "project": "widgets", "api_key_env": API_KEY_ENV},
                 project="rf-upload")
    result = import_roboflow(into="rf-upload")
    assert result.returncode == 2
    assert "a roboflow destination cannot receive imports; import into a project with an S3 or local" in result.stderr


def test_a_missing_or_wrong_key_exits_2_without_showing_it(api, local_project, transactional_db):
    missing = import_roboflow(**{API_KEY_ENV: ""})
    wrong = import_roboflow(**{API_KEY_ENV: "wrongKey123abc"})
    assert (missing.returncode, wrong.returncode) == (2, 2)
    assert f"environment variable {API_KEY_ENV} is not set" in missing.stderr
    assert f"the API key in {API_KEY_ENV} was refused (HTTP 401)" in wrong.stderr
    assert "wrongKey123abc" not in wrong.stderr + wrong.stdout
    assert not SyncSession.objects.exists()


# -- on a real cluster ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_failed_ids_are_listed_and_the_retry_command_fetches_them(api, local_project, cluster_factory, tmp_path):
    seeded = api.seed(WORKSPACE, RF_PROJECT, 20)
    gone, busy = seeded[3], seeded[11]
    api.fail_next(1, 404, path_contains=f"/{gone.id}/original")
    api.fail_next(2, 503, path_contains=f"/{busy.id}/original", retry_after=0)  # 1 + max_retries tries
    cluster_factory(UPLOAD_RETRY_BASE_SECONDS="0.01")

    result = import_roboflow("--no-progress")

    assert result.returncode == 1, result.stderr
    session = SyncSession.objects.get()
    assert (session.kind, session.status) == (SyncSession.Kind.IMPORT, SessionStatus.COMPLETED_WITH_ERRORS)
    assert f"{gone.id}: download of Roboflow image {gone.id}: HTTP 404: the image file is gone (permanent)" \
        in result.stderr
    assert f"{busy.id}: gave up after 2 attempts: download of Roboflow image {busy.id}: HTTP 503 (transient)" \
        in result.stderr
    assert f"retry them with: python manage.py retry {session.pk}" in result.stderr

    retried = manage("retry", str(session.pk), "--include-permanent", "--wait", "--no-progress")

    assert retried.returncode == 0, retried.stderr
    session.refresh_from_db()
    assert (session.status, session.uploaded_count, session.failed_count) == (SessionStatus.COMPLETED, 20, 0)
    assert (tmp_path / "store" / "images" / gone.split / gone.name).read_bytes() == gone.data
    assert api.fetches == {image.id: 1 for image in seeded}


@pytest.mark.slow
def test_import_killed_halfway_resumes_and_fetches_no_image_twice(api, make_project, s3_server, cluster_factory):
    n, workers = 500, 16
    seeded = api.seed(WORKSPACE, RF_PROJECT, n)
    bucket = s3_server.make_bucket()
    make_project({"type": "s3", "bucket": bucket, "prefix": "rf", "endpoint_url": s3_server.endpoint_url},
                 project="into-s3", upload_tasks=2)
    # Outcomes reach the database only at the end of a task: at the kill, every row fetched so far
    # is still "uploading" there, as when a crash falls between two writes.
    cluster = cluster_factory(UPLOAD_FLUSH_SECONDS="3600")
    assert import_roboflow("--no-wait", "--concurrency", str(workers), into="into-s3").returncode == 0
    wait_for(lambda: len(api.fetches) >= n // 2, 120, what="half of the images fetched")
    # Hold the next fetch of every worker thread, so that the kill cuts off fetches in flight and
    # no image is half-way between the server and S3.
    api.stall_next(workers, path_contains="/original")
    wait_for(lambda: api.stalled == workers, 60, what="every fetch thread waiting on the server")
    cluster.kill()

    killed = SyncSession.objects.get()
    fetched_before = dict(api.fetches)
    assert killed.status == SessionStatus.UPLOADING and killed.uploaded_count == 0
    assert n // 2 <= len(fetched_before) < n
    assert len({key for key in s3_keys(s3_server, bucket) if key.startswith("rf/images/")}) == len(fetched_before)
    api.release_stalls()

    cluster_factory()
    resumed = manage("resume", str(killed.pk), "--force")
    assert resumed.returncode == 0, resumed.stderr
    session = wait_for(lambda: SyncSession.objects.filter(pk=killed.pk, status__in=(
        SessionStatus.COMPLETED, SessionStatus.COMPLETED_WITH_ERRORS)).first(), 120, what="resumed import ended")

    assert (session.status, session.found_count, session.uploaded_count, session.failed_count) == (
        SessionStatus.COMPLETED, n, n, 0)
    assert api.fetches == {image.id: 1 for image in seeded}  # every image fetched, none twice
    verified = set(session.files.filter(note=transferring.VERIFIED_NOTE).values_list("remote_id", flat=True))
    assert verified == set(fetched_before)  # found at S3 after the restart, not fetched again
    assert set(session.files.values_list("status", flat=True)) == {FileStatus.UPLOADED}
    keys = s3_keys(s3_server, bucket)
    assert len(keys) == 2 * n
    for image in seeded[::50]:
        assert f"rf/images/{image.split}/{image.name}" in keys
        raw = s3_server.client.get_object(Bucket=bucket, Key=f"rf/annotations/{image.split}/{image.name[:-4]}.json")
        assert json.loads(raw["Body"].read())["source"]["image_id"] == image.id
