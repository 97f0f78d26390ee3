"""The figures of the admin's Dashboard and of a session's summary panel, as plain data for JSON.

History comes from the hourly Throughput rows (small, whatever the number of files); only the
failure reasons and a session's own throughput read file rows, through the (session, status)
index, and only for failed rows or one session's uploaded rows.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, QuerySet, Sum
from django.db.models.functions import TruncMinute
from django.urls import reverse
from django.utils import timezone

from projects.models import Project
from sessions_app import files, pacing
from sessions_app.models import (
    ACTIVE_STATUSES, FileStatus, FileUpload, SessionDestination, SessionStatus, SyncSession, Throughput,
)

REASONS = 10
LIVE = 20
REASON_CHARS = 200
REASON_SAMPLE = 5000
# An absolute path (or a path within one) in an error message: each file's own, so no shared reason.
PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s:'\"/]+){2,}/?|<file>(?:/[^\s:'\"]*)?")
SESSION_POINTS = 60


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def reason_of(error: str, relative_path: str) -> str:
    """An error as a reason shared by many files: its first line, without the file's own path."""
    line = (error or "(no message)").splitlines()[0] if error.strip() else "(no message)"
    if relative_path:
        line = line.replace(relative_path, "<file>")
    return PATH.sub("<path>", line)[:REASON_CHARS]


def reasons(rows: QuerySet[FileUpload], n: int = REASONS) -> list[dict[str, Any]]:
    """The most frequent reasons among the last REASON_SAMPLE failed rows: a bounded read
    whatever the number of failures."""
    failed = rows.filter(status=FileStatus.FAILED).order_by("-id").values_list("last_error", "relative_path")
    counts = Counter(reason_of(error, path) for error, path in failed[:REASON_SAMPLE])
    return [{"reason": reason, "files": files} for reason, files in
            sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]]


def session_summary(session: SyncSession) -> dict[str, Any]:
    """The session's figures for its page: counts, speed, ETA and the status line, in total and
    per destination."""
    return {
        "id": session.pk, "kind": session.kind, "status": session.status, "status_label": session.get_status_display(),
        **figures(session, session, session.status),
        "status_line": status_line(session),
        "destinations": destination_figures(session),
    }


def figures(counters: SyncSession | SessionDestination, session: SyncSession, status: str) -> dict[str, Any]:
    """Counts, bytes, progress, speed and ETA of a session or of one of its destinations."""
    duration = session.duration
    seconds = duration.total_seconds() if duration else 0.0
    transferred = counters.uploaded_count + counters.failed_count
    eta = None
    if status == SessionStatus.UPLOADING and transferred and seconds > 0:
        eta = counters.pending_count * seconds / transferred  # at the rate so far
    return {
        "found": counters.found_count, "skipped": counters.skipped_count, "pending": counters.pending_count,
        "uploaded": counters.uploaded_count, "failed": counters.failed_count, "cancelled": counters.cancelled_count,
        "bytes_total": counters.bytes_total, "bytes_uploaded": counters.bytes_uploaded,
        "progress": round(counters.progress, 1),
        "bytes_per_second": round(counters.bytes_uploaded / seconds) if seconds > 0 else 0,
        "eta_seconds": round(eta) if eta is not None else None,
    }


def destination_figures(session: SyncSession) -> list[dict[str, Any]]:
    """Each destination's name, where it is, its status and figures (a session that does not tell
    its destinations apart: one, with the session's)."""
    rows = list(session.destinations.all())
    if not rows:
        project = session.project
        return [{"name": project.destination_name, "destination": "", "status": session.status,
                 **figures(session, session, session.status)}]
    out = []
    for sd in rows:
        sd.session = session
        status = files.destination_status(sd)
        out.append({"name": sd.name, "destination": sd.identity, "status": status, **figures(sd, session, status)})
    return out


def status_line(session: SyncSession) -> str:
    """One line under the progress bar: what the session is doing beyond its counts."""
    if session.heartbeat_lost():
        return "no worker has shown life lately: the sweep will resume it"
    if pace := pacing.describe(session):
        return pace  # "throttled: sending at N/s" or why the session paused
    if session.error:
        return session.error.splitlines()[0][:REASON_CHARS]
    return ""


