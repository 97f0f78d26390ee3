"""Several destinations per project (issue 13): one scan, each destination with its own rows,
status, retries and catalog; on real servers (a local folder, moto S3 behind the fault proxy,
OpenSSH's sshd)."""

from __future__ import annotations

import json
import os
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from projects import config
from projects.models import ConfigHistory, Project, ProjectDestination
from sessions_app import notifying
from sessions_app.models import FileUpload, SessionDestination, SessionStatus, SyncSession
from tests.conftest import manage, run_session_inline, write_files
from tests.servers.sshd import sftp_options
from tests.sessions_helpers import fast_uploads, remote_keys, run_retry, sync_tasks  # noqa: F401

FILES = {"a.wav": "aaaa", "b.wav": "bbbbbb", "sub/c.wav": "cc", "sub/d.wav": "ddd", "top/e.wav": "eeeee"}
IN_SUB = {"sub/c.wav", "sub/d.wav"}


@pytest.fixture
def five_files(source: Path) -> Path:
    return write_files(source, FILES)


def local_dest(tmp_path: Path, name: str = "archive") -> dict[str, Any]:
    return {"name": name, "type": "local", "path": str(tmp_path / name)}


def s3_dest(endpoint_url: str, bucket: str, name: str = "s3") -> dict[str, Any]:
    return {"name": name, "type": "s3", "bucket": bucket, "prefix": "rec", "endpoint_url": endpoint_url}


def write_config(tmp_path: Path, source: Path, destinations: list[dict[str, Any]], **extra: Any) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"project": "multi", "source_dir": str(source), "destinations": destinations,
                                "upload_workers": 2, "upload_tasks": 1, **extra}))
    return str(path)


def upload(*args: str):
    return manage("upload", "--no-progress", "--sync", *args)


def local_files(tmp_path: Path, name: str = "archive") -> set[str]:
    root = tmp_path / name
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".uploader-tmp" not in p.parts}


def s3_files(s3_server, bucket: str) -> set[str]:
    return {key.removeprefix("rec/") for key in remote_keys(s3_server, bucket)}


def per_destination(session: SyncSession) -> dict[str, tuple[int, int, int, int]]:
    """{name: (found, uploaded, skipped, failed)} from the counter rows."""
    return {d.name: (d.found_count, d.uploaded_count, d.skipped_count, d.failed_count)
            for d in SessionDestination.objects.filter(session=session)}


def stamps(tmp_path: Path, name: str = "archive") -> dict[str, tuple[int, int]]:
    root = tmp_path / name
    return {rel: (os.stat(root / rel).st_ino, os.stat(root / rel).st_mtime_ns) for rel in local_files(tmp_path, name)}


# -- one sync, two destinations -------------------------------------------------------------------


def test_one_sync_puts_every_file_in_a_local_and_an_s3_destination_from_one_scan(
        transactional_db, tmp_path, source, five_files, s3_server):
    bucket = s3_server.make_bucket()
    cfg = write_config(tmp_path, source, [local_dest(tmp_path), s3_dest(s3_server.endpoint_url, bucket)])

    result = upload("--config", cfg)

    assert result.returncode == 0, result.stderr
    assert local_files(tmp_path) == set(FILES) == s3_files(s3_server, bucket)
    session = SyncSession.objects.get()
    assert (session.status, session.found_count, session.uploaded_count) == (SessionStatus.COMPLETED, 10, 10)
    assert per_destination(session) == {"archive": (5, 5, 0, 0), "s3": (5, 5, 0, 0)}
    assert [line for line in session.log.splitlines() if "scanned" in line] == [
        "scan: 5 files scanned once for 2 destinations (archive: 5 to upload, 0 skipped; s3: 5 to upload, 0 skipped)"]
    assert set(FileUpload.objects.values_list("destination", flat=True)) == {"archive", "s3"}
    assert "destination archive completed: 5 found, 5 uploaded" in result.stdout
    assert "destination s3 completed: 5 found, 5 uploaded" in result.stdout


