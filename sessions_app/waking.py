"""Drainers of the upload queue: a producer's file wakes one unless one showed life lately, and a
drainer that runs dry looks once more before it leaves, so no queued file is left without one."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from sessions_app import enqueue, files
from sessions_app.errors import EnqueueError
from sessions_app.models import SessionStatus, SyncSession

log = logging.getLogger(__name__)


def wake(session: SyncSession) -> bool:
    """Queue an upload task for the session, unless a drainer showed life (or was queued) lately."""
    now = timezone.now()
    quiet = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - timedelta(seconds=settings.QUEUE_WAKE_SECONDS))
    if not SyncSession.objects.filter(quiet, pk=session.pk, status=SessionStatus.UPLOADING).update(heartbeat_at=now):
        return False
    try:
        enqueue.uploads(session.pk, 1)
    except EnqueueError as exc:
        # The file is safe in its row; let the next producer (or the sweep) try again at once.
        SyncSession.objects.filter(pk=session.pk, heartbeat_at=now).update(heartbeat_at=None)
        log.warning("upload queue of session %s: %s", session.pk, exc)
        return False
    return True


def went_idle(session: SyncSession) -> None:
    """Called by a drainer that found nothing left: clear the heartbeat, then look once more, so a
    file queued meanwhile (whose producer still saw the heartbeat fresh) gets a drainer."""
    SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=None)
    if files.has_pending(session):
        wake(session)
