"""The upload page in a real Chromium: a folder of 20 files (a corrupt JPEG, a HEIC, one in a
subfolder) goes through both phases with a real qcluster, and the thumbnails show in the admin."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession
from tests.conftest import ROOT
from tests.polling import wait_for

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts"))


def photo(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320 + i, 240), (10 * i % 255, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    out = io.BytesIO()
    Image.new("RGB", (300, 200), (30, 200, 30)).save(out, "HEIF")
    return out.getvalue()


@pytest.fixture
def drop_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "drop" / "trap-07"
    (folder / "night").mkdir(parents=True)
    for i in range(17):
        (folder / f"IMG_{i:04d}.jpg").write_bytes(photo(i))
    (folder / "broken.jpg").write_bytes(photo(99)[:300] + b"\x00not a jpeg" * 40)
    (folder / "phone.heic").write_bytes(heic())
    (folder / "night" / "owl.jpg").write_bytes(photo(50))
    return folder


def test_a_dropped_folder_goes_through_both_phases_and_its_thumbnails_show_in_the_admin(
        admin_page, cluster_factory, make_project, drop_folder, settings, tmp_path):
    settings.UPLOAD_STAGING_DIR, settings.THUMBNAIL_DIR = tmp_path / "staging", tmp_path / "thumbs"
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera-traps")
    cluster_factory(UPLOAD_STAGING_DIR=str(settings.UPLOAD_STAGING_DIR), THUMBNAIL_DIR=str(settings.THUMBNAIL_DIR),
                    QUEUE_LINGER_SECONDS="1")

    admin_page.goto(f"/admin/projects/project/{project.pk}/change/")
    admin_page.get_by_role("link", name="Upload files…").click()
    admin_page.wait_for_url(f"**/admin/projects/project/{project.pk}/upload/")
    admin_page.set_input_files("#pick-folder", str(drop_folder))

    admin_page.wait_for_selector("#phase[data-phase=done]", timeout=120_000)
    assert "20 files accepted, 0 refused" in admin_page.inner_text("#summary")
    assert admin_page.inner_text("#bytes-text").endswith("(100.0%)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    admin_page.screenshot(path=str(ARTIFACTS / "upload_page.png"), full_page=True)

    session = SyncSession.objects.get(kind=SyncSession.Kind.BROWSER)
    assert (session.status, session.uploaded_count, session.failed_count) == (
        SessionStatus.COMPLETED_WITH_ERRORS, 19, 1)
    broken = FileUpload.objects.get(relative_path="trap-07/broken.jpg")
    assert (broken.status, broken.last_error.split(":")[0]) == (FileStatus.FAILED, "not a decodable image")
    assert (tmp_path / "dest" / "trap-07" / "night" / "owl.jpg").read_bytes() == photo(50)
    assert (tmp_path / "dest" / "thumbnails" / "trap-07" / "phone.heic.webp").exists()

    admin_page.click("#files-link")
    admin_page.wait_for_selector("img.thumbnail")
    loaded = wait_for(lambda: admin_page.eval_on_selector_all(
        "img.thumbnail", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length") == 19 or None,
        what="19 thumbnails loaded")
    assert loaded
    admin_page.screenshot(path=str(ARTIFACTS / "upload_files_with_thumbnails.png"), full_page=True)
    owl = FileUpload.objects.get(relative_path="trap-07/night/owl.jpg")
    admin_page.goto(f"/admin/sessions_app/fileupload/{owl.pk}/change/")
    # Polled: the page's load event does not wait for every image on a busy machine.
    assert wait_for(lambda: admin_page.eval_on_selector("img.thumbnail", "i => i.complete && i.naturalWidth") or None,
                    what="the file's thumbnail loaded") > 0


def test_five_thousand_rows_stay_a_few_dozen_elements_in_the_page(admin_page, make_project, tmp_path, settings):
    settings.UPLOAD_STAGING_DIR = tmp_path / "staging"
    project = make_project({"type": "local", "path": str(tmp_path / "dest")}, project="only-jpegs",
                           extensions=[".jpg"])
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(5000):  # all refused by type: the list fills without a byte sent
        (folder / f"note-{i:04d}.txt").touch()

    admin_page.goto(f"/admin/projects/project/{project.pk}/upload/")
    admin_page.set_input_files("#pick-folder", str(folder))
    admin_page.wait_for_function("document.getElementById('summary').textContent.includes('5000 refused')")

    assert admin_page.locator("#rows .row").count() < 60
    admin_page.eval_on_selector("#rows", "box => { box.scrollTop = box.scrollHeight; }")
    last = admin_page.wait_for_function(  # the 5,000th row is drawn once scrolled into view
        "Array.from(document.querySelectorAll('#rows .row')).find(r => r.style.top === '119976px')")
    assert "refused: type not allowed" in last.evaluate("r => r.textContent")
    assert admin_page.locator("#rows .row").count() < 60