@pytest.mark.usefixtures("sync_tasks", "fast_uploads")
def test_s3_refusing_a_subfolder_fails_only_there_and_retry_completes_only_s3(
        transactional_db, tmp_path, source, five_files, s3_server, fault_proxy, admin_client):
    bucket = s3_server.make_bucket()
    cfg = write_config(tmp_path, source, [local_dest(tmp_path), s3_dest(fault_proxy.endpoint_url, bucket)])
    fault_proxy.fail_next(len(IN_SUB), "403", path_contains="rec/sub/")

    result = upload("--config", cfg)

    assert result.returncode == 1
    assert "s3: sub/c.wav: " in result.stderr and "403" in result.stderr
    assert local_files(tmp_path) == set(FILES), "the local copy is complete"
    assert s3_files(s3_server, bucket) == set(FILES) - IN_SUB, "the S3 copy lacks exactly the subfolder"
    session = SyncSession.objects.get()
    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    assert per_destination(session) == {"archive": (5, 5, 0, 0), "s3": (5, 3, 0, 2)}

    api = admin_client.get(f"/api/sessions/{session.pk}/").json()
    by_name = {d["name"]: d for d in api["destinations"]}
    assert (by_name["archive"]["status"], by_name["archive"]["uploaded"], by_name["archive"]["failed"]) == (
        "completed", 5, 0)
    assert (by_name["s3"]["status"], by_name["s3"]["uploaded"], by_name["s3"]["failed"]) == (
        "completed_with_errors", 3, 2)
    assert by_name["s3"]["destination"].startswith(f"s3://{bucket}/rec")
    page = admin_client.get(f"/admin/sessions_app/syncsession/{session.pk}/change/").content.decode()
    assert 'data-destination="archive"' in page and 'data-destination="s3"' in page
    assert "destination__exact=s3&amp;status__exact=failed" in page

    before = stamps(tmp_path)
    fault_proxy.reset()  # the bucket policy is fixed (and the proxy's counts start again)
    puts_before = fault_proxy.count("PUT")

    # 403 is a permanent error: a plain retry leaves it (the documented contract), the named one takes it.
    code, out, _ = run_retry(str(session.pk), "--wait")
    assert (code, "nothing to retry" in out) == (1, True)
    code, out, err = run_retry(str(session.pk), "--include-permanent", "--wait")

    assert code == 0, err
    assert "retried 2, now uploaded 2" in out
    assert s3_files(s3_server, bucket) == set(FILES)
    assert fault_proxy.count("PUT") - puts_before == 2, "only the two files S3 refused were sent again"
    assert stamps(tmp_path) == before, "nothing was sent to the local copy"
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert per_destination(session) == {"archive": (5, 5, 0, 0), "s3": (5, 5, 0, 0)}


@pytest.mark.usefixtures("sync_tasks", "fast_uploads")
def test_a_transient_outage_of_one_destination_is_completed_by_a_plain_retry(
        db, tmp_path, source, five_files, s3_server, fault_proxy):
    bucket = s3_server.make_bucket()
    project = apply_config(source, [local_dest(tmp_path), s3_dest(fault_proxy.endpoint_url, bucket)], max_retries=1)
    fault_proxy.fail_next(2 * len(IN_SUB), "500", path_contains="rec/sub/")  # both tries of each

    session = run_session_inline(project)

    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    assert per_destination(session) == {"archive": (5, 5, 0, 0), "s3": (5, 3, 0, 2)}
    before = stamps(tmp_path)

    code, out, err = run_retry(str(session.pk), "--wait")

    assert code == 0, err
    assert "retried 2, now uploaded 2" in out
    assert s3_files(s3_server, bucket) == set(FILES)
    assert stamps(tmp_path) == before


