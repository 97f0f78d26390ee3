"""The Roboflow destination, with the real roboflow SDK against the loopback API in tests/servers
(fixtures roboflow_api, roboflow_destination: tests/servers/roboflow_api.py, a plugin of tests/conftest.py)."""

from __future__ import annotations

import itertools
import json
import logging
import socket
import tempfile
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import roboflow

from projects.destinations import build_destination, destination_class
from projects.destinations.base import ConfigError, DestinationError, UploadResult
from projects.destinations.roboflow import RoboflowDestination
from projects.roboflow_sdk import retry_after
from tests.servers.roboflow_api import (
    API_KEY,
    API_KEY_ENV,
    NEITHER_PROJECT,
    PROJECT,
    WORKSPACE,
    RoboflowAPI,
    make_image,
    point_sdk_at,
)

_seeds = itertools.count(1)


def put(dest: RoboflowDestination, relative: str, data: bytes | str | None = None) -> str:
    path = Path(dest.source_dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(make_image(next(_seeds)) if data is None else data)
    return str(path)


def upload(dest: RoboflowDestination, relative: str, data: bytes | str | None = None) -> UploadResult:
    return dest.upload(put(dest, relative, data), relative)


def upload_error(dest: RoboflowDestination, relative: str, data: bytes | str | None = None) -> DestinationError:
    with pytest.raises(DestinationError) as info:
        upload(dest, relative, data)
    return info.value


@pytest.fixture
def make_destination(roboflow_api, monkeypatch, tmp_path) -> Callable[..., RoboflowDestination]:
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    (tmp_path / "source").mkdir(exist_ok=True)

    def make(**options) -> RoboflowDestination:
        options = {"workspace": WORKSPACE, "project": PROJECT, "api_key_env": API_KEY_ENV, **options}
        dest = RoboflowDestination(options)
        dest.bind(project="demo", session_id=7, source_dir=str(tmp_path / "source"))
        return dest

    return make


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_api(roboflow_api):
    """The SDK pointed at a loopback port nobody listens on, for the duration of the test."""
    point_sdk_at(f"http://127.0.0.1:{unused_port()}")
    yield
    point_sdk_at(roboflow_api.base_url)


def stored(api: RoboflowAPI, name: str, project: str = PROJECT):
    return api.project(WORKSPACE, project).by_name(name)


# -- options -----------------------------------------------------------------------------------
def test_registered_as_kind_roboflow_with_image_defaults_and_no_listing():
    assert destination_class("roboflow") is RoboflowDestination
    assert RoboflowDestination.supports_listing is False
    assert {".jpg", ".jpeg", ".png"} <= set(RoboflowDestination.default_extensions)


def test_options_have_defaults_and_describe_names_workspace_and_project():
    dest = build_destination("roboflow", {"type": "roboflow", "workspace": "acme", "project": "widgets"})
    assert dest.options["api_key_env"] == "ROBOFLOW_API_KEY"
    assert dest.options["split"] == "train"
    assert dest.options["tags"] == []
    assert dest.options["timeout"] > 0
    assert dest.describe() == {"kind": "roboflow", "workspace": "acme", "project": "widgets"}
    assert dest.redacted_options() == dest.options


@pytest.mark.parametrize(
    "options, message",
    [
        ({"project": "widgets"}, "destination.workspace: required"),
        ({"workspace": "acme", "project": "a/b"}, "destination.project: must be a Roboflow url slug"),
        ({"workspace": "acme", "project": "p", "split": "validation"}, "destination.split: must be one of"),
        ({"workspace": "acme", "project": "p", "tags": ["ok", 3]}, "destination.tags"),
        ({"workspace": "acme", "project": "p", "tags": "one"}, "destination.tags: expected list"),
        ({"workspace": "acme", "project": "p", "timeout": 0}, "destination.timeout: must be a positive"),
        ({"workspace": "acme", "project": "p", "neither_project": "p"}, "destination.neither_project: must differ"),
        ({"workspace": "acme", "project": "p", "api_key_env": "MY KEY"}, "destination.api_key_env"),
        ({"workspace": "acme", "project": "p", "api_key": "secret"}, "destination.api_key: unknown option"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        RoboflowDestination(options)


# -- check ---------------------------------------------------------------------------------------
def test_check_passes_for_an_existing_workspace_and_projects(roboflow_destination, roboflow_api):
    assert roboflow_destination.health() == (True, "ok")
    assert [path for _, path, _ in roboflow_api.requests] == [
        "/", f"/{WORKSPACE}", f"/{WORKSPACE}/{PROJECT}", f"/{WORKSPACE}/{NEITHER_PROJECT}"
    ]


def test_check_with_a_bad_key_is_permanent_and_does_not_repeat_the_key(make_destination, monkeypatch, roboflow_api):
    monkeypatch.setenv(API_KEY_ENV, "wrongKey123abc")
    with pytest.raises(DestinationError) as info:
        make_destination().check()
    assert info.value.permanent
    assert f"API key in {API_KEY_ENV} was refused (HTTP 401)" in info.value.message
    assert "wrongKey123abc" not in info.value.message  # the server echoed it
    assert roboflow_api.count("/") == 1  # the SDK's own 5 retries are off


def test_check_with_a_missing_project_is_permanent_and_names_it(make_destination):
    with pytest.raises(DestinationError) as info:
        make_destination(project="gadgets").check()
    assert info.value.permanent
    assert info.value.message == f"Roboflow project {WORKSPACE}/gadgets: not found"


def test_check_with_a_missing_neither_project_is_permanent(make_destination):
    with pytest.raises(DestinationError) as info:
        make_destination(neither_project="nope").check()
    assert info.value.permanent and f"{WORKSPACE}/nope: not found" in info.value.message


def test_check_refuses_a_key_of_another_workspace(make_destination):
    with pytest.raises(DestinationError) as info:
        make_destination(workspace="globex").check()
    assert info.value.permanent
    assert info.value.message == f"the API key in {API_KEY_ENV} belongs to workspace 'acme', not 'globex'"


def test_check_with_a_missing_workspace_is_permanent(make_destination, roboflow_api):
    roboflow_api.keys[API_KEY] = "ghost"  # the key's workspace has since been deleted
    with pytest.raises(DestinationError) as info:
        make_destination(workspace="ghost").check()
    assert info.value.permanent and info.value.message == "Roboflow workspace 'ghost': not found"


def test_missing_key_variable_is_permanent_and_named(make_destination, monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_ENV)
    dest = make_destination()
    for action in (dest.check, lambda: dest.upload(put(dest, "a.png"), "a.png")):
        with pytest.raises(DestinationError) as info:
            action()
        assert info.value.permanent
        assert info.value.message == f"environment variable {API_KEY_ENV} is not set: it must hold the Roboflow API key"


def test_key_the_sdk_would_not_check_is_refused(make_destination, monkeypatch, roboflow_api):
    monkeypatch.setenv(API_KEY_ENV, "ALLCAPS123")
    with pytest.raises(DestinationError, match=f"the value of {API_KEY_ENV} is not a Roboflow API key") as info:
        make_destination().check()
    assert info.value.permanent and roboflow_api.requests == []


def test_check_server_error_is_transient(roboflow_destination, roboflow_api):
    roboflow_api.fail_next(1, 503, path_contains=f"/{WORKSPACE}/{PROJECT}", retry_after=3)
    with pytest.raises(DestinationError) as info:
        roboflow_destination.check()
    assert not info.value.permanent and info.value.retry_after == 3


def test_check_against_a_silent_server_times_out(make_destination, roboflow_api):
    roboflow_api.stall_next(1, path_contains="/")  # the SDK sends its key check without a timeout
    with pytest.raises(DestinationError) as info:
        make_destination(timeout=0.3).check()
    assert not info.value.permanent
    assert info.value.message == "Roboflow API key check: no answer within 0.3 s"


# -- upload: splits, projects, names -----------------------------------------------------------------
def test_split_comes_from_the_folder_layout(roboflow_destination, roboflow_api):
    for relative in ("train/images/a.png", "valid/b.png", "x/test/y/c.png", "d.png"):
        upload(roboflow_destination, relative)
    splits = {name: stored(roboflow_api, name).split for name in ("a.png", "b.png", "c.png", "d.png")}
    assert splits == {"a.png": "train", "b.png": "valid", "c.png": "test", "d.png": "train"}


def test_default_split_from_the_config(make_destination, roboflow_api):
    dest = make_destination(split="valid")
    upload(dest, "cams/a.png")
    upload(dest, "test/b.png")
    assert (stored(roboflow_api, "a.png").split, stored(roboflow_api, "b.png").split) == ("valid", "test")


def test_result_carries_the_roboflow_image_id_and_size(roboflow_destination, roboflow_api):
    data = make_image(next(_seeds), "JPEG")
    result = upload(roboflow_destination, "a.jpg", data)
    assert result.remote_id == stored(roboflow_api, "a.jpg").id
    assert result.size == len(data) and not result.duplicate
    assert stored(roboflow_api, "a.jpg").data == data


def test_uploads_go_through_the_proxy_the_environment_names(make_destination, monkeypatch):
    # requests' own reading of the environment, done once per host and thread (EnvironmentOnceSession):
    # a fresh thread, whose sessions have read nothing yet.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    dest = make_destination()
    put(dest, "proxied.jpg")

    with ThreadPoolExecutor(1) as fresh_thread:
        errors = [fresh_thread.submit(upload_error, dest, "proxied.jpg").result() for _ in range(2)]

    assert [error.permanent for error in errors] == [False, False]
    assert all("proxy" in error.message.lower() for error in errors), [e.message for e in errors]


def test_tags_and_default_batch_name_from_project_and_session(roboflow_destination, make_destination, roboflow_api):
    upload(make_destination(tags=["field-2024", "north cam"]), "a.png")
    image = stored(roboflow_api, "a.png")
    assert image.tags == ["field-2024", "north cam"]
    assert image.batch == "demo-session-7"


def test_batch_name_is_sanitised_for_the_annotation_query(make_destination, roboflow_api):
    dest = make_destination(batch_name="Été #3 & more?x=1")
    put(dest, "a.txt", "0 0.5 0.5 0.1 0.1\n")
    upload(dest, "a.png")
    image = stored(roboflow_api, "a.png")
    assert image.batch == "Ete-3-more-x-1"
    assert image.annotation is not None and image.annotation.job_name == "Ete-3-more-x-1"
    assert image.annotation.name == "a.txt"


def test_annotation_named_with_unsafe_characters_reaches_the_server_intact(roboflow_destination, roboflow_api):
    put(roboflow_destination, "shots/cam #1&2.txt", "0 0.5 0.5 0.1 0.1\n")
    result = upload(roboflow_destination, "shots/cam #1&2.png")
    annotation = stored(roboflow_api, "cam #1&2.png").annotation
    assert annotation is not None and annotation.name == "cam-1-2.txt"
    assert annotation.job_name == "demo-session-7"
    assert result.note.startswith("YOLO annotation without")


def test_images_under_neither_go_to_the_neither_project(roboflow_destination, roboflow_api):
    upload(roboflow_destination, "train/neither/empty-road.png")
    upload(roboflow_destination, "train/road.png")
    assert stored(roboflow_api, "empty-road.png", NEITHER_PROJECT).split == "train"
    assert [i.name for i in roboflow_api.project(WORKSPACE, PROJECT).images.values()] == ["road.png"]


def test_neither_image_without_a_neither_project_is_permanent(make_destination, roboflow_api):
    error = upload_error(make_destination(), "neither/a.png")
    assert error.permanent
    assert error.message == "neither/a.png is in a neither/ folder but destination.neither_project is not set"
    assert roboflow_api.requests == []


def test_duplicate_image_is_a_duplicate_result_with_the_existing_id(roboflow_destination, roboflow_api):
    data = make_image(next(_seeds))
    first = upload(roboflow_destination, "a.png", data)
    again = upload(roboflow_destination, "copy/a-copy.png", data)
    assert not first.duplicate
    assert again.duplicate and again.remote_id == first.remote_id
    assert len(roboflow_api.project(WORKSPACE, PROJECT).images) == 1


# -- upload: annotations ------------------------------------------------------------------------------
def test_yolo_annotation_is_sent_with_the_labelmap_from_data_yaml(roboflow_destination, roboflow_api):
    put(roboflow_destination, "data.yaml", "names: ['cat', 'dog']\n")
    put(roboflow_destination, "train/labels/a.txt", "1 0.5 0.5 0.2 0.2\n")
    result = upload(roboflow_destination, "train/images/a.png")
    annotation = stored(roboflow_api, "a.png").annotation
    assert annotation is not None
    assert (annotation.name, annotation.text) == ("a.txt", "1 0.5 0.5 0.2 0.2\n")
    assert annotation.labelmap == {"0": "cat", "1": "dog"}
    assert annotation.job_name == "demo-session-7"
    assert result.note == ""


def test_yolo_annotation_is_sent_with_the_labelmap_from_classes_txt(roboflow_destination, roboflow_api):
    put(roboflow_destination, "cams/classes.txt", "widget\ngadget\n")
    put(roboflow_destination, "cams/north/a.txt", "0 0.5 0.5 0.2 0.2\n")
    upload(roboflow_destination, "cams/north/a.png")
    annotation = stored(roboflow_api, "a.png").annotation
    assert annotation is not None and annotation.labelmap == {"0": "widget", "1": "gadget"}


def test_voc_annotation_is_paired_and_sent(roboflow_destination, roboflow_api):
    xml = (
        "<annotation><filename>a.jpg</filename><size><width>24</width><height>16</height></size><object>"
        "<name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>10</xmax><ymax>8</ymax></bndbox>"
        "</object></annotation>"
    )
    put(roboflow_destination, "valid/a.xml", xml)
    upload(roboflow_destination, "valid/a.jpg", make_image(next(_seeds), "JPEG"))
    image = stored(roboflow_api, "a.jpg")
    assert image.annotation is not None
    assert (image.annotation.name, image.annotation.text, image.annotation.labelmap) == ("a.xml", xml, None)
    assert image.split == "valid"


def test_coco_annotation_is_paired_and_sent(roboflow_destination, roboflow_api):
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": 24, "height": 16}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 0, "name": "cat"}],
    }
    put(roboflow_destination, "a.json", json.dumps(document))
    upload(roboflow_destination, "a.png")
    annotation = stored(roboflow_api, "a.png").annotation
    assert annotation is not None and annotation.name == "a.json"
    assert json.loads(annotation.text) == document


def test_folder_coco_file_sends_each_image_its_part(roboflow_destination, roboflow_api):
    document = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 7, "image_id": 2, "category_id": 0, "bbox": [1, 1, 4, 4]}],
        "categories": [{"id": 0, "name": "cat"}],
    }
    put(roboflow_destination, "train/_annotations.coco.json", json.dumps(document))
    upload(roboflow_destination, "train/b.png")
    annotation = stored(roboflow_api, "b.png").annotation
    assert annotation is not None and annotation.name == "annotation.coco.json"
    sent = json.loads(annotation.text)
    assert sent["images"] == [{"id": 2, "file_name": "b.png"}] and [a["id"] for a in sent["annotations"]] == [7]


