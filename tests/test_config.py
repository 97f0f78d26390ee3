"""Config loading: file, environment (UPLOADER_*) and command line merged into one validated
config; apply() turns it into a Project and a ConfigHistory row, secrets redacted."""

from __future__ import annotations

import json
import os

import pytest

from projects import config, schema
from projects.destinations import KINDS, ConfigError, destination_class
from projects.destinations.local import LocalDestination
from projects.models import ConfigHistory, Project


@pytest.fixture
def out_dir(tmp_path):
    return str(tmp_path / "out")


@pytest.fixture
def base(tmp_path, out_dir) -> dict:
    return {
        "project": "birdsong",
        "source_dir": str(tmp_path / "recordings"),
        "destination": {"type": "local", "path": out_dir},
    }


def write_json(tmp_path, data, name="uploader.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- the file -------------------------------------------------------------------------------
def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "nope.json"

    assert error_of(config.load_file, path) == f"config file not found: {path}"


def test_config_file_that_is_a_folder_is_refused(tmp_path):
    assert "is a directory" in error_of(config.load_file, tmp_path)


def test_invalid_json_reports_line_and_column(tmp_path):
    path = write_json(tmp_path, '{\n  "project": "x",\n  "source_dir": ,\n}\n')

    message = error_of(config.load_file, path)

    assert "is not valid JSON" in message
    assert "line 3, column 17" in message


def test_config_file_must_hold_an_object(tmp_path):
    path = write_json(tmp_path, "[1, 2]")

    assert "must hold a JSON object, not list" in error_of(config.load_file, path)


def test_config_file_not_in_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"project": "caf\u00e9"}'.encode("latin-1"))

    assert "cannot read config file" in error_of(config.load_file, path)


def test_a_good_file_loads_as_its_object(tmp_path, base):
    assert config.load_file(write_json(tmp_path, base)) == base


# -- validation ------------------------------------------------------------------------------
def test_unknown_key_is_named(base):
    message = error_of(config.validate, {**base, "upload_wrokers": 4})

    assert message.startswith("upload_wrokers: unknown config key")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("upload_workers", "8", "upload_workers: expected integer, got string"),
        ("upload_workers", True, "upload_workers: expected integer, got boolean"),
        ("follow_symlinks", "yes", "follow_symlinks: expected boolean, got string"),
        ("extensions", ".wav", "extensions: expected list, got string"),
        ("retry_backoff_base", "30", "retry_backoff_base: expected integer or number, got string"),
        ("destination", "local", "destination: expected object, got string"),
        ("project", 2024, "project: expected string, got integer"),
    ],
)
def test_wrong_type_is_named(base, key, value, expected):
    assert error_of(config.validate, {**base, key: value}) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("upload_workers", 0, "upload_workers: must be at least 1"),
        ("notify_timeout", 0, "notify_timeout: must be at least 0.1"),
        ("notify_on", "sometimes", "notify_on: must be one of never, completed, always"),
        ("extensions", ["wav", ""], "extensions: every item must be a non-empty string"),
        ("exclude", [3], "exclude: every item must be a non-empty string"),
        ("project", "   ", "project: must not be empty"),
    ],
)
def test_out_of_range_values_are_named(base, key, value, expected):
    assert error_of(config.validate, {**base, key: value}) == expected


@pytest.mark.parametrize("key", ["project", "source_dir", "destination"])
def test_missing_required_key_is_named(base, key):
    del base[key]

    assert error_of(config.validate, base) == f"{key}: required"


def test_unknown_destination_type_is_named(base):
    base["destination"]["type"] = "ftp"

    message = error_of(config.validate, base)

    assert message.startswith("destination.type: unknown destination type 'ftp'")
    assert "s3" in message and "local" in message


def test_missing_destination_type_is_named(base):
    del base["destination"]["type"]

    assert error_of(config.validate, base).startswith("destination.type: required")


def test_destination_options_are_checked_by_their_kind(base):
    del base["destination"]["path"]
    assert error_of(config.validate, base) == "destination.path: required for type 'local'"

    base["destination"].update(path="/x", colour="red")
    assert error_of(config.validate, base) == "destination.colour: unknown option for type 'local'"


def test_notify_url_must_be_http_and_the_error_hides_its_password(base):
    message = error_of(config.validate, {**base, "notify_url": "ftp://alice:s3cret@hooks.example.com/in"})

    assert message.startswith("notify_url: must be an http:// or https:// URL")
    assert "s3cret" not in message


