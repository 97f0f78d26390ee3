"""What a /metrics scrape costs with many file rows, side by side with the naive collector a
user would write first (COUNT(*) and SUM over the file and catalog rows at every scrape).

    python bench/bench_metrics.py [--files 1000000] [--projects 10] [--rounds 15]
                                  [--database-url postgres://postgres@127.0.0.1:5432/bench_metrics]

1. A fresh database (dropped and created), migrated; `--projects` projects with 10 sessions each
   share `--files` file rows (uploaded, a few failed, one session per project still running with
   pending and in-flight rows), and the catalog holds an entry per uploaded file (COPY).
2. The sessions' counters are recounted and the catalogs tallied, as the product keeps them.
3. Alternating, `--rounds` times: GET /metrics through Django (the product's view and collector) and
   the naive exposition of the same families; then GET /api/overview/ (the Dashboard's JSON).
Reports the median and worst milliseconds of each, and the ratio naive / product.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def fresh_database(url: str) -> None:
    import psycopg2

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/")
    admin = psycopg2.connect(host=parts.hostname, port=parts.port or 5432, user=parts.username or "postgres",
                             password=parts.password or None, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


def populate(n_files: int, n_projects: int) -> None:
    from django.db import transaction
    from django.utils import timezone

    from projects import config
    from sessions_app import bulk, catalog, files
    from sessions_app.models import Catalog, CatalogEntry, FileUpload, SyncSession

    per_session = n_files // (n_projects * 10)
    now = timezone.now()
    for p in range(n_projects):
        project, _ = config.apply(config.validate({
            "project": f"project-{p:02d}", "source_dir": f"/data/p{p}",
            "destination": {"type": "s3", "bucket": f"bucket-{p}", "prefix": "data"}}), "command_line", "bench")
        cat = Catalog.objects.create(project=project, destination=f"s3://bucket-{p}/data")
        for s in range(10):
            running = s == 9
            session = SyncSession.objects.create(project=project, status="uploading" if running else "completed",
                                                 started_at=now, finished_at=None if running else now)
            rows, entries = [], []
            for i in range(per_session):
                path = f"s{s}/dir{i // 1000:04d}/file{i:07d}.wav"
                if running and i % 2:
                    status, at, error = ("uploading" if i % 100 == 1 else "pending"), None, ""
                elif i % 500 == 0:
                    status, at, error = "failed", None, "403 AccessDenied"
                else:
                    status, at, error = "uploaded", now, ""
                    entries.append((cat.pk, path, 4096, 1.0, session.pk, now))
                rows.append((session.pk, project.pk, path, path, 4096, 1.0, status, at, error))
            with transaction.atomic():
                bulk.insert_tuples(FileUpload, ("session_id", "project_id", "relative_path", "remote_key", "size",
                                                "mtime", "status", "uploaded_at", "last_error"), rows)
                bulk.insert_tuples(CatalogEntry, ("catalog_id", "key", "size", "mtime", "session_id", "arrived_at"),
                                   entries)
            files.recount(session)
        print(f"  project {p + 1}/{n_projects}: {per_session * 10:,} file rows", flush=True)
    catalog.tally_changed()
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def naive_exposition() -> bytes:
    """The families a first attempt computes from the rows themselves, at every scrape."""
    from django.db.models import Count, Sum
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from sessions_app.models import CatalogEntry, FileUpload

    class Naive:
        def collect(self):
            files = CounterMetricFamily("uploader_files", "", labels=["project", "status"])
            size = CounterMetricFamily("uploader_bytes_uploaded", "", labels=["project"])
            for row in FileUpload.objects.order_by().values("project__name", "status").annotate(
                    n=Count("id"), b=Sum("size")):
                files.add_metric([row["project__name"], row["status"]], row["n"])
                if row["status"] == "uploaded":
                    size.add_metric([row["project__name"]], row["b"] or 0)
            objects = GaugeMetricFamily("uploader_catalog_objects", "", labels=["project", "destination"])
            for row in CatalogEntry.objects.order_by().values("catalog__project__name", "catalog__destination").annotate(
                    n=Count("id"), b=Sum("size")):
                objects.add_metric([row["catalog__project__name"], row["catalog__destination"]], row["n"])
            yield from (files, size, objects)

        def describe(self):
            return []

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Naive())
    return generate_latest(registry)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_metrics")
    args = parser.parse_args()

    fresh_database(args.database_url)
    os.environ.update(DATABASE_URL=args.database_url, DJANGO_SETTINGS_MODULE="uploader_site.settings",
                      DEBUG="1", SECRET_KEY=os.environ.get("SECRET_KEY", "bench-secret-key"), LOG_LEVEL="WARNING")
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from django.contrib.auth import get_user_model

    call_command("migrate", verbosity=0)
    print(f"populating {args.files:,} file rows in {args.projects} projects ...", flush=True)
    started = time.perf_counter()
    populate(args.files, args.projects)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)

    client = Client(HTTP_HOST="127.0.0.1")
    staff = Client(HTTP_HOST="127.0.0.1")
    staff.force_login(get_user_model().objects.create_superuser("bench", "b@example.com", "x"))

    def product() -> None:
        response = client.get("/metrics")
        assert response.status_code == 200 and b"uploader_files_total" in response.content

    product(), naive_exposition(), staff.get("/api/overview/")  # warm caches and connections
    ours, naive, overview = [], [], []
    for _ in range(args.rounds):
        ours.append(timed(product))
        naive.append(timed(naive_exposition))
        overview.append(timed(lambda: staff.get("/api/overview/")))
    result = {
        "files": args.files, "projects": args.projects, "rounds": args.rounds,
        "metrics_ms": {"median": round(statistics.median(ours), 1), "max": round(max(ours), 1)},
        "naive_ms": {"median": round(statistics.median(naive), 1), "max": round(max(naive), 1)},
        "overview_ms": {"median": round(statistics.median(overview), 1), "max": round(max(overview), 1)},
    }
    result["naive_over_product"] = round(result["naive_ms"]["median"] / result["metrics_ms"]["median"], 1)
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
