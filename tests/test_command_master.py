"""The `master` command: upload, automatic retry rounds, notify; through a real qcluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django_q.models import Schedule

from sessions_app.models import FileStatus, FileUpload, Notification, SessionStatus, SyncSession
from tests.conftest import ROOT, manage, manage_env, wait_for, write_files
from tests.servers.receiver import LOOPBACK_NETWORKS

pytestmark = pytest.mark.slow

FAST = {"UPLOAD_RETRY_BASE_SECONDS": "0.01", "UPLOAD_RETRY_CAP_SECONDS": "0.02", "UPLOAD_FLUSH_SECONDS": "0.1"}
LOOPBACK = {"NOTIFY_ALLOWED_NETWORKS": LOOPBACK_NETWORKS}  # the receiver is on loopback, refused by default


def _config(tmp_path: Path, source: Path, endpoint: str, bucket: str, **extra) -> str:
    cfg = {"project": "master-test", "source_dir": str(source),
           "destination": {"type": "s3", "bucket": bucket, "prefix": "m", "endpoint_url": endpoint},
           "upload_workers": 2, "upload_tasks": 1, **extra}
    path = tmp_path / "master.json"
    path.write_text(json.dumps(cfg))
    return str(path)


class Master:
    """`manage.py master` running in the background while the test plays with the cluster."""

    def __init__(self, tmp_path: Path, *args: str):
        self.out, self.err = tmp_path / "master.out", tmp_path / "master.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "master", "--no-progress", *args],
                                         cwd=ROOT, env=manage_env(**FAST, **LOOPBACK), stdout=out, stderr=err)

    def wait(self, timeout: float) -> int:
        wait_for(lambda: self.proc.poll() is not None, timeout, interval=0.2, what="master to exit")
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@pytest.fixture
def start_master(tmp_path):
    started: list[Master] = []

    def start(*args: str) -> Master:
        started.append(Master(tmp_path, *args))
        return started[-1]

    yield start
    for m in started:
        m.stop()


def test_delayed_round_survives_a_cluster_restart_then_master_notifies_once(
    cluster_factory, start_master, s3_server, fault_proxy, receiver, source, tmp_path
):
    write_files(source, {f"day/{i:02d}.wav": f"audio {i}" for i in range(20)})
    bucket = s3_server.make_bucket()
    fault_proxy.fail_next(2, "500", path_contains="day/07.wav")  # both tries of the upload round
    config = _config(tmp_path, source, fault_proxy.endpoint_url, bucket, max_retries=1, retry_backoff_base=1,
                     retry_backoff_cap=1, notify_url=receiver.url(), notify_on="always")
    first = cluster_factory(**FAST, **LOOPBACK)
    master = start_master("--config", config)

    wait_for(lambda: Schedule.objects.filter(func="sessions_app.tasks.retry_round").exists(), 90,
             what="retry round 1 scheduled")
    first.kill()
    session = SyncSession.objects.get()
    assert (session.status, session.retry_round, session.failed_count) == ("completed_with_errors", 0, 1), \
        "the round ran before the kill: nothing proven"
    assert session.auto_retry and session.next_retry_at is not None

    cluster_factory(**FAST, **LOOPBACK)  # a new cluster finds the round in the database
    code = master.wait(150)

    assert code == 0, master.stderr
    session.refresh_from_db()
    assert (session.status, session.retry_round, session.uploaded_count) == (SessionStatus.COMPLETED, 1, 20)
    f = FileUpload.objects.get(relative_path="day/07.wav")
    assert (f.status, f.retries, f.attempts) == (FileStatus.UPLOADED, 1, 3)
    out = master.stdout
    assert f"session {session.pk} completed: 20 found, 20 uploaded" in out
    assert "retry: 1 round; retried 1, now uploaded 1, still failed 0, permanent 0" in out
    assert f"session {session.pk}: notified {receiver.url()}: 200" in out
    (req,) = receiver.requests  # the master's, not one per end of a round
    assert (req.json()["status"], req.json()["retry_rounds"], req.json()["files_uploaded"]) == ("completed", 1, 20)
    assert list(Notification.objects.values_list("trigger", "succeeded")) == [("command", True)]


def test_permanent_failure_exits_1_and_the_notification_lists_it(
    cluster_factory, start_master, s3_server, fault_proxy, receiver, source, tmp_path
):
    write_files(source, {"a.wav": "a", "b.wav": "bb", "c.wav": "ccc"})
    fault_proxy.fail_next(1, "403", path_contains="m/b.wav")
    config = _config(tmp_path, source, fault_proxy.endpoint_url, s3_server.make_bucket(), max_retries=2,
                     retry_backoff_base=1)
    cluster_factory(**FAST, **LOOPBACK)

    code = start_master("--config", config, "--notify-url", receiver.url()).wait(90)

    assert code == 1
    session = SyncSession.objects.get()
    assert (session.status, session.retry_round, session.failed_count) == ("completed_with_errors", 0, 1)
    body = receiver.requests[0].json()
    assert [(f["path"], f["permanent"]) for f in body["failed_files"]] == [("b.wav", True)]
    assert "403" in body["failed_files"][0]["error"]
    assert len(receiver.requests) == 1


def test_bad_config_exits_2(transactional_db, tmp_path, source):
    config = _config(tmp_path, source, "http://127.0.0.1:9", "b", notify_url="ftp://example.com/x")
    result = manage("master", "--config", config)
    assert result.returncode == 2
    assert "notify_url: must be an http:// or https:// URL" in result.stderr
    assert not SyncSession.objects.exists()