def test_image_without_annotation_is_uploaded_and_noted(roboflow_destination, roboflow_api):
    result = upload(roboflow_destination, "train/images/a.png")
    assert result.note == "no annotation" and result.remote_id
    assert stored(roboflow_api, "a.png").annotation is None
    assert roboflow_api.count("/annotate/") == 0


def test_reupload_of_an_annotated_duplicate_keeps_its_annotation(roboflow_destination, roboflow_api):
    put(roboflow_destination, "a.txt", "0 0.5 0.5 0.2 0.2\n")
    data = make_image(next(_seeds))
    upload(roboflow_destination, "a.png", data)
    again = upload(roboflow_destination, "a.png", data)
    assert again.duplicate
    assert "annotation not replaced: already annotated" in again.note


def test_annotation_failure_after_the_image_is_transient_and_a_retry_completes(roboflow_destination, roboflow_api):
    put(roboflow_destination, "classes.txt", "cat\n")
    put(roboflow_destination, "a.txt", "0 0.5 0.5 0.2 0.2\n")
    path = put(roboflow_destination, "a.png")
    roboflow_api.fail_next(1, 502, path_contains="/annotate/")
    with pytest.raises(DestinationError) as info:
        roboflow_destination.upload(path, "a.png")
    assert not info.value.permanent and "annotation a.txt of image" in info.value.message
    retried = roboflow_destination.upload(path, "a.png")
    assert retried.duplicate  # the pipeline counts it skipped: see the report on base.py
    assert stored(roboflow_api, "a.png").annotation is not None


