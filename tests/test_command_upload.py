"""The `upload` command: bad input exits 2 with one clear message; runs and re-runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command

from projects.models import ConfigHistory, Project
from sessions_app.models import FileStatus, FileUpload, SyncSession
from tests.conftest import manage, manage_env, write_files


def _write_config(tmp_path: Path, **cfg) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _local_config(tmp_path: Path, source: Path, **extra) -> str:
    return _write_config(tmp_path, project="cmd-test", source_dir=str(source),
                         destination={"type": "local", "path": str(tmp_path / "archive")}, **extra)


def _upload(*args: str):
    return manage("upload", "--no-progress", *args)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
        ("[1, 2]", "must hold a JSON object, not list"),
        (json.dumps({"project": "p", "source_dir": "/tmp", "destination": {"type": "local", "path": "/tmp/x"},
                     "colour": "blue"}), "colour: unknown config key"),
        (json.dumps({"project": "p", "source_dir": "/tmp", "destination": {"type": "local", "path": "/tmp/x"},
                     "upload_workers": "many"}), "upload_workers: expected integer, got string"),
        (json.dumps({"project": "p", "source_dir": "/tmp", "destination": {"type": "ftp"}}),
         "destination.type: unknown destination type 'ftp'"),
        (json.dumps({"project": "p", "source_dir": "/tmp", "destination": {"type": "s3"}}),
         "destination.bucket: required"),
    ],
)
def test_bad_config_exits_2_with_one_clear_message(transactional_db, tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    result = _upload("--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not Project.objects.exists()


def test_missing_config_file_exits_2(transactional_db, tmp_path):
    result = _upload("--config", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert f"config file not found: {tmp_path / 'nope.json'}" in result.stderr


def test_missing_source_folder_exits_2(transactional_db, tmp_path):
    result = _upload("--config", _local_config(tmp_path, tmp_path / "gone"))
    assert result.returncode == 2
    assert "source_dir: folder not found" in result.stderr
    assert not SyncSession.objects.exists()


def test_source_that_is_a_file_exits_2(transactional_db, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    result = _upload("--config", _local_config(tmp_path, f))
    assert result.returncode == 2
    assert "source_dir: not a folder" in result.stderr


def test_missing_bucket_exits_2_before_any_session(transactional_db, tmp_path, source, s3_server):
    write_files(source, {"a.wav": "a"})
    cfg = _write_config(tmp_path, project="s3-missing", source_dir=str(source),
                        destination={"type": "s3", "bucket": "no-such-bucket", "endpoint_url": s3_server.endpoint_url})
    result = _upload("--config", cfg, "--sync")
    assert result.returncode == 2
    assert "bucket 'no-such-bucket' not found" in result.stderr
    assert not SyncSession.objects.exists()


def test_sync_run_uploads_then_rerun_skips_everything(transactional_db, tmp_path, source):
    write_files(source, {"a/1.wav": "one", "a/2.wav": "two", "b/3.jpg": "three", "skip.txt": "no",
                         "a/tmp/4.wav": "excluded"})
    cfg = _local_config(tmp_path, source, extensions=[".wav", ".jpg"], exclude=["**/tmp/**"])

    first = _upload("--config", cfg, "--sync")
    assert first.returncode == 0, first.stderr
    assert "3 found, 3 uploaded, 0 skipped, 0 failed" in first.stdout
    assert (tmp_path / "archive" / "b" / "3.jpg").read_text() == "three"
    assert not (tmp_path / "archive" / "a" / "tmp").exists()

    second = _upload("--config", cfg, "--sync")
    assert second.returncode == 0, second.stderr
    assert "3 found, 0 uploaded, 3 skipped, 0 failed" in second.stdout
    assert ConfigHistory.objects.count() == 1  # same effective config: no new history row

    (source / "a" / "1.wav").write_text("changed!")
    third = _upload("--config", cfg, "--sync", "--workers", "3")
    assert "3 found, 1 uploaded, 2 skipped" in third.stdout
    assert ConfigHistory.objects.count() == 2
    assert Project.objects.get().upload_workers == 3


def test_dry_run_lists_files_and_changes_nothing(transactional_db, tmp_path, source):
    write_files(source, {"x/one.wav": "1", "two.wav": "22"})
    result = _upload("--config", _local_config(tmp_path, source), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "upload x/one.wav -> x/one.wav (1 bytes)" in result.stdout
    assert "dry run: 2 files (3.00B) would be uploaded, 0 skipped; nothing was changed" in result.stdout
    assert not Project.objects.exists() and not FileUpload.objects.exists()
    assert not (tmp_path / "archive").exists()


HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\nfake line\r.wav"
HOSTILE_SHOWN = "evil\\x1b]0;pwned\\x07\\x1b[2J\\nfake line\\r.wav"


def test_dry_run_shows_control_characters_in_file_names_escaped(transactional_db, tmp_path, source):
    write_files(source, {HOSTILE: "x"})
    out, err = io.StringIO(), io.StringIO()

    call_command("upload", "--config", _local_config(tmp_path, source), "--dry-run", stdout=out, stderr=err)

    assert f"upload {HOSTILE_SHOWN} -> {HOSTILE_SHOWN} (1 bytes)" in out.getvalue()
    assert "\x1b" not in out.getvalue() + err.getvalue() and "\r" not in out.getvalue()


def test_failure_report_shows_control_characters_in_file_names_escaped(transactional_db, tmp_path, source,
                                                                       s3_server, fault_proxy):
    write_files(source, {HOSTILE: "nope"})
    fault_proxy.fail_next(1, "403", method="PUT", path_contains="evil")
    cfg = _write_config(tmp_path, project="s3-hostile", source_dir=str(source),
                        destination={"type": "s3", "bucket": s3_server.make_bucket(),
                                     "endpoint_url": fault_proxy.endpoint_url})

    result = _upload("--config", cfg, "--sync")

    assert result.returncode == 1
    assert f"  {HOSTILE_SHOWN}: " in result.stderr and "(permanent)" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr


def test_failed_files_exit_1_and_name_the_first_paths(transactional_db, tmp_path, source, s3_server, fault_proxy):
    write_files(source, {"ok.wav": "fine", "denied.wav": "nope"})
    bucket = s3_server.make_bucket()
    fault_proxy.fail_next(1, "403", method="PUT", path_contains="denied.wav")
    cfg = _write_config(tmp_path, project="s3-403", source_dir=str(source),
                        destination={"type": "s3", "bucket": bucket, "endpoint_url": fault_proxy.endpoint_url})
    result = _upload("--config", cfg, "--sync")
    assert result.returncode == 1
    assert "1 files failed" in result.stderr
    assert "denied.wav:" in result.stderr and "AccessDenied" in result.stderr and "(permanent)" in result.stderr
    f = FileUpload.objects.get(relative_path="denied.wav")
    assert (f.status, f.error_permanent, f.attempts) == (FileStatus.FAILED, True, 1)


def test_command_line_overrides_win_over_the_file(transactional_db, tmp_path, source):
    write_files(source, {"a.wav": "a"})
    cfg = _local_config(tmp_path, source, upload_workers=5)
    result = _upload("--config", cfg, "--sync", "--workers", "7", "--dest-path", str(tmp_path / "other"))
    assert result.returncode == 0, result.stderr
    p = Project.objects.get()
    assert p.upload_workers == 7
    assert p.destination_options["path"] == str(tmp_path / "other")
    assert (tmp_path / "other" / "a.wav").exists()


def test_no_wait_only_queues_the_session(transactional_db, tmp_path, source):
    write_files(source, {"a.wav": "a"})
    result = _upload("--config", _local_config(tmp_path, source), "--no-wait")
    assert result.returncode == 0, result.stderr
    assert SyncSession.objects.get().status == "queued"


def test_a_refused_run_changes_neither_the_stored_config_nor_its_history(transactional_db, tmp_path, source):
    write_files(source, {"a.wav": "a"})
    good = tmp_path / "archive"
    first = _upload("--sync", "--project", "keep", "--source-dir", str(source), "--destination-type", "local",
                    "--dest-path", str(good))
    assert first.returncode == 0, first.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    refused = _upload("--sync", "--project", "keep", "--dest-path", str(blocker / "sub"))

    assert refused.returncode == 2
    assert "is a file" in refused.stderr
    project = Project.objects.get(name="keep")
    assert project.destination_options["path"] == str(good)
    assert ConfigHistory.objects.filter(project=project).count() == 1
    assert SyncSession.objects.count() == 1
    again = _upload("--sync", "--project", "keep")  # the stored config still works
    assert again.returncode == 0, again.stderr


def test_save_config_keeps_the_config_of_a_refused_run(transactional_db, tmp_path, source):
    write_files(source, {"a.wav": "a"})
    assert _upload("--sync", "--project", "keep", "--source-dir", str(source), "--destination-type", "local",
                   "--dest-path", str(tmp_path / "archive")).returncode == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    refused = _upload("--sync", "--project", "keep", "--dest-path", str(blocker / "sub"), "--save-config")

    assert refused.returncode == 2
    project = Project.objects.get(name="keep")
    assert project.destination_options["path"] == str(blocker / "sub")
    assert ConfigHistory.objects.filter(project=project).count() == 2
    assert SyncSession.objects.count() == 1


def test_sync_sends_the_end_of_session_notification_itself(transactional_db, tmp_path, source, receiver):
    from django_q.models import OrmQ

    from sessions_app.models import Notification
    from tests.servers.receiver import LOOPBACK_NETWORKS

    write_files(source, {"a.wav": "a", "b.wav": "b"})
    result = manage("upload", "--sync", "--no-progress", "--config", _local_config(tmp_path, source, notify_on="always"),
                    "--notify-url", receiver.url(), env=manage_env(NOTIFY_ALLOWED_NETWORKS=LOOPBACK_NETWORKS))

    assert result.returncode == 0, result.stderr
    (request,) = receiver.requests  # delivered before the command exited; no cluster ran
    assert request.json()["status"] == "completed"
    row = Notification.objects.get()
    assert (row.trigger, row.succeeded) == (Notification.Trigger.AUTO, True)
    assert not OrmQ.objects.exists()


@pytest.fixture
def silent_endpoint():
    """A TCP server that accepts connections and never answers (issue 16 #10: held `upload` 121 s)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    server.close()
    for conn in held:
        conn.close()


def test_s3_endpoint_that_never_answers_fails_preflight_with_a_clear_message(transactional_db, tmp_path, source,
                                                                             aws_test_environment, silent_endpoint):
    write_files(source, {"a.wav": "a"})
    cfg = _write_config(tmp_path, project="silent", source_dir=str(source), preflight_timeout=1,
                        destination={"type": "s3", "bucket": "b", "endpoint_url": silent_endpoint})
    result = manage("upload", "--no-progress", "--config", cfg, timeout=60)
    assert result.returncode == 2
    assert f"waiting up to 1 s for it to answer" in result.stderr
    assert (f"destination s3: bucket 'b': {silent_endpoint} accepted the connection but did not answer within 1 s "
            f"(preflight_timeout)") in result.stderr
    assert "Traceback" not in result.stderr
    assert not SyncSession.objects.exists()


@pytest.mark.parametrize("key, value, message", [
    ("upload_workers", 100_000_000, "upload_workers: must be at most 1000"),
    ("upload_tasks", 100_000, "upload_tasks: must be at most 256"),
    ("preflight_timeout", 3600, "preflight_timeout: must be at most 60"),
])
def test_absurd_worker_and_task_counts_are_config_errors(transactional_db, tmp_path, source, key, value, message):
    result = _upload("--config", _local_config(tmp_path, source, **{key: value}))
    assert result.returncode == 2
    assert message in result.stderr
    assert not Project.objects.exists()
