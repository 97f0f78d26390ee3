"""The history beside the counters: hourly Throughput per project (files.record), catalog tallies
(the sweep), and the SQL views Grafana reads."""

from __future__ import annotations

from django.db import connection

from sessions_app import catalog, files, starting, tasks
from sessions_app.models import Catalog, CatalogEntry, Throughput
from tests.conftest import run_session_inline, write_files


def test_outcomes_add_up_per_project_and_hour_over_sessions(make_project, source, tmp_path, settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    run_session_inline(project)
    session = starting.create_session(project)
    files.add_pending(session, [(session.pk, project.pk, "x.wav", "x.wav", 5, 1.0, None, None, False),
                                (session.pk, project.pk, "y.wav", "y.wav", 7, 1.0, None, None, False)])
    x, y = files.claim(session, 2)
    files.record(session, [files.Outcome(x, "uploaded"), files.Outcome(y, "failed")])

    [hour] = Throughput.objects.filter(project=project)
    assert (hour.uploaded, hour.uploaded_bytes, hour.failed) == (3, 11, 1)
    assert hour.hour.minute == 0 and hour.hour.second == 0


def test_a_skip_or_cancel_adds_no_throughput(make_project, tmp_path):
    session = starting.create_session(make_project({"type": "local", "path": str(tmp_path / "out")}))
    files.add_pending(session, [(session.pk, session.project_id, "x.wav", "x.wav", 5, 1.0, None, None, False)])
    [x] = files.claim(session, 1)
    files.record(session, [files.Outcome(x, "skipped")])
    assert not Throughput.objects.exists()


def test_the_sweep_tallies_catalogs_whose_project_worked_since(make_project, source, tmp_path, settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    run_session_inline(project)
    cat = Catalog.objects.get(project=project)
    assert (cat.object_count, cat.tallied_at) == (0, None)

    tasks.sweep()

    cat.refresh_from_db()
    assert (cat.object_count, cat.byte_count) == (2, 6)
    assert catalog.tally_changed() == []  # nothing worked since
    write_files(source, {"c.wav": "ccc"})
    run_session_inline(project)
    assert catalog.tally_changed() == [f"catalog {cat.pk}: tallied"]
    cat.refresh_from_db()
    assert (cat.object_count, cat.byte_count) == (3, 9) == (CatalogEntry.objects.count(), 9)


def test_the_sql_views_answer_per_day_and_failure_reasons(make_project, source, tmp_path, settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1
    write_files(source, {"a.wav": "aaaa", "b.wav": "bb"})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    run_session_inline(project)
    session = starting.create_session(project)
    files.add_pending(session, [(session.pk, project.pk, "x.wav", "x.wav", 5, 1.0, None, None, False)])
    [x] = files.claim(session, 1)
    x.last_error = "403 AccessDenied"
    files.record(session, [files.Outcome(x, "failed")])

    with connection.cursor() as cursor:
        cursor.execute("SELECT project, files, bytes, failed FROM uploader_daily_uploads")
        assert cursor.fetchall() == [("test-project", 2, 6, 1)]
        cursor.execute("SELECT project, files, bytes FROM uploader_hourly_uploads")
        assert cursor.fetchall() == [("test-project", 2, 6)]
        cursor.execute("SELECT project, reason, files FROM uploader_failure_reasons ORDER BY files DESC LIMIT 10")
        assert cursor.fetchall() == [("test-project", "403 AccessDenied", 1)]