def test_annotation_rejected_by_the_server_is_permanent(roboflow_destination, roboflow_api):
    put(roboflow_destination, "a.txt", "0 0.5 0.5 0.2 0.2\n")
    roboflow_api.fail_next(1, 400, path_contains="/annotate/", body={"error": {"message": "bad labels"}})
    error = upload_error(roboflow_destination, "a.png")
    assert error.permanent and error.message.endswith("HTTP 400: bad labels")


def test_broken_labelmap_is_permanent_before_anything_is_sent(roboflow_destination, roboflow_api):
    put(roboflow_destination, "data.yaml", "names: [cat\n")
    put(roboflow_destination, "a.txt", "0 0.5 0.5 0.2 0.2\n")
    error = upload_error(roboflow_destination, "a.png")
    assert error.permanent and "data.yaml is not valid YAML" in error.message
    assert roboflow_api.requests == []


# -- upload: errors -------------------------------------------------------------------------------------
def test_rate_limit_is_transient_with_retry_after_and_no_sdk_retry(roboflow_destination, roboflow_api):
    roboflow_api.fail_next(1, 429, path_contains="/upload", retry_after=17)
    error = upload_error(roboflow_destination, "a.png")
    assert not error.permanent and error.retry_after == 17
    assert "rate limited" in error.message
    assert roboflow_api.count("/upload") == 1


