"""A session's admin page in a real Chromium: the summary panel on top, the raw fields folded below."""

from __future__ import annotations

import pytest

from sessions_app import pipeline, starting, uploading
from tests.conftest import write_files
from tests.test_browser_dashboard import ARTIFACTS, watch_console


@pytest.fixture(autouse=True)
def fast_flush(settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1


@pytest.fixture
def finished(transactional_db, make_project, source, tmp_path):
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb", "gone.wav": "g"})
    session = starting.create_session(make_project({"type": "local", "path": str(tmp_path / "out")}))
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    (source / "gone.wav").unlink()
    uploading.drain(session.pk)
    session.refresh_from_db()
    return session


def open_session(page, session) -> None:
    page.goto(f"/admin/sessions_app/syncsession/{session.pk}/change/")
    page.wait_for_selector("#live-counts[data-loaded='1']")


def test_the_summary_panel_shows_status_progress_linked_counts_chart_and_reasons(admin_page, finished):
    problems = watch_console(admin_page)

    open_session(admin_page, finished)

    panel = admin_page.locator("#live-counts")
    assert panel.locator("[data-k='status']").inner_text() == "Completed with errors"
    assert "100.0% of 3 files" in panel.locator("[data-k='progress']").inner_text()
    pills = {a.get_attribute("data-status"): a for a in panel.locator(".up-pill").all()}
    assert {k: pills[k].inner_text().split()[-1] for k in ("uploaded", "skipped", "failed", "pending")} == {
        "uploaded": "2", "skipped": "0", "failed": "1", "pending": "0"}
    total = admin_page.evaluate("Chart.getChart(document.getElementById('up-session-chart'))"
                                ".data.datasets[0].data.reduce((a, b) => a + b, 0)")
    assert total == 2
    assert "file not found: <path>" in admin_page.locator("#up-session-reasons").inner_text()
    folded = admin_page.locator("fieldset.collapse details, details:has(> summary:has-text('All fields'))").first
    assert folded.get_attribute("open") is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    admin_page.screenshot(path=str(ARTIFACTS / "session.png"), full_page=True)
    assert problems == []
    pills["failed"].click()
    admin_page.wait_for_url(f"**/fileupload/?session__id__exact={finished.pk}&status__exact=failed")
    listed = admin_page.locator("#result_list").inner_text()
    assert "gone.wav" in listed and "a.wav" not in listed


def test_the_summary_panel_fits_a_400_px_window(admin_page, finished):
    problems = watch_console(admin_page)
    admin_page.set_viewport_size({"width": 400, "height": 800})

    open_session(admin_page, finished)

    assert admin_page.evaluate("document.documentElement.scrollWidth") <= 400
    for card in admin_page.locator("#live-counts .up-card").all():
        box = card.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400, box
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    admin_page.screenshot(path=str(ARTIFACTS / "session-400px.png"), full_page=True)
    assert problems == []


def test_a_running_session_shows_its_speed_and_eta(admin_page, make_project, source, tmp_path):
    write_files(source, {f"f{i}.wav": "x" * 100 for i in range(4)})
    session = starting.create_session(make_project({"type": "local", "path": str(tmp_path / "out")}))
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    from sessions_app import files
    rows = files.claim(session, 2)
    files.record(session, [files.Outcome(row, "uploaded") for row in rows])

    open_session(admin_page, session)

    assert admin_page.locator("#live-counts [data-k='status']").inner_text() == "Uploading"
    assert "ETA" in admin_page.locator("#live-counts [data-k='speed']").inner_text()
