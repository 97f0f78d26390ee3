"""Hooks other parts of the product attach to (e.g. notify when a session ends)."""

from django.db.models.signals import post_migrate
from django.dispatch import Signal, receiver
from django_q.models import Schedule

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