def test_retry_after_as_an_http_date_is_seconds_from_now(roboflow_destination, roboflow_api):
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    roboflow_api.fail_next(1, 429, path_contains="/upload", retry_after=format_datetime(when, usegmt=True))
    error = upload_error(roboflow_destination, "a.png")
    assert error.retry_after is not None and 3000 < error.retry_after <= 3600


def test_server_error_is_transient_and_not_retried_by_the_sdk(roboflow_destination, roboflow_api):
    roboflow_api.fail_next(1, 500, path_contains="/upload")
    error = upload_error(roboflow_destination, "a.png")
    assert not error.permanent and error.retry_after is None
    assert error.message == "Roboflow upload of a.png: HTTP 500: injected HTTP 500"
    assert roboflow_api.count("/upload") == 1
    assert upload(roboflow_destination, "b.png").remote_id  # the next one goes through


def test_image_the_server_cannot_decode_is_permanent(roboflow_destination):
    error = upload_error(roboflow_destination, "a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert error.permanent
    assert error.message == "Roboflow upload of a.png: HTTP 400: Invalid image: the file could not be decoded"


def test_other_client_errors_are_permanent(roboflow_destination, roboflow_api):
    roboflow_api.fail_next(1, 413, path_contains="/upload", body={"error": {"message": "file too large"}})
    error = upload_error(roboflow_destination, "a.png")
    assert error.permanent and error.message.endswith("HTTP 413: file too large")


def test_string_error_that_crashes_the_sdk_is_a_clean_error(roboflow_destination, roboflow_api):
    roboflow_api.fail_next(1, 402, path_contains="/upload", body={"error": "upload quota exceeded"})
    error = upload_error(roboflow_destination, "a.png")
    assert error.permanent and error.message.endswith("HTTP 402: upload quota exceeded")


def test_revoked_key_during_upload_is_permanent(roboflow_destination, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "revokedKey42xyz")
    error = upload_error(roboflow_destination, "a.png")
    assert error.permanent and f"the API key in {API_KEY_ENV} was refused (HTTP 401)" in error.message
    assert "revokedKey42xyz" not in error.message


def test_non_image_file_is_permanent_and_not_sent(roboflow_destination, roboflow_api):
    error = upload_error(roboflow_destination, "notes.jpg", "just some text\n")
    assert error.permanent
    assert error.message.startswith("not an image Roboflow accepts: notes.jpg (not a recognised file type; accepted:")
    assert upload_error(roboflow_destination, "doc.png", b"%PDF-1.4\n" + b"0" * 64).message.startswith(
        "not an image Roboflow accepts: doc.png (application/pdf;"
    )
    assert upload_error(roboflow_destination, "empty.png", b"").permanent
    assert roboflow_api.requests == []


def test_missing_local_file_is_permanent(roboflow_destination):
    with pytest.raises(DestinationError) as info:
        roboflow_destination.upload(str(Path(roboflow_destination.source_dir) / "gone.png"), "gone.png")
    assert info.value.permanent and info.value.message.startswith("file not found:")


def test_unreachable_server_is_transient(roboflow_destination, unreachable_api):
    error = upload_error(roboflow_destination, "a.png")
    assert not error.permanent and "connection failed" in error.message
    assert API_KEY not in error.message and "api_key=***" in error.message


def test_silent_server_times_out_as_transient(make_destination, roboflow_api):
    roboflow_api.stall_next(1, path_contains="/upload")
    error = upload_error(make_destination(timeout=0.3), "a.png")
    assert not error.permanent and error.message == "Roboflow upload of a.png: no answer within 0.3 s"


def test_many_threads_upload_at_once(roboflow_destination, roboflow_api):
    put(roboflow_destination, "data.yaml", "names: [cat]\n")
    jobs = []
    for i in range(24):
        split = ("train", "valid", "test")[i % 3]
        put(roboflow_destination, f"{split}/labels/img{i}.txt", f"0 0.5 0.5 0.{i % 9 + 1} 0.1\n")
        jobs.append((put(roboflow_destination, f"{split}/images/img{i}.png"), f"{split}/images/img{i}.png"))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: roboflow_destination.upload(*job), jobs))
    images = roboflow_api.project(WORKSPACE, PROJECT).images
    assert sorted(r.remote_id for r in results) == sorted(images)
    for i in range(24):
        image = stored(roboflow_api, f"img{i}.png")
        assert image.split == ("train", "valid", "test")[i % 3]
        assert image.annotation is not None and image.annotation.text == f"0 0.5 0.5 0.{i % 9 + 1} 0.1\n"