@pytest.mark.usefixtures("sync_tasks", "fast_uploads")
def test_retry_destination_narrows_to_the_named_destination(db, tmp_path, source, five_files, s3_server,
                                                             fault_proxy):
    first, second = s3_server.make_bucket(), s3_server.make_bucket()
    project = apply_config(source, [s3_dest(fault_proxy.endpoint_url, first, "one"),
                                    s3_dest(fault_proxy.endpoint_url, second, "two")], max_retries=0)
    fault_proxy.fail_next(4, "500", path_contains="rec/sub/")  # sub's two files, at both destinations
    session = run_session_inline(project)
    assert per_destination(session) == {"one": (5, 3, 0, 2), "two": (5, 3, 0, 2)}

    code, out, err = run_retry(str(session.pk), "--destination", "two", "--include-permanent", "--wait")

    assert code == 1, "the files that failed at `one` are still failed"
    assert "retried 2, now uploaded 2" in out
    assert s3_files(s3_server, second) == set(FILES)
    assert s3_files(s3_server, first) == set(FILES) - IN_SUB
    assert per_destination(SyncSession.objects.get()) == {"one": (5, 3, 0, 2), "two": (5, 5, 0, 0)}


def test_retry_of_an_unknown_destination_exits_2(db, tmp_path, source, five_files):
    project = apply_config(source, [local_dest(tmp_path), local_dest(tmp_path, "copy")])
    session = run_session_inline(project)

    with pytest.raises(Exception) as caught:
        call_command("retry", str(session.pk), "--destination", "nope", stdout=StringIO(), stderr=StringIO())

    assert "session %d has no destination named 'nope' (it has: archive, copy)" % session.pk in str(caught.value)
    assert getattr(caught.value, "returncode", None) == 2


# -- adding a destination ----------------------------------------------------------------------------


def test_adding_an_sftp_destination_sends_every_file_there_only(
        transactional_db, tmp_path, source, five_files, s3_server, fault_proxy, sshd_server):
    bucket = s3_server.make_bucket()
    two = [local_dest(tmp_path), s3_dest(fault_proxy.endpoint_url, bucket)]
    assert upload("--config", write_config(tmp_path, source, two)).returncode == 0
    before, puts = stamps(tmp_path), fault_proxy.count("PUT")
    sshd_server.start()
    sftp = {"name": "institute", "type": "sftp", **sftp_options(sshd_server)}

    result = upload("--config", write_config(tmp_path, source, [*two, sftp]))

    assert result.returncode == 0, result.stderr
    session = SyncSession.objects.order_by("-id").first()
    assert per_destination(session) == {"archive": (5, 0, 5, 0), "s3": (5, 0, 5, 0), "institute": (5, 5, 0, 0)}
    assert set(FileUpload.objects.filter(session=session).values_list("destination", flat=True)) == {"institute"}
    remote = Path(sftp["remote_dir"])
    assert {str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()} == set(FILES)
    assert fault_proxy.count("PUT") == puts and stamps(tmp_path) == before, "nothing sent to the others"


# -- preflight ---------------------------------------------------------------------------------------


def test_a_refused_destination_is_named_before_any_session_exists(transactional_db, tmp_path, source, five_files,
                                                                   s3_server):
    cfg = write_config(tmp_path, source, [local_dest(tmp_path), s3_dest(s3_server.endpoint_url, "no-such-bucket")])

    result = upload("--config", cfg)

    assert result.returncode == 2
    assert "destination s3 (s3): bucket 'no-such-bucket' not found" in result.stderr
    assert not SyncSession.objects.exists() and not local_files(tmp_path)


# -- config --------------------------------------------------------------------------------------------


def apply_config(source: Path, destinations: list[dict[str, Any]], **extra: Any) -> Project:
    raw = {"project": "multi", "source_dir": str(source), "destinations": destinations, "upload_workers": 2,
           "upload_tasks": 1, **extra}
    project, _ = config.apply(config.validate(raw), ConfigHistory.Source.COMMAND_LINE, "test")
    return project


def test_a_single_destination_key_is_one_destination_named_default(db, tmp_path, source):
    clean = config.validate({"project": "p", "source_dir": str(source),
                             "destination": {"type": "local", "path": str(tmp_path / "out")}})

    assert [d["name"] for d in clean["destinations"]] == ["default"]
    project, history = config.apply(clean, "command_line")
    assert project.destination_names() == ["default"]
    assert "destinations" not in history.config and history.config["destination"]["type"] == "local"


