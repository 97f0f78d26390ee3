"""Hooks other parts of the product attach to (e.g. notify when a session ends)."""

from django.db import connections
from django.db.models.signals import post_migrate, pre_migrate
from django.dispatch import Signal, receiver
from django_q.models import Schedule

from sessions_app import reporting
from sessions_app.enqueue import SWEEP_TASK

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


@receiver(pre_migrate)
def drop_reporting_views(sender, using="default", **kwargs) -> None:
    """Every migration meets the tables without the views that would pin their columns."""
    if getattr(sender, "name", "") == "sessions_app":
        reporting.drop_views(connections[using])


@receiver(post_migrate)
def create_reporting_views(sender, using="default", **kwargs) -> None:
    if getattr(sender, "name", "") == "sessions_app":
        reporting.create_views(connections[using])
