"""A sync session into Roboflow through the whole pipeline: scan, plan, upload tasks, the real
roboflow SDK against the loopback Roboflow API (tests/servers/roboflow_api.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sessions_app.models import FileStatus, SessionStatus, SyncSession
from tests.conftest import manage, run_session_inline, wait_for, write_files
from tests.servers.roboflow_api import API_KEY, API_KEY_ENV, PROJECT, WORKSPACE, RoboflowAPI, make_image

LABELS = "names: [cat, dog]\n"


@pytest.fixture
def api(roboflow_api: RoboflowAPI, monkeypatch: pytest.MonkeyPatch, settings) -> RoboflowAPI:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    settings.UPLOAD_RETRY_BASE_SECONDS = 0.001
    settings.UPLOAD_RETRY_CAP_SECONDS = 0.001
    return roboflow_api


def destination(**extra) -> dict:
    return {"type": "roboflow", "workspace": WORKSPACE, "project": PROJECT, "api_key_env": API_KEY_ENV, **extra}


@pytest.fixture
def dataset(source: Path) -> dict[str, bytes]:
    """A YOLO dataset laid out by split, one image twice, and files that are not images."""
    images = {
        "train/images/a.jpg": make_image(1, "JPEG"),
        "train/images/a-copy.jpg": make_image(1, "JPEG"),
        "valid/images/b.png": make_image(2),
        "test/images/c.jpg": make_image(3, "JPEG"),
    }
    write_files(source, {**images, "data.yaml": LABELS, "train/labels/a.txt": "0 0.5 0.5 0.2 0.2\n",
                         "train/labels/a-copy.txt": "0 0.5 0.5 0.2 0.2\n", "valid/labels/b.txt": "1 0.4 0.4 0.1 0.1\n",
                         "README.md": "notes"})
    return images


def stored(api: RoboflowAPI, name: str):
    return api.project(WORKSPACE, PROJECT).by_name(name)


def test_sync_session_uploads_images_with_annotations_and_records_their_ids(api, make_project, dataset):
    project = make_project(destination(tags=["field"]), project="to-roboflow")

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED
    assert (session.found_count, session.uploaded_count, session.skipped_count, session.failed_count) == (4, 3, 1, 0)
    rows = {row.relative_path: row for row in session.files.all()}
    assert set(rows) == set(dataset)  # labels, data.yaml and README are not images: not scanned
    # a.jpg and a-copy.jpg, the same bytes, race: Roboflow keeps the first and calls the other a duplicate.
    first, duplicate = sorted([rows["train/images/a.jpg"], rows["train/images/a-copy.jpg"]],
                              key=lambda row: row.status != FileStatus.UPLOADED)
    assert (duplicate.status, duplicate.skip_reason, duplicate.remote_id) == (
        FileStatus.SKIPPED, "duplicate", first.remote_id)
    for path in (first.relative_path, "valid/images/b.png", "test/images/c.jpg"):
        image = stored(api, Path(path).name)
        assert (rows[path].status, rows[path].remote_id) == (FileStatus.UPLOADED, image.id)
        assert image.split == path.split("/")[0] and image.tags == ["field"]
        assert image.batch == f"to-roboflow-session-{session.pk}"
    a, b = stored(api, Path(first.relative_path).name).annotation, stored(api, "b.png").annotation
    assert (a.text, a.labelmap) == ("0 0.5 0.5 0.2 0.2\n", {"0": "cat", "1": "dog"})
    assert b.text == "1 0.4 0.4 0.1 0.1\n"
    assert stored(api, "c.jpg").annotation is None and rows["test/images/c.jpg"].note == "no annotation"
    assert api.count("/upload") == 4


def test_rate_limit_is_retried_no_sooner_than_retry_after(api, make_project, source):
    write_files(source, {"one.png": make_image(7)})
    project = make_project(destination(), project="to-roboflow")
    api.fail_next(1, 429, path_contains="/upload", retry_after=1)

    started = time.monotonic()
    session = run_session_inline(project)
    waited = time.monotonic() - started

    row = session.files.get()
    assert (row.status, row.attempts, row.last_error) == (FileStatus.UPLOADED, 2, "")
    assert row.remote_id == stored(api, "one.png").id
    assert [status for _, path, status in api.requests if path.endswith("/upload")] == [429, 200]
    # Our own backoff is 1 ms here (settings): only Retry-After can account for the second.
    assert waited >= 1.0


def test_rate_limits_do_not_count_against_max_retries(api, make_project, source):
    write_files(source, {"one.png": make_image(8)})
    project = make_project(destination(), project="to-roboflow", max_retries=2)
    api.fail_next(5, 429, path_contains="/upload", retry_after=0)

    session = run_session_inline(project)

    row = session.files.get()
    assert (session.status, row.status, row.attempts) == (SessionStatus.COMPLETED, FileStatus.UPLOADED, 6)
    assert "throttled: sending at" in session.log


def test_429_bursts_slow_the_session_and_fail_no_image(api, make_project, source):
    write_files(source, {f"img{i:03d}.png": make_image(100 + i) for i in range(80)})
    project = make_project(destination(), project="to-roboflow", max_retries=1, upload_workers=8)
    api.throttle(first=30, rate=20)

    session = run_session_inline(project)

    assert (session.status, session.uploaded_count, session.failed_count) == (SessionStatus.COMPLETED, 80, 0)
    assert api.throttled >= 30
    assert "throttled: sending at" in session.log
    assert session.pace.throttled_count == api.throttled


def test_a_rate_limit_that_outlasts_throttle_patience_pauses_the_session(api, make_project, source):
    write_files(source, {"one.png": make_image(9)})
    project = make_project(destination(), project="to-roboflow", throttle_patience=1)
    api.throttle(first=10**6, rate=0)

    session = run_session_inline(project)

    row = session.files.get()
    assert (session.status, row.status, row.last_error) == (SessionStatus.UPLOADING, FileStatus.PENDING, "")
    assert "paused: one.png was throttled for 1 s (throttle_patience): Roboflow upload of one.png: rate limited" \
        in session.log


def test_images_uploaded_by_an_earlier_session_are_not_sent_again(api, make_project, dataset, source):
    project = make_project(destination(), project="to-roboflow")
    first = run_session_inline(project)
    write_files(source, {"train/images/d.jpg": make_image(4, "JPEG")})
    sent_before = api.count("/upload")

    second = run_session_inline(project)

    assert (second.found_count, second.uploaded_count, second.skipped_count) == (5, 1, 4)
    # Roboflow's earlier "duplicate" answer counts as done too (the catalog has it), so only the new
    # d.jpg is sent; the unchanged four are counted, without rows.
    assert second.skips == {"unchanged": 4}
    assert list(second.files.values_list("relative_path", flat=True)) == ["train/images/d.jpg"]
    assert api.count("/upload") - sent_before == 1
    assert second.files.get(relative_path="train/images/d.jpg").remote_id == stored(api, "d.jpg").id
    assert first.pk != second.pk


def test_upload_command_output_is_progress_and_summary_only(api, source, tmp_path, dataset, transactional_db):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"project": "to-roboflow", "source_dir": str(source), "destination": destination()}))

    result = manage("upload", "--config", str(config), "--sync")

    assert result.returncode == 0, result.stderr
    session = SyncSession.objects.get()
    assert result.stdout.splitlines() == [
        f"session {session.pk} started: {session.admin_url()}",
        result.stdout.splitlines()[1],
    ]
    assert result.stdout.splitlines()[1].startswith(
        f"session {session.pk} completed: 4 found, 3 uploaded, 1 skipped, 0 failed")
    assert "4/4 files" in result.stderr
    assert "roboflow.sdk" not in result.stderr and API_KEY not in result.stdout + result.stderr


@pytest.mark.slow
def test_sync_session_on_the_cluster(api, source, tmp_path, dataset, cluster_factory):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"project": "to-roboflow", "source_dir": str(source),
                                  "destination": destination(), "upload_workers": 4}))
    cluster_factory()

    result = manage("upload", "--config", str(config), "--no-progress")

    assert result.returncode == 0, result.stderr
    session = wait_for(lambda: SyncSession.objects.filter(status=SessionStatus.COMPLETED).first(), 30,
                       what="session completed")
    assert (session.uploaded_count, session.skipped_count) == (3, 1)
    # a.jpg and a-copy.jpg race on two tasks: either may be the one Roboflow calls a duplicate.
    assert session.files.get(status=FileStatus.SKIPPED).skip_reason == "duplicate"
    ids = list(session.files.values_list("remote_id", flat=True))
    assert len(ids) == 4 and set(ids) == set(api.project(WORKSPACE, PROJECT).images)