def test_images_of_one_name_sent_at_once_each_arrive_under_it_and_no_link_folder_stays(
    make_destination, roboflow_api, tmp_path, monkeypatch
):
    # The SDK names an image after the path it reads: each is sent through a link of its own name.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    dest = make_destination()
    jobs = [(put(dest, f"{split}/images/same.png"), f"{split}/images/same.png") for split in ("train", "valid", "test")]
    jobs += [(put(dest, f"batch{i}/{split}/images/same.png"), f"batch{i}/{split}/images/same.png")
             for i in range(5) for split in ("train", "valid", "test")]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda job: dest.upload(*job), jobs))
    images = roboflow_api.project(WORKSPACE, PROJECT).images
    for (path, key), result in zip(jobs, results):
        image = images[result.remote_id]
        assert (image.name, image.split, image.data) == ("same.png", key.split("/")[-3], Path(path).read_bytes())
    assert list((tmp_path / "temp").iterdir())  # the threads' link folders, kept between images
    dest.close()
    assert list((tmp_path / "temp").iterdir()) == []


# -- the API key stays secret; SDK chatter goes to logging ----------------------------------------------
def test_api_key_appears_in_no_log_record_error_or_output(
    roboflow_destination, make_destination, roboflow_api, monkeypatch, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    errors: list[DestinationError] = []
    roboflow_destination.check()
    put(roboflow_destination, "data.yaml", "names: [cat]\n")
    put(roboflow_destination, "train/labels/a.txt", "0 0.5 0.5 0.2 0.2\n")
    upload(roboflow_destination, "train/images/a.png")
    put(roboflow_destination, "valid/labels/c.txt", "0 0.5 0.5 0.2 0.2\n")
    failures = [("b.png", 429, "/upload", None), ("valid/images/c.png", 500, "/annotate/", None)]
    failures.append(("d.png", 400, "/upload", {"error": "crash the sdk"}))
    for relative, status, path, body in failures:
        roboflow_api.fail_next(1, status, path_contains=path, retry_after=1, body=body)
        errors.append(upload_error(roboflow_destination, relative))
    roboflow_api.stall_next(1, path_contains="/upload")
    with pytest.raises(DestinationError) as info:
        upload(make_destination(timeout=0.2), "e.png")
    errors.append(info.value)
    point_sdk_at(f"http://127.0.0.1:{unused_port()}")
    try:
        for action in (roboflow_destination.check, lambda: upload(roboflow_destination, "f.png")):
            with pytest.raises(DestinationError) as info:
                action()
            errors.append(info.value)
    finally:
        point_sdk_at(roboflow_api.base_url)

    assert len(errors) == 6 and all(not e.permanent for e in errors[:2] + errors[3:])
    out = capsys.readouterr()
    assert any("api_key=" in r.getMessage() for r in caplog.records)  # urllib3 logged the URLs...
    for record in caplog.records:
        assert API_KEY not in record.getMessage()  # ...masked
    assert API_KEY not in caplog.text
    for error in errors:
        assert API_KEY not in str(error)
        assert error.__cause__ is None and error.__context__ is None  # no SDK exception with its URL
        assert API_KEY not in "".join(traceback.format_exception(error))
    assert API_KEY not in out.out and API_KEY not in out.err


def test_sdk_prints_go_to_logging_while_other_threads_print_normally(
    roboflow_destination, roboflow_api, caplog, capsys
):
    caplog.set_level(logging.INFO, logger="projects.destinations.roboflow.sdk")
    arrived = roboflow_api.stall_next(1, path_contains=f"/{WORKSPACE}")
    outcome: list[BaseException] = []

    def chatty_sdk_call() -> None:  # Roboflow().workspace() prints "loading Roboflow workspace..."
        try:
            roboflow_destination.api.call(
                lambda key: roboflow.Roboflow(api_key=key).workspace(WORKSPACE), API_KEY, what="workspace"
            )
        except DestinationError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=chatty_sdk_call)
    worker.start()
    assert arrived.wait(10)  # the worker printed, and is inside its call right now
    print("progress: 50%")
    roboflow_api.release_stalls()
    worker.join(10)

    assert len(outcome) == 1
    assert capsys.readouterr().out == "progress: 50%\n"
    assert [r.getMessage() for r in caplog.records if r.name.endswith(".sdk")] == ["loading Roboflow workspace..."]