def test_several_destinations_are_stored_and_recorded_in_order(db, tmp_path, source):
    project = apply_config(source, [local_dest(tmp_path), local_dest(tmp_path, "copy")])

    assert project.destination_names() == ["archive", "copy"]
    assert list(ProjectDestination.objects.values_list("name", "kind")) == [("copy", "local")]
    recorded = project.config_history.order_by("-id").first().config
    assert [d["name"] for d in recorded["destinations"]] == ["archive", "copy"] and "destination" not in recorded
    assert config.validate(recorded)["destinations"] == config.validate(project.effective_config())["destinations"]

    apply_config(source, [local_dest(tmp_path, "copy")])
    assert Project.objects.get().destination_names() == ["copy"]
    assert not ProjectDestination.objects.exists()


@pytest.mark.parametrize(("destinations", "message"), [
    ([], "destinations: must name at least one destination"),
    ([{"type": "local", "path": "/tmp/x"}], "destinations[0].name: required"),
    ([{"name": "a b", "type": "local", "path": "/tmp/x"}], "destinations[0].name: letters, digits"),
    ([{"name": "a", "type": "local", "path": "/tmp/x"}, {"name": "A", "type": "local", "path": "/tmp/y"}],
     "destinations[1].name: 'A' is used twice; names are unique in a project"),
    ([{"name": "s3", "type": "s3"}], "destination s3: destination.bucket: required"),
    (["s3"], "destinations[0]: expected object, got string"),
])
def test_bad_destinations_are_named(source, destinations, message):
    with pytest.raises(config.ConfigError) as caught:
        config.validate({"project": "p", "source_dir": str(source), "destinations": destinations})
    assert str(caught.value).startswith(message)


def test_destination_and_destinations_together_are_refused(source):
    with pytest.raises(config.ConfigError, match="give destination .one. or destinations .several., not both"):
        config.validate({"project": "p", "source_dir": str(source), "destination": {"type": "local", "path": "/x"},
                         "destinations": [{"name": "a", "type": "local", "path": "/y"}]})


def test_overrides_and_environment_defaults_address_a_destination_by_name(db, tmp_path, source):
    path = write_config(tmp_path, source, [local_dest(tmp_path), s3_dest("http://127.0.0.1:1", "b")])
    environ = {"UPLOADER_DESTINATIONS__S3__REGION": "eu-west-1", "UPLOADER_DESTINATIONS__S3__PREFIX": "from-env",
               "UPLOADER_DESTINATIONS__ELSEWHERE__PREFIX": "ignored", "UPLOADER_DESTINATION_PREFIX": "not-a-list"}

    clean = config.load(path, {config.NAMED: config.named_overrides(["archive.prefix=cli", "s3.multipart_chunk_mb=8"])},
                        environ)

    archive, s3 = clean["destinations"]
    assert (archive["name"], archive["prefix"]) == ("archive", "cli")
    assert (s3["prefix"], s3["region"], s3["multipart_chunk_mb"]) == ("rec", "eu-west-1", 8), "the file wins over env"
    with pytest.raises(config.ConfigError, match="no destination named 'nope'"):
        config.load(path, {config.NAMED: config.named_overrides(["nope.prefix=x"])}, {})
    with pytest.raises(config.ConfigError, match="expected NAME.OPTION=VALUE"):
        config.named_overrides(["prefix=x"])


def test_destination_option_on_the_command_line(transactional_db, tmp_path, source, five_files):
    cfg = write_config(tmp_path, source, [local_dest(tmp_path), local_dest(tmp_path, "copy")])

    result = upload("--config", cfg, "--destination-option", "copy.prefix=moved")

    assert result.returncode == 0, result.stderr
    assert local_files(tmp_path, "copy") == {f"moved/{name}" for name in FILES}


# -- the notification -------------------------------------------------------------------------------


@pytest.mark.usefixtures("sync_tasks", "fast_uploads")
def test_the_notification_lists_failures_per_destination(db, tmp_path, source, five_files, s3_server, fault_proxy):
    bucket = s3_server.make_bucket()
    project = apply_config(source, [local_dest(tmp_path), s3_dest(fault_proxy.endpoint_url, bucket)])
    fault_proxy.fail_next(len(IN_SUB), "403", path_contains="rec/sub/")
    session = run_session_inline(project)

    payload = notifying.build_payload(session)

    by_name = {d["name"]: d for d in payload["destinations"]}
    assert (by_name["archive"]["status"], by_name["archive"]["files_failed"], by_name["archive"]["failed_files"]) == (
        "completed", 0, [])
    assert by_name["s3"]["status"] == "completed_with_errors"
    assert {f["path"] for f in by_name["s3"]["failed_files"]} == IN_SUB
    assert all("403" in f["error"] and f["permanent"] for f in by_name["s3"]["failed_files"])
    assert by_name["s3"]["destination"]["bucket"] == bucket
    assert payload["files_failed"] == 2 and payload["status"] == "completed_with_errors"


