"""Shared set-up of the retry / notify / cancel tests: S3 projects behind the fault proxy, sessions
run in this process, and django-q2 tasks executed in-process (its documented `sync` mode)."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import Schedule
from django_q.scheduler import scheduler



@pytest.fixture
def sync_tasks() -> Iterator[None]:
    """Q_CLUSTER sync=True for this test: async_task runs the task before it returns (django-q2 reads
    the setting once at import, so it is set on its Conf)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(Conf, "SYNC", True)
    yield
    mp.undo()


@pytest.fixture
def fast_uploads(settings) -> None:
    """Tiny in-task backoff and quick flushes, so faults cost no time."""
    settings.UPLOAD_RETRY_BASE_SECONDS = 0.001
    settings.UPLOAD_RETRY_CAP_SECONDS = 0.002
    settings.UPLOAD_FLUSH_SECONDS = 0.05
    settings.NOTIFY_RETRY_BASE_SECONDS = 0.001
    settings.NOTIFY_RETRY_CAP_SECONDS = 0.002


def s3_project(make_project, endpoint_url: str, bucket: str, **fields: Any):
    fields.setdefault("upload_workers", 2)
    fields.setdefault("upload_tasks", 1)
    return make_project({"type": "s3", "bucket": bucket, "prefix": "rec", "endpoint_url": endpoint_url}, **fields)


def run_due_schedules() -> bool:
    """What a cluster's scheduler does twice a minute: turn due schedules into tasks (here run at
    once, with sync_tasks). True when no retry-round schedule is left."""
    scheduler(broker=get_broker())
    return not Schedule.objects.filter(func="sessions_app.tasks.retry_round").exists()


def remote_keys(s3_server, bucket: str) -> dict[str, int]:
    pages = s3_server.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


def synced_after_a_file_vanished(make_project, source, tmp_path) -> Any:
    """A session to a local folder whose `gone.wav` was deleted between the scan and the upload
    (`keep.wav` is sent); run to its end in this process."""
    from sessions_app import pipeline, starting, uploading
    from tests.conftest import write_files

    write_files(source, {"keep.wav": "k", "gone.wav": "g"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    (source / "gone.wav").unlink()
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def run_retry(*args: str) -> tuple[int, str, str]:
    """`manage.py retry ARGS --no-progress`: (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("retry", *args, "--no-progress", stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()
