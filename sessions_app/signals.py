"""Hooks other parts of the product attach to (e.g. notify when a session ends)."""

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate
from django.dispatch import Signal, receiver
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Schedule
from django_q.signals import post_spawn

from sessions_app import enqueue, reporting
from sessions_app.enqueue import SWEEP_TASK

log = logging.getLogger(__name__)

# Sent once, by the caller that moved the session to its final status; kwargs: session.
session_finished = Signal()

SWEEP_SCHEDULE = "uploader: resume stale sessions"


@receiver(post_migrate)
def install_sweep_schedule(sender, **kwargs) -> None:
    """Every minute, resume sessions whose workers vanished (the broker may have lost them)."""
    if getattr(sender, "name", "") != "sessions_app":
        return
    Schedule.objects.update_or_create(
        name=SWEEP_SCHEDULE,
        defaults={"func": SWEEP_TASK, "schedule_type": Schedule.MINUTES, "minutes": 1,
                  "repeats": -1},
    )


@receiver(post_spawn)
def recover_at_cluster_start(sender, proc_name: str = "", **kwargs) -> None:
    """django-q2 sends post_spawn from each worker process it starts (at the cluster's start, and
    when it replaces a dead worker): the first of them queues a recovery, which resumes what a
    killed cluster left as soon as its leases run out. Not with sync=True: no cluster starts there,
    each task runs in the caller's process, which sends post_spawn for every one of them."""
    if Conf.SYNC:
        return
    try:
        if cache.add("uploader:recover-at-start", proc_name, timeout=max(1, settings.LEASE_SECONDS // 3)):
            enqueue.recover(timezone.now())
    except Exception:  # the broker or cache away: the sweep schedule recovers later
        log.warning("recovery at cluster start not queued", exc_info=True)


@receiver(pre_migrate)
def drop_reporting_views(sender, using="default", **kwargs) -> None:
    """Every migration meets the tables without the views that would pin their columns."""
    if getattr(sender, "name", "") == "sessions_app":
        reporting.drop_views(connections[using])


@receiver(post_migrate)
def create_reporting_views(sender, using="default", **kwargs) -> None:
    if getattr(sender, "name", "") == "sessions_app":
        reporting.create_views(connections[using])
