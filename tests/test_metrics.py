"""GET /metrics: Prometheus text read from the database at scrape time, open on loopback only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from sessions_app import catalog, files, metrics, pipeline, starting
from sessions_app.models import Catalog, FileStatus, SessionStatus
from tests.conftest import run_session_inline, write_files
from tests.sessions_helpers import synced_after_a_file_vanished

README = Path(__file__).resolve().parent.parent / "README.md"
LABELS = {"project", "destination", "status"}


@pytest.fixture(autouse=True)
def fast_flush(settings):
    settings.UPLOAD_FLUSH_SECONDS = 0.1
    settings.METRICS_TOKEN = "scrape-token-123"


def scrape(client: Client | None = None, **extra) -> dict[str, list]:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_a_scrape_after_a_real_sync_counts_the_files_uploaded(make_project, source, s3_server):
    write_files(source, {"a.wav": "aaaa", "b/b.wav": "bb", "c.wav": "c"})
    bucket = s3_server.make_bucket()
    project = make_project({"type": "s3", "bucket": bucket, "prefix": "m", "endpoint_url": s3_server.endpoint_url})
    session = run_session_inline(project)
    assert session.uploaded_count == 3
    catalog.tally_changed()

    samples = scrape()

    assert value(samples, "uploader_files_total", project="test-project", status="uploaded") == 3
    assert value(samples, "uploader_files_total", project="test-project", status="failed") == 0
    assert value(samples, "uploader_bytes_uploaded_total", project="test-project") == 7
    assert value(samples, "uploader_sessions", project="test-project", status="completed") == 1
    assert value(samples, "uploader_sessions", project="test-project", status="failed") == 0
    destination = Catalog.objects.get(project=project).destination
    assert bucket in destination
    assert value(samples, "uploader_catalog_objects", project="test-project", destination=destination) == 3
    assert value(samples, "uploader_catalog_bytes", project="test-project", destination=destination) == 7
    last = session.files.filter(status=FileStatus.UPLOADED).latest("uploaded_at").uploaded_at
    assert value(samples, "uploader_last_success_timestamp", project="test-project") == pytest.approx(
        last.timestamp())
    assert value(samples, "uploader_session_active_files", project="test-project", status="pending") == 0


def test_files_of_a_running_session_show_as_pending_and_uploading(make_project, source, tmp_path):
    write_files(source, {f"f{i}.wav": "x" for i in range(5)})
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project)
    session.mark_scanning()
    pipeline.scan_session(session.pk, start_uploads=False)
    files.claim(session, 2)

    samples = scrape()

    assert value(samples, "uploader_session_active_files", project="test-project", status="uploading") == 2
    assert value(samples, "uploader_session_active_files", project="test-project", status="pending") == 3
    assert value(samples, "uploader_sessions", project="test-project", status=SessionStatus.UPLOADING) == 1


def test_failed_files_are_counted_by_outcome(make_project, source, tmp_path):
    synced_after_a_file_vanished(make_project, source, tmp_path)

    samples = scrape()

    assert value(samples, "uploader_files_total", project="test-project", destination="local", status="failed") == 1
    assert value(samples, "uploader_files_total", project="test-project", destination="local",
                 status="uploaded") == 1


def test_off_loopback_a_scrape_needs_the_bearer_token(db):
    assert Client().get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 403
    assert Client().get("/metrics", REMOTE_ADDR="10.2.3.4", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert Client().get("/metrics", REMOTE_ADDR="10.2.3.4", HTTP_AUTHORIZATION="Basic scrape-token-123"
                        ).status_code == 403
    scrape(REMOTE_ADDR="10.2.3.4", HTTP_AUTHORIZATION="Bearer scrape-token-123")
    scrape(REMOTE_ADDR="::1")


def test_a_request_a_proxy_forwarded_is_not_from_loopback(db):
    forwarded = Client().get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert forwarded.status_code == 403
    scrape(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9", HTTP_AUTHORIZATION="Bearer scrape-token-123")


def test_a_loopback_scrape_over_http_is_not_redirected_to_https(db, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/admin/login/").status_code == 301
    scrape()


def test_without_a_token_set_only_loopback_may_scrape(db, settings):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", REMOTE_ADDR="10.2.3.4", HTTP_AUTHORIZATION="Bearer ").status_code == 403
    scrape()


def test_every_family_is_exported_and_documented_in_the_readme(db):
    exposed = Client().get("/metrics").content.decode()
    readme = README.read_text()
    for name in metrics.FAMILIES:
        assert f"# TYPE {name} " in exposed, name
        assert f"`{name}" in readme, f"{name} is not documented in the README"
    documented = set(re.findall(r"`(uploader_[a-z_]+)[`{]", readme))
    assert documented <= set(metrics.FAMILIES) | set(metrics.SQL_VIEWS), documented - set(metrics.FAMILIES)


def test_labels_never_name_a_session_or_a_path(make_project, source, tmp_path):
    write_files(source, {"deep/er/file.wav": "x"})
    session = run_session_inline(make_project({"type": "local", "path": str(tmp_path / "out")}))
    for samples in scrape().values():
        for sample in samples:
            assert set(sample.labels) <= LABELS
            assert str(session.pk) not in sample.labels.values()
            assert not any("file.wav" in v for v in sample.labels.values())


def test_the_scrape_cost_does_not_grow_with_projects_sessions_or_files(make_project, source, tmp_path):
    def queries() -> list[str]:
        with CaptureQueriesContext(connection) as ctx:
            scrape()
        # Our tables only: django-q2's cache and broker reads vary with what earlier tests left there.
        return [q["sql"] for q in ctx.captured_queries if "sessions_app_" in q["sql"] or "projects_" in q["sql"]]

    write_files(source, {"a.wav": "a"})
    run_session_inline(make_project({"type": "local", "path": str(tmp_path / "o1")}, project="one"))
    few = queries()
    write_files(source, {f"more/{i}.wav": "b" for i in range(30)})
    for name in ("two", "three", "four"):
        run_session_inline(make_project({"type": "local", "path": str(tmp_path / name)}, project=name))
        run_session_inline(make_project({"type": "local", "path": str(tmp_path / name)}, project=name))

    many = queries()

    assert len(many) == len(few), [q for q in many if q not in few]
    # The file table is read only for rows in flight (status 'uploading'), through its index.
    on_files = [q for q in many if "sessions_app_fileupload" in q]
    assert all("uploading" in q or "uploaded" in q for q in on_files), on_files
    assert not any("sessions_app_catalogentry" in q for q in many)