def test_retry_after_parsing():
    def response(value: str | None) -> requests.Response:
        r = requests.Response()
        if value is not None:
            r.headers["Retry-After"] = value
        return r

    assert retry_after(response("12")) == 12
    assert retry_after(response("1.5")) == 1.5
    assert retry_after(response("Wed, 21 Oct 2015 07:28:00 GMT")) == 0  # already past
    assert retry_after(response("soon")) is None
    assert retry_after(response(None)) is None
    assert retry_after(None) is None


# -- the test server's import side (for the importer) ----------------------------------------------------
def test_seeded_project_is_searchable_and_downloadable_through_the_sdk(roboflow_api):
    seeded = roboflow_api.seed(WORKSPACE, "imports", 7)
    project = roboflow.Roboflow(api_key=API_KEY).workspace(WORKSPACE).project("imports")
    pages = list(project.search_all(limit=3, fields=["id", "name", "split", "tags"]))
    assert [len(page) for page in pages] == [3, 3, 1]
    found = [hit for page in pages for hit in page]
    assert [hit["id"] for hit in found] == [image.id for image in seeded]
    details = project.image(seeded[1].id)
    assert details["split"] == "valid" and details["tags"] == ["seeded"]
    assert details["labels"] == ["dog"] and details["annotation"]["boxes"][0]["label"] == "dog"
    original = requests.get(details["urls"]["original"], timeout=10)
    assert original.content == seeded[1].data
    assert requests.get(details["urls"]["annotation"], timeout=10).json()["boxes"] == details["annotation"]["boxes"]
    assert roboflow_api.fetches == {seeded[1].id: 1}
    assert roboflow_api.annotation_fetches == {seeded[1].id: 1}
