"""End to end through a real qcluster subprocess and the loopback S3 server."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command

from sessions_app.models import FileStatus, SessionStatus, SyncSession
from tests.conftest import wait_for, write_files

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, source: Path, endpoint: str, bucket: str, **extra) -> str:
    cfg = {"project": "worker-test", "source_dir": str(source),
           "destination": {"type": "s3", "bucket": bucket, "prefix": "rec/2026", "endpoint_url": endpoint},
           "upload_workers": 4, **extra}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _session() -> SyncSession:
    return SyncSession.objects.get()


def _remote_keys(s3_server, bucket: str) -> dict[str, int]:
    pages = s3_server.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def test_cluster_uploads_every_file_and_completes(cluster_factory, s3_server, source, tmp_path):
    write_files(source, {f"day{d}/rec-{i}.wav": f"audio {d} {i}" for d in range(3) for i in range(40)})
    bucket = s3_server.make_bucket()
    cluster_factory()

    call_command("upload", "--config", _config(tmp_path, source, s3_server.endpoint_url, bucket), "--no-wait")
    session = wait_for(lambda: SyncSession.objects.filter(status=SessionStatus.COMPLETED).first(), 60,
                       what="session completed")

    assert (session.found_count, session.uploaded_count, session.failed_count) == (120, 120, 0)
    assert session.bytes_uploaded == sum(p.stat().st_size for p in source.rglob("*.wav"))
    remote = _remote_keys(s3_server, bucket)
    assert len(remote) == 120 and "rec/2026/day1/rec-7.wav" in remote
    assert session.files.filter(status=FileStatus.UPLOADED).exclude(checksum="").count() == 120


def test_sigkill_mid_session_then_restart_uploads_every_file_exactly_once(
    cluster_factory, s3_server, fault_proxy, source, tmp_path
):
    n = 400
    write_files(source, {f"batch/{i:04d}.wav": b"x" * (1000 + i) for i in range(n)})
    bucket = s3_server.make_bucket()
    cluster = cluster_factory()
    call_command("upload", "--config", _config(tmp_path, source, fault_proxy.endpoint_url, bucket), "--no-wait")

    wait_for(lambda: SyncSession.objects.filter(uploaded_count__gte=40).exists(), 60, what="40 uploaded")
    cluster.kill()
    killed = _session()
    assert killed.status in (SessionStatus.SCANNING, SessionStatus.UPLOADING)
    assert killed.uploaded_count < n, "the kill came too late to prove anything"

    cluster_factory()
    call_command("resume", str(killed.pk), "--force")
    session = wait_for(lambda: SyncSession.objects.filter(status=SessionStatus.COMPLETED).first(), 90,
                       what="resumed session completed")

    assert (session.found_count, session.uploaded_count, session.failed_count, session.pending_count) == (n, n, 0, 0)
    assert session.files.count() == n
    assert set(session.files.values_list("status", flat=True)) == {FileStatus.UPLOADED}
    assert session.bytes_uploaded == sum(1000 + i for i in range(n))
    assert len(_remote_keys(s3_server, bucket)) == n
    for i in range(n):
        key = f"/rec/2026/batch/{i:04d}.wav"
        assert fault_proxy.succeeded("PUT", key) == 1, f"file {i} stored {fault_proxy.succeeded('PUT', key)} times"


def test_sigkill_of_the_whole_cluster_is_recovered_by_the_restarted_cluster_alone(
    cluster_factory, s3_server, fault_proxy, source, tmp_path
):
    """Default lease settings, no `resume`: the restarted cluster's own recovery (queued at its
    start) takes the killed cluster's claims back once their lease runs out."""
    n = 400
    write_files(source, {f"batch/{i:04d}.wav": b"y" * (2000 + i) for i in range(n)})
    bucket = s3_server.make_bucket()
    cluster = cluster_factory()
    call_command("upload", "--config", _config(tmp_path, source, fault_proxy.endpoint_url, bucket), "--no-wait")

    wait_for(lambda: SyncSession.objects.filter(uploaded_count__gte=40).exists(), 60, what="40 uploaded")
    cluster.kill()
    killed = _session()
    assert killed.status in (SessionStatus.SCANNING, SessionStatus.UPLOADING)
    assert killed.uploaded_count < n, "the kill came too late to prove anything"

    restarted_at = time.monotonic()
    cluster_factory()
    session = wait_for(lambda: SyncSession.objects.filter(status=SessionStatus.COMPLETED).first(), 90,
                       what="session completed after the restart", interval=0.2)
    print(f"recovered: completed {time.monotonic() - restarted_at:.1f}s after the restart")  # the README's figure

    assert (session.found_count, session.uploaded_count, session.failed_count, session.pending_count) == (n, n, 0, 0)
    assert set(session.files.values_list("status", flat=True)) == {FileStatus.UPLOADED}
    assert session.bytes_uploaded == sum(2000 + i for i in range(n))
    assert "interrupted uploads" in session.log  # resumed, or taken back from the vanished tasks
    assert len(_remote_keys(s3_server, bucket)) == n
    for i in range(n):
        key = f"/rec/2026/batch/{i:04d}.wav"
        assert fault_proxy.succeeded("PUT", key) == 1, f"file {i} stored {fault_proxy.succeeded('PUT', key)} times"


def test_two_clusters_sharing_redis_and_the_database_share_a_session_and_store_each_file_once(
    cluster_factory, s3_server, fault_proxy, source, tmp_path, monkeypatch
):
    """The Deployment section's set-up: qclusters on two "machines" (own working directory each)
    with one DATABASE_URL, REDIS_URL and Q_CLUSTER_NAME; a fresh name keeps other Redis users out."""
    import redis
    from django_q.conf import Conf

    name, redis_url = f"test-{uuid.uuid4().hex[:12]}", "redis://127.0.0.1:6379/0"
    # This process queues as the README's web machine would: the name is the queue's and the signing salt.
    for attribute, value in (("ORM", None), ("REDIS", redis_url), ("CLUSTER_NAME", name), ("PREFIX", name)):
        monkeypatch.setattr(Conf, attribute, value)
    n = 300
    write_files(source, {f"batch/{i:04d}.wav": b"z" * (500 + i) for i in range(n)})
    bucket = s3_server.make_bucket()
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    try:
        clusters = []
        for home in machines:
            home.mkdir()
            clusters.append(cluster_factory(REDIS_URL=redis_url, Q_CLUSTER_NAME=name, HOME=str(home),
                                            DATA_DIR=str(home / "data")))
        wait_for(lambda: all("running." in c.output() for c in clusters), 60, what="both clusters running")
        call_command("upload", "--config", _config(tmp_path, source, fault_proxy.endpoint_url, bucket,
                                                   upload_tasks=4, upload_workers=2), "--no-wait")
        session = wait_for(lambda: SyncSession.objects.filter(status=SessionStatus.COMPLETED).first(), 90,
                           what="session completed")
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = [*client.scan_iter(match=f"django_q:{name}:*"), *client.scan_iter(match=f"{name}:*")]
        if keys:
            client.delete(*keys)

    assert (session.found_count, session.uploaded_count, session.failed_count) == (n, n, 0)
    for i in range(n):
        key = f"/rec/2026/batch/{i:04d}.wav"
        assert fault_proxy.succeeded("PUT", key) == 1, f"file {i} stored {fault_proxy.succeeded('PUT', key)} times"
    for cluster in clusters:  # both pushers wait on the one Redis list: its tasks go to each in turn
        assert "Processed 'sessions_app.tasks." in cluster.output()
