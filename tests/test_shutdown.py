"""Stopping a real qcluster in the middle of the upload queue: SIGTERM lets the transfers in flight
finish and leaves the rest queued for the restart; SIGKILL loses nothing either, once the sweep has
put the interrupted files back. The S3 fault proxy counts every PUT, so "exactly once" is checked."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
from django_q.models import OrmQ

from sessions_app import queueing
from sessions_app.models import FileStatus, SessionStatus, SyncSession
from sessions_app.queueing import queue_upload
from tests.conftest import wait_for, write_files

pytestmark = pytest.mark.slow

N = 200
SIZE = 256 * 1024


@pytest.fixture
def queued(make_project, source, s3_server, fault_proxy):
    """N files queued while no cluster runs; returns (project, bucket)."""
    bucket = s3_server.make_bucket()
    project = make_project({"type": "s3", "bucket": bucket, "prefix": "q", "endpoint_url": fault_proxy.endpoint_url},
                           upload_workers=2, queue_limit=N)
    write_files(source, {f"cam/{i:04d}.jpg": os.urandom(SIZE) for i in range(N)})
    assert all(queue_upload(project, f"cam/{i:04d}.jpg") for i in range(N))
    return project, bucket


def stream(project) -> SyncSession:
    return SyncSession.objects.get(project=project, kind=SyncSession.Kind.STREAM, status=SessionStatus.UPLOADING)


def statuses(project) -> Counter[str]:
    return Counter(stream(project).files.values_list("status", flat=True))


def running_processes(pgid: int, but: int) -> list[int]:
    """Processes of the group still running; zombies don't count (nobody may ever reap them)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(pgrp) == pgid and state != "Z" and int(entry) != but:
            found.append(int(entry))
    return found


def put_keys(fault_proxy, bucket: str) -> Counter[str]:
    return Counter({path.removeprefix(f"/{bucket}/q/"): n for path, n in fault_proxy.count_by_path("PUT").items()})


def remote_sizes(s3_server, bucket: str) -> dict[str, int]:
    pages = s3_server.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def stop(cluster) -> None:
    """SIGTERM to the main process only, the stop that ends every process of the cluster."""
    os.kill(cluster.proc.pid, signal.SIGTERM)
    cluster.proc.wait(60)


def upload_tasks_waiting() -> int:
    return sum(1 for q in OrmQ.objects.all() if q.func() == "sessions_app.tasks.upload")


@pytest.mark.parametrize("signalled", ["main process", "process group"])
def test_sigterm_mid_stream_finishes_transfers_in_flight_and_loses_nothing(
    signalled, queued, cluster_factory, s3_server, fault_proxy
):
    project, bucket = queued
    cluster = cluster_factory(UPLOAD_FLUSH_SECONDS="0.1")
    wait_for(lambda: stream(project).uploaded_count >= 10, 60, what="10 uploaded")

    pgid = cluster.proc.pid
    if signalled == "main process":  # kill <pid>, docker stop: django-q2 waits for the workers' tasks
        stop(cluster)
    else:  # systemd's default KillMode: every process gets it; the workers wind down on their own
        os.killpg(pgid, signal.SIGTERM)
    wait_for(lambda: not running_processes(pgid, but=pgid), 60, what="every worker gone")
    # On a group SIGTERM django-q2's main process hangs (a multiprocessing Event whose waiter died);
    # with its workers gone it has nothing left to do.
    cluster.kill()

    at_rest = statuses(project)
    assert FileStatus.UPLOADING not in at_rest, "every transfer in flight finished and was recorded"
    assert at_rest[FileStatus.UPLOADED] < N, "the stop came too late to prove anything"
    assert at_rest[FileStatus.UPLOADED] + at_rest[FileStatus.PENDING] == N
    uploaded = set(stream(project).files.filter(status=FileStatus.UPLOADED).values_list("remote_key", flat=True))
    assert put_keys(fault_proxy, bucket) == Counter({key: 1 for key in uploaded}), "no PUT without its row"
    assert upload_tasks_waiting() >= 1, "a successor task waits in the broker for the restart"

    restarted = cluster_factory(UPLOAD_FLUSH_SECONDS="0.1")
    wait_for(lambda: stream(project).uploaded_count == N, 90, what="the rest uploaded after the restart")
    stop(restarted)

    assert statuses(project) == Counter({FileStatus.UPLOADED: N})
    assert remote_sizes(s3_server, bucket) == {f"q/cam/{i:04d}.jpg": SIZE for i in range(N)}
    assert put_keys(fault_proxy, bucket) == Counter({f"cam/{i:04d}.jpg": 1 for i in range(N)}), "each PUT once"


def test_sigkill_mid_stream_then_sweep_and_restart_uploads_every_file(
    queued, cluster_factory, s3_server, settings
):
    project, bucket = queued
    cluster = cluster_factory(UPLOAD_FLUSH_SECONDS="0.1")
    wait_for(lambda: stream(project).uploaded_count >= 10, 60, what="10 uploaded")

    cluster.kill()
    assert statuses(project)[FileStatus.UPLOADED] < N, "the kill came too late to prove anything"

    settings.SESSION_STALE_SECONDS = 0  # what the sweep schedule does once the queue looks dead
    settings.QUEUE_WAKE_SECONDS = 0
    queueing.sweep()
    assert FileStatus.UPLOADING not in statuses(project)
    restarted = cluster_factory(UPLOAD_FLUSH_SECONDS="0.1")
    wait_for(lambda: stream(project).uploaded_count == N, 90, what="every file uploaded after the restart")
    stop(restarted)

    assert statuses(project) == Counter({FileStatus.UPLOADED: N})
    assert remote_sizes(s3_server, bucket) == {f"q/cam/{i:04d}.jpg": SIZE for i in range(N)}
