"""A local file that changes while it is uploaded: tried again, and never recorded with a size that
was not sent. The change is made by the S3 server's side (a hook in the proxy in front of it) after
the whole body arrived and before the answer goes back: deterministic, no sleeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from sessions_app.models import CatalogEntry, FileStatus
from tests.conftest import run_session_inline, write_files
from tests.servers.s3 import FaultProxy, _ProxyHandler


class _HookedHandler(_ProxyHandler):
    def _relay(self, resp) -> None:
        if self.command == "PUT":
            self.server.proxy.on_put(unquote(self.path.split("?", 1)[0]))
        super()._relay(resp)


class HookedProxy(FaultProxy):
    """The fault proxy, calling on_put(path) once the upstream stored a PUT, before the client
    hears of it."""

    def __init__(self, upstream_host: str, upstream_port: int):
        super().__init__(upstream_host, upstream_port)
        self._server.RequestHandlerClass = _HookedHandler
        self.on_put: Callable[[str], None] = lambda path: None


@pytest.fixture
def hooked_proxy(s3_server) -> Iterator[HookedProxy]:
    proxy = HookedProxy("127.0.0.1", s3_server.moto.port)
    try:
        yield proxy
    finally:
        proxy.close()


def _append_to(path: Path, times: int) -> Callable[[str], None]:
    left = [times]

    def hook(put_path: str) -> None:
        if put_path.endswith("/growing.wav") and left[0] > 0:
            left[0] -= 1
            with open(path, "ab") as f:
                f.write(b"+more")

    return hook


@pytest.fixture
def project(make_project, s3_server, hooked_proxy, settings):
    settings.UPLOAD_RETRY_BASE_SECONDS = 0.01
    bucket = s3_server.make_bucket()
    dest = {"type": "s3", "bucket": bucket, "prefix": "in", "endpoint_url": hooked_proxy.endpoint_url}
    project = make_project(dest, max_retries=2)
    project.bucket = bucket
    return project


def test_a_file_appended_to_during_its_upload_is_sent_again_and_recorded_as_sent(
    project, source, s3_server, hooked_proxy
):
    write_files(source, {"growing.wav": b"x" * 1000, "still.wav": b"s" * 10})
    hooked_proxy.on_put = _append_to(source / "growing.wav", times=1)

    session = run_session_inline(project)

    row = session.files.get(relative_path="growing.wav")
    remote = s3_server.client.head_object(Bucket=project.bucket, Key="in/growing.wav")
    assert (row.status, row.attempts, row.size) == (FileStatus.UPLOADED, 2, 1005)
    assert remote["ContentLength"] == 1005 == (source / "growing.wav").stat().st_size
    assert CatalogEntry.objects.get(key="growing.wav").size == 1005
    assert (session.uploaded_count, session.failed_count) == (2, 0)


def test_a_file_that_changes_on_every_try_fails_permanently_and_is_not_catalogued(
    project, source, hooked_proxy
):
    write_files(source, {"growing.wav": b"x" * 1000})
    hooked_proxy.on_put = _append_to(source / "growing.wav", times=100)

    session = run_session_inline(project)

    row = session.files.get(relative_path="growing.wav")
    assert (row.status, row.attempts, row.error_permanent) == (FileStatus.FAILED, 3, True)
    assert row.last_error.startswith("gave up after 3 attempts: file changed during upload (size ")
    assert not CatalogEntry.objects.filter(key="growing.wav").exists()
    assert (session.uploaded_count, session.failed_count, session.bytes_uploaded) == (0, 1, 0)