def test_validation_fills_defaults_and_normalises(base, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    clean = config.validate({**base, "source_dir": "~/recordings", "extensions": ["WAV", ".Flac"]})

    assert clean["source_dir"] == str(tmp_path / "recordings")
    assert clean["extensions"] == [".wav", ".flac"]
    assert clean["upload_workers"] == 15
    assert clean["notify_on"] == "never"
    assert clean["notify_url"] is None
    assert clean["destination"] == {"type": "local", "path": base["destination"]["path"], "prefix": "",
                                    "create": True}


# -- environment and precedence -----------------------------------------------------------------
def test_environment_supplies_every_setting(db, tmp_path, out_dir):
    environ = {
        "UPLOADER_PROJECT": "from-env",
        "UPLOADER_SOURCE_DIR": str(tmp_path / "src"),
        "UPLOADER_DESTINATION_TYPE": "local",
        "UPLOADER_DESTINATION_PATH": out_dir,
        "UPLOADER_DESTINATION_CREATE": "false",
        "UPLOADER_UPLOAD_WORKERS": "3",
        "UPLOADER_FOLLOW_SYMLINKS": "true",
        "UPLOADER_EXTENSIONS": '["wav", "flac"]',
        "UPLOADER_RETRY_BACKOFF_BASE": "2.5",
        "UNRELATED": "1",
    }

    clean = config.load(None, {}, environ)

    assert clean["project"] == "from-env"
    assert clean["source_dir"] == str(tmp_path / "src")
    assert clean["destination"] == {"type": "local", "path": out_dir, "prefix": "", "create": False}
    assert clean["upload_workers"] == 3
    assert clean["follow_symlinks"] is True
    assert clean["extensions"] == [".wav", ".flac"]
    assert clean["retry_backoff_base"] == 2.5


def test_environment_is_read_from_the_process_by_default(db, tmp_path, base, monkeypatch):
    monkeypatch.setenv("UPLOADER_MAX_RETRIES", "9")

    assert config.load(write_json(tmp_path, base), {})["max_retries"] == 9


def test_numeric_looking_environment_values_of_string_settings_stay_strings(db, tmp_path, out_dir):
    environ = {"UPLOADER_PROJECT": "2024", "UPLOADER_SOURCE_DIR": str(tmp_path),
               "UPLOADER_DESTINATION_TYPE": "local", "UPLOADER_DESTINATION_PATH": out_dir}

    assert config.load(None, {}, environ)["project"] == "2024"


def test_command_line_beats_file_beats_environment(db, tmp_path, base):
    environ = {"UPLOADER_UPLOAD_WORKERS": "3", "UPLOADER_MAX_RETRIES": "7", "UPLOADER_QUEUE_LIMIT": "11"}
    path = write_json(tmp_path, {**base, "upload_workers": 5, "max_retries": 6})

    clean = config.load(path, {"upload_workers": 8, "max_retries": None}, environ)

    assert clean["upload_workers"] == 8  # command line
    assert clean["max_retries"] == 6  # file (None on the command line means "not given")
    assert clean["queue_limit"] == 11  # environment
    assert clean["upload_tasks"] == 2  # built-in default


def test_destination_options_merge_one_by_one_across_layers(db, tmp_path, base, out_dir):
    environ = {"UPLOADER_DESTINATION_PREFIX": "env-prefix", "UPLOADER_DESTINATION_CREATE": "false"}
    path = write_json(tmp_path, {**base, "destination": {"type": "local", "path": out_dir, "prefix": "file-prefix"}})

    clean = config.load(path, {"destination": {"prefix": "cli-prefix", "path": None}}, environ)

    assert clean["destination"] == {"type": "local", "path": out_dir, "prefix": "cli-prefix", "create": False}


def test_errors_from_any_layer_are_raised_as_config_errors(db, tmp_path, base):
    path = write_json(tmp_path, base)

    assert error_of(config.load, path, {}, {"UPLOADER_UPLOAD_WORKERS": "many"}) == (
        "upload_workers: expected integer, got string"
    )
    assert error_of(config.load, str(tmp_path / "missing.json"), {}, {}).startswith("config file not found")


# -- apply and ConfigHistory --------------------------------------------------------------------
def test_apply_creates_the_project_and_records_its_config(db, base, out_dir):
    project, history = config.apply(config.validate(base), "file", created_by="alice")

    assert Project.objects.get() == project
    assert project.name == "birdsong"
    assert project.destination_kind == "local"
    assert project.destination_options == {"path": out_dir, "prefix": "", "create": True}
    assert history.project == project
    assert history.source == "file"
    assert history.created_by == "alice"
    assert history.config["destination"] == {"type": "local", "path": out_dir, "prefix": "", "create": True}
    assert history.config["upload_workers"] == 15


def test_applying_the_same_config_again_records_nothing_new(db, base):
    _, first = config.apply(config.validate(base), "file")
    project, again = config.apply(config.validate(base), "command_line")

    assert again.pk == first.pk
    assert ConfigHistory.objects.filter(project=project).count() == 1
    assert Project.objects.count() == 1


def test_a_changed_config_updates_the_project_and_records_a_diff(db, base):
    _, first = config.apply(config.validate(base), "file")
    project, second = config.apply(config.validate({**base, "upload_workers": 4, "exclude": ["*.tmp"]}), "admin")

    project.refresh_from_db()
    assert project.upload_workers == 4
    assert project.exclude == ["*.tmp"]
    assert list(ConfigHistory.objects.filter(project=project).order_by("id")) == [first, second]
    assert second.previous() == first
    diff = second.diff_from_previous()
    assert f"--- config #{first.pk}" in diff and f"+++ config #{second.pk}" in diff
    changed = [line for line in diff.splitlines()[2:] if line.startswith(("-", "+"))]
    assert '-  "upload_workers": 15' in changed
    assert '+  "upload_workers": 4' in changed
    assert '+    "*.tmp"' in changed
    assert not any('"project"' in line for line in changed)


def test_first_config_diffs_against_nothing(db, base):
    _, history = config.apply(config.validate(base), "file")

    diff = history.diff_from_previous()

    assert diff.startswith("--- (nothing)")
    assert '+  "project": "birdsong",' in diff


def test_a_notify_url_with_a_password_is_refused_so_no_secret_is_stored(db, base):
    with pytest.raises(ConfigError, match="notify_url: must not contain a password") as err:
        config.validate({**base, "notify_url": "https://alice:s3cret@hooks.example.com/in?x=1"})
    assert "s3cret" not in str(err.value)
    assert not Project.objects.exists()


def test_loading_a_stored_project_without_a_file_starts_from_its_config(db, base):
    config.apply(config.validate({**base, "notify_url": "https://hooks.example.com/in", "upload_workers": 6}),
                 "file")

    clean = config.load(None, {"project": "birdsong", "max_retries": 5}, {})
    project, _ = config.apply(clean, "command_line")

    project.refresh_from_db()
    assert project.upload_workers == 6  # the stored config is the base layer
    assert project.max_retries == 5
    assert project.notify_url == "https://hooks.example.com/in"


def test_effective_config_round_trips_through_validate(db, base):
    project, history = config.apply(config.validate({**base, "extensions": ["wav"], "notify_on": "always",
                                                     "notify_url": "https://hooks.example.com/"}), "file")

    assert config.validate(history.config) == config.validate(project.effective_config())
    assert config.validate(history.config)["source_dir"] == os.path.abspath(base["source_dir"])


@pytest.mark.parametrize(("destination", "expected"), [
    ({"type": "s3", "bucket": "b", "prefix": "photos/../../other"}, "destination.prefix: must not contain . or .."),
    ({"type": "local", "path": "/srv/out", "prefix": "../etc"}, "destination.prefix: must not contain . or .."),
    ({"type": "local", "path": "/srv/out", "prefix": "a\\..\\..\\etc"}, "destination.prefix: must not contain"),
    ({"type": "local", "path": "/srv/../etc"}, "destination.path: must not contain . or .."),
    ({"type": "sftp", "host": "h", "username": "u", "remote_dir": "./in", "use_agent": True},
     "destination.remote_dir: must not contain . or .."),
    ({"type": "roboflow", "workspace": "acme", "project": "widgets", "split": "../train"},
     "destination.split: must be one of train, valid, test"),
])
def test_remote_folders_with_dot_segments_are_refused(base, destination, expected):
    assert error_of(config.validate, {**base, "destination": destination}).startswith(expected)


def test_a_local_prefix_that_looks_absolute_still_stays_inside_the_path(base, out_dir):
    clean = config.validate({**base, "destination": {"type": "local", "path": out_dir, "prefix": "/etc"}})
    options = {k: v for k, v in clean["destination"].items() if k != "type"}

    assert LocalDestination(options).root == os.path.join(out_dir, "etc")


def test_every_registered_destination_kind_is_declared_in_the_schema():
    assert set(KINDS) == set(schema.KINDS)
    for kind in KINDS:
        assert destination_class(kind).options_schema is schema.KINDS[kind].options