# -- the admin -----------------------------------------------------------------------------------------


def project_form(tmp_path: Path, source: Path, *rows: dict[str, str]) -> dict[str, str]:
    data = {"name": "admin-multi", "source_dir": str(source), "destination_kind": "local",
            "destination_name": "archive", "local__path": str(tmp_path / "archive"), "local__create": "on",
            "upload_workers": "2", "upload_tasks": "1", "max_retries": "3", "notify_on": "never",
            "extra_destinations-TOTAL_FORMS": str(len(rows)), "extra_destinations-INITIAL_FORMS": "0",
            "extra_destinations-MIN_NUM_FORMS": "0", "extra_destinations-MAX_NUM_FORMS": "1000"}
    for i, row in enumerate(rows):
        data.update({f"extra_destinations-{i}-{k}": v for k, v in row.items()})
    return data


def test_admin_adds_destinations_as_inline_rows_validated_by_their_kind(db, admin_client, tmp_path, source):
    bad = {"name": "s3", "kind": "s3", "options": json.dumps({"prefix": "raw"})}
    answer = admin_client.post("/admin/projects/project/add/", project_form(tmp_path, source, bad))

    assert answer.status_code == 200
    assert "destination.bucket: required" in answer.content.decode()
    assert not Project.objects.exists()

    twice = {"name": "archive", "kind": "local", "options": json.dumps({"path": str(tmp_path / "b")})}
    answer = admin_client.post("/admin/projects/project/add/", project_form(tmp_path, source, twice))
    assert "is used twice; names are unique in a project" in answer.content.decode()

    good = {"name": "s3", "kind": "s3", "options": json.dumps({"bucket": "b", "prefix": "raw"})}
    answer = admin_client.post("/admin/projects/project/add/", project_form(tmp_path, source, good))

    assert answer.status_code == 302, answer.content.decode()[:2000]
    project = Project.objects.get()
    assert project.destination_names() == ["archive", "s3"]
    assert ProjectDestination.objects.get().options["bucket"] == "b"
    recorded = project.config_history.get().config
    assert [(d["name"], d["type"]) for d in recorded["destinations"]] == [("archive", "local"), ("s3", "s3")]
    listing = admin_client.get("/admin/projects/project/").content.decode()
    assert "(+ s3)" in listing


# -- crash recovery ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("sync_tasks", "fast_uploads")
def test_a_resume_takes_back_each_destinations_claims_and_cleans_up_at_that_destination(
        db, tmp_path, source, five_files):
    from projects.destinations.base import TEMP_FOLDER, temp_prefix
    from sessions_app import pipeline, starting, uploading

    project = apply_config(source, [local_dest(tmp_path), local_dest(tmp_path, "copy")])
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    session.refresh_from_db()
    claimed = uploading.Drainer(session, deadline=None, destination="copy").claim(2)  # then the worker "dies"
    assert {row.destination for row in claimed} == {"copy"}
    leftover = tmp_path / "copy" / TEMP_FOLDER / (temp_prefix(claimed[0].remote_key) + "dead")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    assert per_destination(session) == {"archive": (5, 0, 0, 0), "copy": (5, 0, 0, 0)}
    assert SessionDestination.objects.get(session=session, name="copy").pending_count == 5

    pipeline.resume(session, force=True)  # the upload tasks run here (sync_tasks): one per destination

    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert per_destination(session) == {"archive": (5, 5, 0, 0), "copy": (5, 5, 0, 0)}
    assert not leftover.exists(), "the temporary file was removed at the destination it was left at"
    assert local_files(tmp_path) == set(FILES) == local_files(tmp_path, "copy")
