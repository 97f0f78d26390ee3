"""Is anybody there? Whether each destination answers, and whether a qcluster is alive to upload.
Shown in the admin (projects) and in the uploader stats.

Destination checks go through `Destination.health()`; the sweep has SFTP destinations checked
every HEALTH_CHECK_SECONDS, each in its own task (a dead host takes its connect timeout).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django_q.conf import Conf
from django_q.status import Stat

from projects.destinations import ConfigError
from projects.models import Project
from sessions_app import enqueue
from sessions_app.errors import EnqueueError

log = logging.getLogger(__name__)

# Checked by the sweep. S3 and Roboflow are managed services whose outages show in the uploads
# themselves, and a Roboflow check spends API calls.
PERIODIC_KINDS = ("sftp",)


def check_destination(project: Project) -> tuple[bool, str]:
    """Ask the destination whether it answers now; record and return (ok, message)."""
    try:
        dest = project.destination()
    except ConfigError as exc:
        ok, message = False, str(exc)
    else:
        try:
            with dest:
                ok, message = dest.health()
        except Exception as exc:  # a bug in a backend must not hide the answer
            log.exception("health check of %s", project.name)
            ok, message = False, f"unexpected error: {type(exc).__name__}: {exc}"
    project.record_health(ok, message)
    return ok, message


def check_project(project_id: int) -> str:
    project = Project.objects.get(pk=project_id)
    ok, message = check_destination(project)
    return f"{project.name}: {'ok' if ok else 'not answering: ' + message}"


def enqueue_due_checks() -> list[str]:
    """For the sweep: queue a check of each destination not checked for HEALTH_CHECK_SECONDS."""
    now = timezone.now()
    due = Q(health_checked_at__isnull=True) | Q(
        health_checked_at__lt=now - timedelta(seconds=settings.HEALTH_CHECK_SECONDS)
    )
    done = []
    for project in Project.objects.filter(due, destination_kind__in=PERIODIC_KINDS):
        # Claimed by moving the time on, so a slow check is not queued again by the next sweep.
        if Project.objects.filter(pk=project.pk, health_checked_at=project.health_checked_at).update(
            health_checked_at=now
        ):
            try:
                enqueue.health_check(project.pk)
            except EnqueueError as exc:
                log.warning("%s", exc)
                continue
            done.append(f"{project.name}: destination check queued")
    return done


def destination_health(project: Project) -> dict[str, object]:
    return {
        "kind": project.destination_kind,
        "ok": project.health_ok,
        "message": project.health_message,
        "checked_at": project.health_checked_at,
    }


def cluster_running() -> bool:
    """A qcluster is alive: its sentinel refreshed its status in the shared cache in the last
    few seconds (django-q2 keeps it 3 s) and it is not stopping."""
    return clusters_alive() > 0


def clusters_alive() -> int:
    """How many qclusters refreshed their status in the shared cache lately and are not stopping."""
    try:
        stats = Stat.get_all()
    except Exception:
        log.warning("cannot read the cluster status from the cache", exc_info=True)
        return 0
    return sum(1 for s in stats if str(s.status) not in (str(Conf.STOPPING), str(Conf.STOPPED)))
