"""The admin's Dashboard in a real Chromium: tables and charts from one JSON answer, also 400 px wide."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sessions_app import files, pipeline, starting, uploading
from tests.conftest import run_session_inline, write_files

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(autouse=True)
def fast_flush(settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1


@pytest.fixture
def history(transactional_db, make_project, source, tmp_path):
    """A finished sync with one failure, and a second project with a session still uploading."""
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb", "gone.wav": "g"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")}, project="field-recorders")
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    (source / "gone.wav").unlink()
    uploading.drain(session.pk)
    write_files(source, {f"live/{i}.wav": "x" for i in range(4)})
    running = starting.create_session(make_project({"type": "local", "path": str(tmp_path / "o2")}, project="drones"))
    running.mark_scanning()
    pipeline.scan_session(running.pk, start_uploads=False)
    files.claim(running, 1)
    return session, running


def watch_console(page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return problems


def open_dashboard(page) -> None:
    page.goto("/admin/dashboard/")
    page.wait_for_selector(".up-dashboard[data-loaded='1']")


def test_the_dashboard_draws_projects_charts_failures_and_live_sessions(admin_page, history):
    finished, running = history
    problems = watch_console(admin_page)

    open_dashboard(admin_page)

    projects = admin_page.locator("#up-projects tbody")
    assert "field-recorders" in projects.inner_text()
    assert "Completed with errors" in projects.inner_text()
    assert "2 · 6 B" in projects.inner_text()  # today: two files uploaded, six bytes
    live = admin_page.locator("#up-live tbody").inner_text()
    assert f"#{running.pk} drones" in live and "Uploading" in live
    assert "file not found" in admin_page.locator("#up-reasons tbody").inner_text()
    for canvas in ("up-chart-24h", "up-chart-30d"):
        drawn = admin_page.evaluate(
            "id => { const c = Chart.getChart(document.getElementById(id));"
            " return c ? c.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]) : null; }", canvas)
        assert ["field-recorders", 2] in drawn and ["failed", 1] in drawn, drawn
        box = admin_page.locator(f"#{canvas}").bounding_box()
        assert box["width"] > 200 and box["height"] > 200
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    admin_page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert problems == []


def test_the_dashboard_fits_a_400_px_window(admin_page, history):
    problems = watch_console(admin_page)
    admin_page.set_viewport_size({"width": 400, "height": 800})

    open_dashboard(admin_page)

    assert admin_page.evaluate("document.documentElement.scrollWidth") <= 400
    for card in admin_page.locator(".up-card").all():
        box = card.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400, box
    chart = admin_page.locator("#up-chart-24h").bounding_box()
    assert chart["width"] > 250
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    admin_page.screenshot(path=str(ARTIFACTS / "dashboard-400px.png"), full_page=True)
    assert problems == []


def test_the_admin_index_links_to_the_dashboard(admin_page):
    admin_page.goto("/admin/")
    admin_page.locator("a[href='/admin/dashboard/']").click()
    admin_page.wait_for_selector(".up-dashboard[data-loaded='1']")
    assert "No projects yet." in admin_page.locator("#up-projects").inner_text()
