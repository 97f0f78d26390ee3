"""Any tus client works: tuspy and curl against a live server, and an upload cut off midway
resumes at the server's offset into a byte-identical file."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from tusclient import client as tus_client

from sessions_app import receiving, uploading
from sessions_app.models import Arrival, FileStatus, FileUpload, SessionStatus, SyncSession
from tests.polling import wait_for
from tests.uploads_helpers import TUS, staging  # noqa: F401 (fixture)


@pytest.fixture
def project(transactional_db, make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="drops")


@pytest.fixture
def token(project) -> str:
    return project.issue_api_token()


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def manifest(live_server, token: str, files: dict[str, int]) -> dict:
    r = requests.post(f"{live_server.url}/api/projects/drops/uploads/",
                      json={"files": [{"path": p, "size": s} for p, s in files.items()]},
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_tuspy_sends_files_to_their_upload_urls_in_chunks_and_they_arrive_whole(live_server, token, tmp_path):
    local = random_file(tmp_path / "in" / "big.bin", 3 * 1024 * 1024 + 17)
    answer = manifest(live_server, token, {"set/big.bin": local.stat().st_size})
    tus = tus_client.TusClient(f"{live_server.url}/api/uploads/", headers={"Authorization": f"Bearer {token}"})

    tus.uploader(str(local), url=answer["files"][0]["upload_url"], chunk_size=1024 * 1024).upload()

    row = FileUpload.objects.get()
    assert row.status == FileStatus.PENDING
    assert sha256(receiving.staging_path(row.arrival)) == sha256(local)


def test_tuspy_creation_finds_the_manifest_s_file_by_its_metadata(live_server, token, tmp_path):
    local = random_file(tmp_path / "in" / "c.bin", 1000)
    answer = manifest(live_server, token, {"a/c.bin": 1000})
    tus = tus_client.TusClient(f"{live_server.url}/api/uploads/", headers={"Authorization": f"Bearer {token}"})

    uploader = tus.uploader(str(local), metadata={"session": str(answer["session"]), "path": "a/c.bin"})
    uploader.upload()

    assert uploader.url == answer["files"][0]["upload_url"]
    assert FileUpload.objects.get().status == FileStatus.PENDING


def test_curl_head_and_patch_as_the_readme_shows(live_server, token, tmp_path):
    local = random_file(tmp_path / "in" / "d.bin", 200_000)
    url = manifest(live_server, token, {"d.bin": 200_000})["files"][0]["upload_url"]
    auth = ["-H", f"Authorization: Bearer {token}", "-H", "Tus-Resumable: 1.0.0"]

    head = subprocess.run(["curl", "-sS", "-I", *auth, url], capture_output=True, text=True, check=True).stdout
    patch = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH", *auth,
                            "-H", "Upload-Offset: 0", "-H", "Content-Type: application/offset+octet-stream",
                            "-H", "Expect:", "-T", str(local), url], capture_output=True, text=True, check=True)

    assert "upload-offset: 0" in head.lower() and "upload-length: 200000" in head.lower()
    assert patch.stdout == "204"
    assert sha256(receiving.staging_path(Arrival.objects.get())) == sha256(local)


def _cut_off_patch(url: str, token: str, data: bytes, send: int) -> None:
    """A PATCH that declares all of `data` but sends `send` bytes, then drops the connection."""
    parts = urlsplit(url)
    head = (f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {token}\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + data[:send])
        sock.shutdown(socket.SHUT_WR)


def test_an_upload_cut_off_midway_resumes_at_the_server_s_offset_and_arrives_byte_identical(
        live_server, token, tmp_path, project):
    local = random_file(tmp_path / "in" / "photo.raw", 2 * 1024 * 1024 + 3)
    data = local.read_bytes()
    url = manifest(live_server, token, {"cam/photo.raw": len(data)})["files"][0]["upload_url"]

    _cut_off_patch(url, token, data, 1_234_567)

    def offset() -> int:
        return int(requests.head(url, headers={**TUS, "Authorization": f"Bearer {token}"}, timeout=10)
                   .headers["Upload-Offset"])
    wait_for(lambda: offset() == 1_234_567 and Arrival.objects.get().offset == 1_234_567, what="the cut-off bytes")
    assert FileUpload.objects.get().status == FileStatus.RECEIVING

    tus = tus_client.TusClient(f"{live_server.url}/api/uploads/", headers={"Authorization": f"Bearer {token}"})
    uploader = tus.uploader(str(local), url=url, chunk_size=512 * 1024)
    assert uploader.offset == 1_234_567  # it asked the server where to go on from
    uploader.upload()

    session = SyncSession.objects.get()
    uploading.drain(session.pk)
    session.refresh_from_db()
    assert session.status == SessionStatus.COMPLETED
    assert sha256(tmp_path / "dest" / "cam" / "photo.raw") == sha256(local)
    assert not os.path.exists(receiving.staging_path(Arrival.objects.get()))  # staging emptied once sent
