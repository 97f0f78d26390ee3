"""What follows the end of a session or of a retry round (the `session_finished` signal, sent
once by sessions_app.lifecycle): give up on exhausted files, schedule the next automatic round,
or else notify the project's endpoint. Registered in SessionsAppConfig.ready()."""

from __future__ import annotations

import logging

from django.dispatch import receiver

from sessions_app import notifying, retrying
from sessions_app.models import SyncSession
from sessions_app.signals import session_finished

log = logging.getLogger(__name__)


@receiver(session_finished, dispatch_uid="sessions_app.followups.after_session_end")
def after_session_end(sender, session: SyncSession, **kwargs) -> None:
    """Never raises: the caller is an upload task."""
    try:
        retrying.give_up_exhausted(session)
        if retrying.schedule_next_round(session):
            return
        notifying.queue_automatic(session)
    except Exception:
        log.exception("after the end of session %s", session.pk)
        SyncSession.objects.filter(pk=session.pk).update(auto_retry=False, next_retry_at=None)
