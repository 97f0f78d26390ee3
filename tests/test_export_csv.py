"""A session's files as CSV: GET /api/sessions/ID/files.csv and the admin action, streamed."""

from __future__ import annotations

import csv
import io
import tracemalloc

import pytest
from django.db import transaction

from sessions_app import files, starting
from sessions_app.exporting import COLUMNS
from tests.conftest import run_session_inline, write_files


@pytest.fixture
def synced(make_project, source, tmp_path, settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1
    write_files(source, {"a.wav": "aaaa", "b/c,d.wav": "bb", 'q"uote.wav': "q"})
    return run_session_inline(make_project({"type": "local", "path": str(tmp_path / "out")}))


def read_csv(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_csv_lists_every_file_of_the_session_with_its_outcome(admin_client, synced):
    response = admin_client.get(f"/api/sessions/{synced.pk}/files.csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="session-{synced.pk}-files.csv"'
    rows = read_csv(response)
    assert list(rows[0]) == list(COLUMNS)
    assert {r["relative_path"]: (r["status"], r["size"]) for r in rows} == {
        "a.wav": ("uploaded", "4"), "b/c,d.wav": ("uploaded", "2"), 'q"uote.wav': ("uploaded", "1")}
    assert all(r["uploaded_at"] and r["session_id"] == str(synced.pk) for r in rows)


def test_the_csv_needs_a_staff_login(client, synced):
    response = client.get(f"/api/sessions/{synced.pk}/files.csv")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_an_unknown_session_is_404(admin_client, db):
    assert admin_client.get("/api/sessions/999999/files.csv").status_code == 404


def test_the_admin_action_exports_the_selected_sessions(admin_client, synced, make_project, source, tmp_path):
    other = run_session_inline(make_project({"type": "local", "path": str(tmp_path / "o2")}, project="other"))

    response = admin_client.post("/admin/sessions_app/syncsession/", {
        "action": "export_files_csv", "_selected_action": [synced.pk, other.pk]})

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="sessions-2-files.csv"'
    rows = read_csv(response)
    assert [int(r["session_id"]) for r in rows] == [synced.pk] * 3 + [other.pk] * 3


def test_a_200000_file_session_streams_with_flat_memory(admin_client, make_project):
    session = starting.create_session(make_project({"type": "local", "path": "/tmp/unused-out"}))
    with transaction.atomic():
        for start in range(0, 200_000, 20_000):
            files.add_pending(session, [(session.pk, session.project_id, f"dir/{i:07d}.wav", f"k/{i:07d}.wav",
                                         1000 + i, 1.5, None, None, False) for i in range(start, start + 20_000)])

    response = admin_client.get(f"/api/sessions/{session.pk}/files.csv")
    lines, size = 0, 0
    tracemalloc.start()
    try:
        for chunk in response.streaming_content:
            lines += chunk.count(b"\n")
            size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert lines == 200_001
    # The whole CSV is ~14 MB and 200,000 rows as Python tuples several times that: a few pages at a time stay small.
    assert size > 10_000_000
    assert peak < 6_000_000, peak
