"""Phase 2: each received file is checked by its bytes, thumbnailed when an image, and sent with
its thumbnail through the same transfer path as a sync; a bad file fails alone."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.test import Client
from PIL import Image

from sessions_app import uploading
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from tests.uploads_helpers import OFFSET_TYPE, staging  # noqa: F401 (fixture)


@pytest.fixture
def project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="drops", thumbnail_size=64,
                        thumbnail_prefix="thumbs/")


def jpeg(width: int = 200, height: int = 100, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (width, height), (200, 30, 30))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(out, "JPEG", exif=exif)
    return out.getvalue()


def heic(width: int = 120, height: int = 80) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 200, 30)).save(out, "HEIF")
    return out.getvalue()


def a_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("x.txt", "not an image")
    return out.getvalue()


def receive_all(project, files: dict[str, bytes]) -> SyncSession:
    """Send a manifest and every file's bytes over the API, then process in this process."""
    api, token = Client(), project.issue_api_token()
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    r = api.post("/api/projects/drops/uploads/", json.dumps({"files": [{"path": p, "size": len(b)}
                                                                      for p, b in files.items()]}),
                 content_type="application/json", headers=auth)
    for entry in r.json()["files"]:
        sent = api.patch(entry["upload_url"], files[entry["path"]], content_type=OFFSET_TYPE,
                         headers={**auth, "Upload-Offset": "0"})
        assert sent.status_code == 204
    session = SyncSession.objects.get(pk=r.json()["session"])
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def test_images_get_webp_thumbnails_under_the_prefix_and_both_reach_the_destination(project, tmp_path):
    session = receive_all(project, {"cam/a.jpg": jpeg(200, 100), "notes/readme.txt": b"hello"})

    assert session.status == SessionStatus.COMPLETED
    dest = tmp_path / "dest"
    assert (dest / "cam" / "a.jpg").read_bytes() == jpeg(200, 100)
    assert (dest / "notes" / "readme.txt").read_bytes() == b"hello"
    with Image.open(dest / "thumbs" / "cam" / "a.jpg.webp") as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (64, 32))
    assert not (dest / "thumbs" / "notes").exists()
    note = FileUpload.objects.get(relative_path="cam/a.jpg").note
    assert note == "content image/jpeg thumbnail thumbs/cam/a.jpg.webp"


def test_the_thumbnail_is_upright_by_the_exif_orientation(project, tmp_path):
    receive_all(project, {"turned.jpg": jpeg(200, 100, orientation=6)})  # 6: rotate 90° clockwise to view

    with Image.open(tmp_path / "dest" / "thumbs" / "turned.jpg.webp") as thumb:
        assert thumb.size == (32, 64)


def test_a_heic_photo_is_decoded_and_thumbnailed(project, tmp_path):
    session = receive_all(project, {"phone/IMG_0001.HEIC": heic(120, 80)})

    assert session.status == SessionStatus.COMPLETED
    with Image.open(tmp_path / "dest" / "thumbs" / "phone" / "IMG_0001.HEIC.webp") as thumb:
        assert thumb.size == (64, 43)
    assert FileUpload.objects.get().note.startswith("content image/heic")


def test_a_corrupt_jpeg_fails_alone_with_a_clear_error(project, tmp_path):
    corrupt = jpeg()[:200] + b"\x00garbage" * 50
    session = receive_all(project, {"good.jpg": jpeg(), "bad.jpg": corrupt})

    assert session.status == SessionStatus.COMPLETED_WITH_ERRORS
    bad = FileUpload.objects.get(relative_path="bad.jpg")
    assert (bad.status, bad.error_permanent) == (FileStatus.FAILED, True)
    assert bad.last_error.startswith("not a decodable image:")
    assert FileUpload.objects.get(relative_path="good.jpg").status == FileStatus.UPLOADED
    assert not (tmp_path / "dest" / "bad.jpg").exists()
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []  # both staged files went


def test_a_file_whose_bytes_are_not_the_type_its_name_says_is_refused(project, tmp_path):
    session = receive_all(project, {"holiday.jpg": a_zip(), "photo.png": jpeg()})

    errors = dict(FileUpload.objects.values_list("relative_path", "last_error"))
    assert errors["holiday.jpg"] == ("content does not match its name: a .jpg file should hold image/jpeg, "
                                     "its bytes are application/zip")
    assert "its bytes are image/jpeg" in errors["photo.png"]
    assert (session.failed_count, session.status) == (2, SessionStatus.COMPLETED_WITH_ERRORS)
    assert not (tmp_path / "dest" / "holiday.jpg").exists()


def test_session_status_reports_both_phases_done(project, django_user_model):
    session = receive_all(project, {"a.jpg": jpeg()})
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser("s", "s@example.com", "pw"))

    body = staff.get(f"/api/sessions/{session.pk}/").json()

    assert (body["kind"], body["phase"], body["processed"], body["processed_percent"], body["received"]) == (
        "browser", "done", 1, 100.0, 1)
