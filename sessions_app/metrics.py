"""Prometheus metrics, read from the database at scrape time (README "Observability").

Every web and worker process answers with the same truth because nothing is kept in memory: a
collector runs one cheap query per family over the session counters, the catalog tallies and the
hourly throughput, never an aggregate over file rows (the one exception, files uploading right
now, reads the in-flight rows of running sessions through the (session, status) index). Labels
are projects, destinations and statuses: never a session id or a path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

from django.db.models import Count, OuterRef, Subquery, Sum
from django_q.brokers import get_broker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from projects.models import Project
from sessions_app import health, kinds, reporting
from sessions_app.models import (
    ACTIVE_STATUSES, Catalog, FileStatus, FileUpload, SessionStatus, SyncSession,
)

log = logging.getLogger(__name__)

OUTCOMES = {"uploaded": "uploaded_count", "failed": "failed_count", "skipped": "skipped_count",
            "cancelled": "cancelled_count"}
# Every family and its help text: the README documents these names, tests/test_metrics.py checks both.
FAMILIES = {
    "uploader_files_total": "Files settled over all sessions, by outcome (the sessions' counters).",
    "uploader_bytes_uploaded_total": "Bytes uploaded over all sessions.",
    "uploader_catalog_objects": "Objects known to be at the destination (the catalog, as of its last tally).",
    "uploader_catalog_bytes": "Bytes known to be at the destination (the catalog, as of its last tally).",
    "uploader_sessions": "Sessions by status.",
    "uploader_session_active_files": "Files of running sessions still to do: pending, or uploading now.",
    "uploader_queue_depth": "Files waiting in the project's upload queue (POST /api/queue-upload/).",
    "uploader_task_queue_depth": "Tasks waiting in django-q2's broker queue.",
    "uploader_workers_alive": "qcluster processes with a fresh heartbeat.",
    "uploader_last_success_timestamp": "Unix time of the project's last uploaded file (absent if none).",
}


def _family(kind: type, name: str, labels: list[str]) -> Metric:
    # CounterMetricFamily adds the _total suffix itself.
    base = name.removesuffix("_total") if kind is CounterMetricFamily else name
    return kind(base, FAMILIES[name], labels=labels)


def _projects() -> dict[int, tuple[str, str]]:
    return {pk: (name, kind) for pk, name, kind in Project.objects.values_list("id", "name", "destination_kind")}


def outcomes(projects: dict[int, tuple[str, str]]) -> Iterator[Metric]:
    files = _family(CounterMetricFamily, "uploader_files_total", ["project", "destination", "status"])
    uploaded = _family(CounterMetricFamily, "uploader_bytes_uploaded_total", ["project", "destination"])
    sums = {f"{outcome}_sum": Sum(counter) for outcome, counter in OUTCOMES.items()}
    rows = SyncSession.objects.order_by().values("project_id").annotate(bytes=Sum("bytes_uploaded"), **sums)
    for row in rows:
        name, kind = projects[row["project_id"]]
        for outcome in OUTCOMES:
            files.add_metric([name, kind, outcome], row[f"{outcome}_sum"] or 0)
        uploaded.add_metric([name, kind], row["bytes"] or 0)
    yield files
    yield uploaded


def catalogs(projects: dict[int, tuple[str, str]]) -> Iterator[Metric]:
    objects = _family(GaugeMetricFamily, "uploader_catalog_objects", ["project", "destination"])
    size = _family(GaugeMetricFamily, "uploader_catalog_bytes", ["project", "destination"])
    for project_id, destination, n, total in Catalog.objects.values_list(
            "project_id", "destination", "object_count", "byte_count"):
        objects.add_metric([projects[project_id][0], destination], n)
        size.add_metric([projects[project_id][0], destination], total)
    yield objects
    yield size


def sessions(projects: dict[int, tuple[str, str]]) -> Iterator[Metric]:
    family = _family(GaugeMetricFamily, "uploader_sessions", ["project", "status"])
    counts = dict(((p, s), n) for p, s, n in SyncSession.objects.order_by().values_list("project_id", "status")
                  .annotate(n=Count("id")))
    for project_id, (name, _) in projects.items():
        for status in SessionStatus.values:  # zeros too: an alert on "failed > 0" needs the series
            family.add_metric([name, status], counts.get((project_id, status), 0))
    yield family


def active_files(projects: dict[int, tuple[str, str]]) -> Iterator[Metric]:
    family = _family(GaugeMetricFamily, "uploader_session_active_files", ["project", "status"])
    running = SyncSession.objects.filter(status__in=ACTIVE_STATUSES)
    open_files = dict(running.order_by().values("project_id").annotate(n=Sum("pending_count"))
                      .values_list("project_id", "n"))
    uploading = dict(FileUpload.objects.filter(session__in=running, status=FileStatus.UPLOADING).order_by()
                     .values("project_id").annotate(n=Count("id")).values_list("project_id", "n"))
    for project_id, (name, _) in projects.items():
        now = uploading.get(project_id, 0)
        family.add_metric([name, "uploading"], now)
        family.add_metric([name, "pending"], max(0, (open_files.get(project_id) or 0) - now))
    yield family


def queues(projects: dict[int, tuple[str, str]]) -> Iterator[Metric]:
    depth = _family(GaugeMetricFamily, "uploader_queue_depth", ["project"])
    backlog = dict(kinds.STREAM.sessions().filter(status__in=ACTIVE_STATUSES).order_by().values("project_id")
                   .annotate(n=Sum("pending_count")).values_list("project_id", "n"))
    for project_id, (name, _) in projects.items():
        depth.add_metric([name], backlog.get(project_id) or 0)
    yield depth
    tasks = _family(GaugeMetricFamily, "uploader_task_queue_depth", [])
    try:
        tasks.add_metric([], _broker().queue_size())
    except Exception:  # an unreachable broker leaves the family empty, not the whole scrape failed
        log.warning("metrics: cannot read the task queue size", exc_info=True)
    yield tasks


@functools.cache
def _broker() -> Any:
    return get_broker()  # one per process: a Redis broker holds a connection pool


def workers() -> Iterator[Metric]:
    family = _family(GaugeMetricFamily, "uploader_workers_alive", [])
    family.add_metric([], health.clusters_alive())
    yield family


def last_success(projects: dict[int, tuple[str, str]]) -> Iterator[Metric]:
    family = _family(GaugeMetricFamily, "uploader_last_success_timestamp", ["project"])
    # The project's latest session that uploaded anything, then that session's last uploaded row
    # (the (session, status, id) index): two index probes per project, whatever the table sizes.
    latest = SyncSession.objects.filter(project_id=OuterRef(OuterRef("pk")), uploaded_count__gt=0).order_by("-id")
    last_row = FileUpload.objects.filter(session_id=Subquery(latest.values("id")[:1]), status=FileStatus.UPLOADED,
                                         uploaded_at__isnull=False).order_by("-id")
    rows = Project.objects.annotate(at=Subquery(last_row.values("uploaded_at")[:1])).values_list("id", "at")
    for project_id, at in rows:
        if at is not None and project_id in projects:
            family.add_metric([projects[project_id][0]], at.timestamp())
    yield family


class UploaderCollector:
    def collect(self) -> Iterator[Metric]:
        projects = _projects()
        yield from outcomes(projects)
        yield from catalogs(projects)
        yield from sessions(projects)
        yield from active_files(projects)
        yield from queues(projects)
        yield from workers()
        yield from last_success(projects)

    def describe(self) -> list[Metric]:
        return []  # registering must not query the database


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(UploaderCollector())


def exposition() -> bytes:
    return generate_latest(REGISTRY)



# The SQL views for Grafana's PostgreSQL source (sessions_app.reporting), documented beside the families.
SQL_VIEWS = tuple(reporting.VIEWS)