def session_throughput(session: SyncSession) -> dict[str, Any]:
    """Files and bytes uploaded over the session's life, in at most SESSION_POINTS buckets."""
    per_minute = list(session.files.filter(status=FileStatus.UPLOADED, uploaded_at__isnull=False).order_by()
                      .annotate(minute=TruncMinute("uploaded_at")).values("minute")
                      .annotate(files=Count("id"), bytes=Sum("size")).order_by("minute"))
    if not per_minute:
        return {"labels": [], "files": [], "bytes": []}
    first, last = per_minute[0]["minute"], per_minute[-1]["minute"]
    minutes = int((last - first).total_seconds() // 60) + 1
    width = max(1, -(-minutes // SESSION_POINTS))  # minutes per bucket
    buckets = -(-minutes // width)
    files, size = [0] * buckets, [0] * buckets
    for row in per_minute:
        i = int((row["minute"] - first).total_seconds() // 60) // width
        files[i] += row["files"]
        size[i] += row["bytes"] or 0
    labels = [_iso(first + timedelta(minutes=i * width)) for i in range(buckets)]
    return {"labels": labels, "files": files, "bytes": size, "minutes_per_point": width}


def session_detail(session: SyncSession) -> dict[str, Any]:
    return {**session_summary(session), "throughput": session_throughput(session),
            "failure_reasons": reasons(session.files.all(), 5)}


def _series(rows: list[tuple[int, datetime, int, int, int]], starts: list[datetime], step: timedelta,
            names: dict[int, str]) -> dict[str, Any]:
    index = {at: i for i, at in enumerate(starts)}
    per_project: dict[int, list[int]] = {}
    per_project_bytes: dict[int, list[int]] = {}
    failed = [0] * len(starts)
    for project_id, hour, uploaded, size, n_failed in rows:
        at = hour if step == timedelta(hours=1) else hour.replace(hour=0)
        if at not in index:
            continue
        i = index[at]
        per_project.setdefault(project_id, [0] * len(starts))[i] += uploaded
        per_project_bytes.setdefault(project_id, [0] * len(starts))[i] += size
        failed[i] += n_failed
    return {
        "labels": [_iso(at) for at in starts],
        "projects": [{"project": names[pid], "files": per_project[pid], "bytes": per_project_bytes[pid]}
                     for pid in sorted(per_project, key=lambda pid: names[pid])],
        "failed": failed,
    }


def throughput(now: datetime, names: dict[int, str]) -> dict[str, Any]:
    """Hourly for the last 24 hours and daily for the last 30 days (UTC), per project."""
    this_hour = _hour(now)
    hours = [this_hour - timedelta(hours=23 - i) for i in range(24)]
    today = this_hour.replace(hour=0)
    days = [today - timedelta(days=29 - i) for i in range(30)]
    rows = list(Throughput.objects.filter(hour__gte=days[0]).values_list(
        "project_id", "hour", "uploaded", "uploaded_bytes", "failed"))
    return {"hourly": _series(rows, hours, timedelta(hours=1), names),
            "daily": _series(rows, days, timedelta(days=1), names)}


def projects(now: datetime) -> list[dict[str, Any]]:
    today = _hour(now).replace(hour=0)
    week = _hour(now) - timedelta(days=7)
    totals: dict[int, dict[str, int]] = {}
    for key, since in (("today", today), ("week", week)):
        for pid, files, size in (Throughput.objects.filter(hour__gte=since).order_by().values("project_id")
                                 .annotate(f=Sum("uploaded"), b=Sum("uploaded_bytes")).values_list("project_id", "f", "b")):
            totals.setdefault(pid, {})[f"{key}_files"] = files or 0
            totals[pid][f"{key}_bytes"] = size or 0
    latest = {s.project_id: s for s in SyncSession.objects.filter(
        id__in=SyncSession.objects.order_by().values("project_id").annotate(last=Max("id")).values("last"))}
    out = []
    for project in Project.objects.order_by("name"):
        last = latest.get(project.pk)
        figures = totals.get(project.pk, {})
        out.append({
            "project": project.name,
            "url": reverse("admin:projects_project_change", args=[project.pk]),
            "last_session": None if last is None else {
                "id": last.pk, "status": last.status, "status_label": last.get_status_display(),
                "progress": round(last.progress, 1), "started": _iso(last.started_at or last.created_at),
                "finished": _iso(last.finished_at), "url": reverse("admin:sessions_app_syncsession_change", args=[last.pk]),
            },
            **{k: figures.get(k, 0) for k in ("today_files", "today_bytes", "week_files", "week_bytes")},
        })
    return out


def live_sessions() -> list[dict[str, Any]]:
    running = SyncSession.objects.filter(status__in=ACTIVE_STATUSES).select_related("project").order_by("-id")[:LIVE]
    return [{**session_summary(s), "project": s.project.name, "kind": s.get_kind_display(),
             "url": reverse("admin:sessions_app_syncsession_change", args=[s.pk])} for s in running]


def dashboard(now: datetime | None = None) -> dict[str, Any]:
    """Everything the Dashboard page draws, in one answer."""
    now = now or timezone.now()
    names = dict(Project.objects.values_list("id", "name"))
    recent = FileUpload.objects.filter(session__created_at__gte=now - timedelta(days=30))
    return {
        "generated_at": _iso(now),
        "projects": projects(now),
        "throughput": throughput(now, names),
        "failure_reasons": reasons(recent),
        "live": live_sessions(),
    }
