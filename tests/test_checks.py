"""System checks: timing settings that would run a task twice or kill it mid-upload, and
secrets that configured projects name but the environment lacks."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

from projects.checks import check_project_secrets, check_scan_settings, check_task_timing

CLUSTER = {"name": "uploader", "orm": "default", "timeout": 3600, "retry": 4000}


def ids(messages) -> list[str]:
    return [m.id for m in messages]


# -- timing --------------------------------------------------------------------------------------------
@override_settings(Q_CLUSTER=CLUSTER, UPLOAD_TASK_SECONDS=300)
def test_consistent_timing_settings_pass():
    assert check_task_timing() == []


@pytest.mark.parametrize("size", [0, -5])
def test_a_scan_batch_size_below_one_is_an_error(size):
    with override_settings(SCAN_BATCH_SIZE=size):
        [error] = check_scan_settings()

    assert error.id == "projects.E003"
    assert isinstance(error, checks.Error)
    assert f"SCAN_BATCH_SIZE ({size})" in error.msg


def test_the_default_scan_batch_size_passes():
    assert check_scan_settings() == []


@pytest.mark.parametrize("retry", [3600, 60])
def test_a_retry_not_longer_than_the_timeout_is_an_error(retry):
    with override_settings(Q_CLUSTER={**CLUSTER, "retry": retry}, UPLOAD_TASK_SECONDS=300):
        [error] = check_task_timing()

    assert error.id == "projects.E001"
    assert isinstance(error, checks.Error)
    assert f"({retry} s)" in error.msg
    assert "Q_RETRY above Q_TIMEOUT" in error.hint


@pytest.mark.parametrize("seconds", [3600, 7200.5])
def test_upload_tasks_that_outlive_the_timeout_are_an_error(seconds):
    with override_settings(Q_CLUSTER=CLUSTER, UPLOAD_TASK_SECONDS=seconds):
        [error] = check_task_timing()

    assert error.id == "projects.E002"
    assert "UPLOAD_TASK_SECONDS" in error.msg and "below Q_TIMEOUT" in error.hint


@override_settings(Q_CLUSTER={**CLUSTER, "timeout": None, "retry": 10}, UPLOAD_TASK_SECONDS=300)
def test_without_a_timeout_there_is_nothing_to_compare():
    assert check_task_timing() == []


@override_settings(Q_CLUSTER={**CLUSTER, "retry": 100}, UPLOAD_TASK_SECONDS=5000)
def test_the_checks_run_with_manage_py_check():
    found = checks.run_checks(tags=["uploader"])

    assert {"projects.E001", "projects.E002"} <= set(ids(found))


# -- secrets named by projects --------------------------------------------------------------------------
@pytest.fixture
def projects_naming_secrets(make_project, tmp_path, monkeypatch, settings):
    settings.KEY_FILE_DIRS = [*settings.KEY_FILE_DIRS, str(tmp_path)]  # the key file below lives there
    for name in ("UPLOADER_SECRET_WT_SFTP_PASSWORD", "UPLOADER_SECRET_WT_ROBOFLOW_KEY", "UPLOADER_SECRET_WT_HOOK_SECRET", "UPLOADER_SECRET_WT_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    make_project({"type": "sftp", "host": "127.0.0.1", "username": "u", "remote_dir": "in",
                  "password_env": "UPLOADER_SECRET_WT_SFTP_PASSWORD"}, project="sftp-box", notify_url="https://h.example/in",
                 notify_secret_env="UPLOADER_SECRET_WT_HOOK_SECRET")
    make_project({"type": "sftp", "host": "127.0.0.1", "username": "u", "remote_dir": "in",
                  "key_file": str(tmp_path / "id"), "passphrase_env": "UPLOADER_SECRET_WT_PASSPHRASE"}, project="keyed")
    make_project({"type": "roboflow", "workspace": "acme", "project": "widgets", "api_key_env": "UPLOADER_SECRET_WT_ROBOFLOW_KEY"},
                 project="rf")
    make_project({"type": "local", "path": str(tmp_path / "out")}, project="no-secrets")


def test_every_secret_variable_missing_from_the_environment_is_a_warning(projects_naming_secrets):
    found = check_project_secrets(databases=["default"])

    assert set(ids(found)) == {"projects.W001"}
    assert all(isinstance(m, checks.Warning) for m in found)
    assert sorted((m.obj.name, m.msg.split("names the environment variable ")[1].split(",")[0]) for m in found) == [
        ("keyed", "UPLOADER_SECRET_WT_PASSPHRASE"), ("rf", "UPLOADER_SECRET_WT_ROBOFLOW_KEY"), ("sftp-box", "UPLOADER_SECRET_WT_HOOK_SECRET"),
        ("sftp-box", "UPLOADER_SECRET_WT_SFTP_PASSWORD")]
    assert "destination.password_env" in next(m.msg for m in found if "UPLOADER_SECRET_WT_SFTP_PASSWORD" in m.msg)


def test_secrets_that_are_set_pass(projects_naming_secrets, monkeypatch):
    for name in ("UPLOADER_SECRET_WT_SFTP_PASSWORD", "UPLOADER_SECRET_WT_ROBOFLOW_KEY", "UPLOADER_SECRET_WT_HOOK_SECRET"):
        monkeypatch.setenv(name, "x")

    found = check_project_secrets(databases=["default"])

    assert [m.msg for m in found] == [
        "Project 'keyed': destination.passphrase_env names the environment variable UPLOADER_SECRET_WT_PASSPHRASE, which is not set."]


def test_projects_are_read_only_when_the_check_may_use_the_database(projects_naming_secrets):
    assert check_project_secrets() == []
    assert "projects.W001" in ids(checks.run_checks(tags=["uploader"], databases=["default"]))
