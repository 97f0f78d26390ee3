"""The admin's project form, driven through the real admin as a logged-in staff user: a choice
of destination type with that type's own fields, plain lists, the command line's validation
before anything is saved, errors on the field they are about, and pages that build no client."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from projects.models import ConfigHistory, Project
from tests.conftest import ROOT, manage_env

ADD_URL = "/admin/projects/project/add/"


@pytest.fixture
def staff_client(client, db):
    user = User.objects.create_user("editor", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_project", "change_project",
                                                                       "view_project"]))
    client.force_login(user)
    return client


def form_data(name: str = "field-recordings", **fields: Any) -> dict[str, Any]:
    return {"name": name, "source_dir": "/data/rec", "notify_on": "never", "_save": "Save", **fields}


def errors_of(response) -> dict[str, list[str]]:
    assert response.status_code == 200, "the form was accepted"
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def post(client, data: dict[str, Any], url: str = ADD_URL):
    return client.post(url, data)


# -- creating and changing --------------------------------------------------------------------------
def test_an_s3_project_is_created_from_the_form_with_defaults_filled_in(staff_client):
    response = post(staff_client, form_data(
        destination_kind="s3", s3__bucket="recordings", s3__prefix="rec/2026", s3__region="eu-west-1",
        extensions="wav, .JPG\nflac", exclude="**/tmp/**\n*.bak", upload_workers="4", retry_backoff_base="2.5",
        notify_url="https://hooks.example.com/in", notify_on="always", notify_secret_env="UPLOADER_SECRET_HOOK"))

    assert response.status_code == 302
    project = Project.objects.get(name="field-recordings")
    assert project.destination_kind == "s3"
    assert project.destination_options == {
        "bucket": "recordings", "prefix": "rec/2026", "region": "eu-west-1", "endpoint_url": None,
        "aws_profile": None, "storage_class": None, "addressing_style": "auto", "multipart_threshold_mb": 64,
        "multipart_chunk_mb": 16, "max_pool_connections": 64}
    assert project.extensions == [".wav", ".jpg", ".flac"]
    assert project.exclude == ["**/tmp/**", "*.bak"]
    assert (project.upload_workers, project.upload_tasks, project.retry_backoff_base) == (4, 2, 2.5)
    assert (project.notify_url, project.notify_on, project.notify_secret_env) == (
        "https://hooks.example.com/in", "always", "UPLOADER_SECRET_HOOK")


def test_an_sftp_project_keeps_only_the_names_of_its_secrets(staff_client):
    response = post(staff_client, form_data(
        destination_kind="sftp", sftp__host="127.0.0.1", sftp__port="2222", sftp__username="uploader",
        sftp__remote_dir="/srv/incoming", sftp__password_env="UPLOADER_SECRET_SFTP_PASSWORD", sftp__accept_new_host_key="on"))

    assert response.status_code == 302
    options = Project.objects.get().destination_options
    assert options["port"] == 2222
    assert options["password_env"] == "UPLOADER_SECRET_SFTP_PASSWORD"
    assert options["accept_new_host_key"] is True
    assert options["use_agent"] is False
    assert options["known_hosts"] == "~/.ssh/known_hosts"


def test_a_local_project_ignores_the_fields_of_other_destination_types(staff_client, tmp_path):
    response = post(staff_client, form_data(
        destination_kind="local", local__path=str(tmp_path / "archive"), local__prefix="2026", local__create="on",
        s3__bucket="left-over", sftp__host="left-over"))

    assert response.status_code == 302
    assert Project.objects.get().destination_options == {"path": str(tmp_path / "archive"), "prefix": "2026",
                                                          "create": True}


def test_a_roboflow_project_takes_its_tags_as_a_plain_list(staff_client):
    response = post(staff_client, form_data(
        destination_kind="roboflow", roboflow__workspace="acme", roboflow__project="widgets",
        roboflow__api_key_env="ROBOFLOW_API_KEY", roboflow__tags="field, 2026", roboflow__split="valid"))

    assert response.status_code == 302
    options = Project.objects.get().destination_options
    assert (options["workspace"], options["project"], options["split"]) == ("acme", "widgets", "valid")
    assert options["tags"] == ["field", "2026"]


def test_saving_records_the_config_in_config_history_and_a_change_records_the_diff(staff_client, tmp_path):
    post(staff_client, form_data(destination_kind="local", local__path=str(tmp_path / "out")))
    project = Project.objects.get()
    first = ConfigHistory.objects.get(project=project)
    assert (first.source, first.created_by) == ("admin", "editor")
    assert first.config["destination"] == {"type": "local", "path": str(tmp_path / "out"), "prefix": "",
                                           "create": False}

    response = post(staff_client, form_data(destination_kind="local", local__path=str(tmp_path / "out"),
                                            local__create="on", upload_workers="9"),
                    url=f"/admin/projects/project/{project.pk}/change/")

    assert response.status_code == 302
    second = ConfigHistory.objects.filter(project=project).order_by("id").last()
    assert second.pk != first.pk
    assert second.config["upload_workers"] == 9
    assert '+  "upload_workers": 9' in second.diff_from_previous()


def test_the_change_form_shows_the_stored_options_and_lists_as_text(staff_client, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out"), "prefix": "keep"},
                           extensions=[".wav", ".flac"])

    page = staff_client.get(f"/admin/projects/project/{project.pk}/change/").content.decode()

    assert 'name="local__prefix" value="keep"' in page
    assert ".wav, .flac</textarea>" in page
    assert '<option value="local" selected>' in page


def test_the_form_is_grouped_and_each_destination_type_labelled(staff_client):
    page = staff_client.get(ADD_URL).content.decode()

    for heading in ("Source", "Transfers and retries", "Notifications", "Destination: Amazon S3 / S3-compatible",
                    "Destination: SFTP server", "Destination: Roboflow", "Destination: Local folder"):
        assert f">{heading}</h2>" in page
    assert "fieldset class=\"module aligned destination-options destination-s3\"" in page
    assert "projects/project_form.js" in page
    assert "NAME of the environment variable holding the password" in page  # help from the schema


# -- refused, with nothing saved ---------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"destination_kind": "ftp"}, "destination_kind", "Select a valid choice. ftp is not one of"),
    ({"destination_kind": ""}, "destination_kind", "destination.type: required"),
    ({"destination_kind": "s3"}, "s3__bucket", "destination.bucket: required for type 's3'"),
    ({"destination_kind": "s3", "s3__bucket": "b", "s3__multipart_threshold_mb": "lots"},
     "s3__multipart_threshold_mb", "Enter a whole number."),
    ({"destination_kind": "s3", "s3__bucket": "b", "s3__multipart_threshold_mb": "2"},
     "s3__multipart_threshold_mb", "destination.multipart_threshold_mb: must be at least 5"),
    ({"destination_kind": "s3", "s3__bucket": "b", "s3__prefix": "a/../../b"},
     "s3__prefix", "destination.prefix: must not contain . or .. segments"),
    ({"destination_kind": "local", "local__path": "/srv/out", "local__prefix": "../etc"},
     "local__prefix", "destination.prefix: must not contain . or .. segments"),
    ({"destination_kind": "local", "local__path": "/srv/./out"},
     "local__path", "destination.path: must not contain . or .. segments"),
    ({"destination_kind": "sftp", "sftp__host": "h", "sftp__username": "u", "sftp__remote_dir": "in/../../etc",
      "sftp__use_agent": "on"}, "sftp__remote_dir", "destination.remote_dir: must not contain . or .. segments"),
    ({"destination_kind": "sftp", "sftp__host": "h", "sftp__username": "u", "sftp__remote_dir": "in",
      "sftp__port": "twenty-two", "sftp__use_agent": "on"}, "sftp__port", "Enter a whole number."),
    ({"destination_kind": "roboflow", "roboflow__workspace": "acme", "roboflow__project": "widgets",
      "roboflow__split": ".."}, "roboflow__split", "Select a valid choice."),
    ({"destination_kind": "local", "local__path": "/srv/out", "upload_workers": "0"},
     "upload_workers", "upload_workers: must be at least 1"),
    ({"destination_kind": "local", "local__path": "/srv/out", "notify_url": "ftp://hooks.example.com/in"},
     "notify_url", "notify_url: must be an http:// or https:// URL"),
])
def test_a_wrong_value_is_an_error_on_its_field_and_nothing_is_saved(staff_client, fields, field, message):
    errors = errors_of(post(staff_client, form_data(**fields)))

    assert list(errors) == [field]
    assert errors[field][0].startswith(message)
    assert not Project.objects.exists()
    assert not ConfigHistory.objects.exists()


def test_a_notify_url_with_a_password_is_refused_and_not_echoed_back(staff_client):
    response = post(staff_client, form_data(destination_kind="local", local__path="/srv/out",
                                            notify_url="https://alice:s3cret@hooks.example.com/in"))

    errors = errors_of(response)
    assert errors["notify_url"][0].startswith("notify_url: must not contain a password")
    assert "s3cret" not in response.content.decode()
    assert not Project.objects.exists()


def test_a_refused_change_leaves_the_stored_project_as_it_was(staff_client, make_project, tmp_path):
    project = make_project({"type": "local", "path": str(tmp_path / "out")}, upload_workers=6)

    response = post(staff_client, form_data(name=project.name, destination_kind="local",
                                            local__path=str(tmp_path / "out"), local__prefix="../up",
                                            upload_workers="1"),
                    url=f"/admin/projects/project/{project.pk}/change/")

    assert "local__prefix" in errors_of(response)
    project.refresh_from_db()
    assert project.upload_workers == 6
    assert project.destination_options["prefix"] == ""
    assert ConfigHistory.objects.filter(project=project).count() == 1


def test_a_second_project_of_the_same_name_is_refused(staff_client, make_project, tmp_path):
    make_project({"type": "local", "path": str(tmp_path / "out")}, project="taken")

    errors = errors_of(post(staff_client, form_data(name="taken", destination_kind="local", local__path="/srv/o")))

    assert list(errors) == ["name"]
    assert Project.objects.count() == 1


# -- displaying has no side effects ------------------------------------------------------------------
def test_pages_of_projects_with_unknown_or_old_options_render(staff_client, make_project, tmp_path):
    old = make_project({"type": "local", "path": str(tmp_path / "out")}, project="old")
    Project.objects.filter(pk=old.pk).update(destination_options={"path": "/srv/out", "colour": "red"})
    gone = make_project({"type": "local", "path": str(tmp_path / "out")}, project="gone")
    Project.objects.filter(pk=gone.pk).update(destination_kind="ftp", destination_options={"host": "h"})

    listing = staff_client.get("/admin/projects/project/")
    assert listing.status_code == 200
    assert "ftp: " in listing.content.decode()
    for project in (old, gone):
        assert staff_client.get(f"/admin/projects/project/{project.pk}/change/").status_code == 200


PROBE = """
import json, os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "uploader_site.settings")
django.setup()
from django.test import Client
from django.test.utils import setup_test_environment
from roboflow.util import http as sdk_http
from projects.models import Project

def hooked():
    return hasattr(sdk_http.get, "__wrapped__")

setup_test_environment()
project = Project.objects.get(name=sys.argv[1])
client = Client()
client.login(username="editor", password="x")
statuses = [client.get(url).status_code for url in
            ("/admin/projects/project/", f"/admin/projects/project/{project.pk}/change/")]
result = {"statuses": statuses, "hooked_after_pages": hooked()}
project.destination()  # the control: building one does patch the SDK, so the probe can see it
result["hooked_after_building"] = hooked()
print(json.dumps(result))
"""


def test_showing_a_roboflow_project_builds_no_destination_and_leaves_the_sdk_untouched(
        transactional_db, make_project):
    """The Roboflow destination patches the SDK process-wide when built; a fresh process proves
    that the list and change pages did not build one (this test process may have, elsewhere)."""
    User.objects.create_superuser("editor", password="x")
    make_project({"type": "roboflow", "workspace": "acme", "project": "widgets"}, project="rf")

    run = subprocess.run([sys.executable, "-c", PROBE, "rf"], cwd=ROOT, env=manage_env(), capture_output=True,
                         text=True, timeout=120)

    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"statuses": [200, 200], "hooked_after_pages": False, "hooked_after_building": True}
