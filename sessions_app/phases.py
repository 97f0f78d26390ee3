"""A browser upload's two phases as its page and GET /api/sessions/ID/ show them:
receiving (bytes still arriving), processing (checks, thumbnails, sends), done."""

from __future__ import annotations

from typing import Any

from django.db.models import Sum

from sessions_app.models import Arrival, FileStatus, FileUpload, SyncSession


def phase(session: SyncSession) -> str:
    if not session.is_active:
        return "done"
    return "receiving" if session.files.filter(status=FileStatus.RECEIVING).exists() else "processing"


def progress(session: SyncSession) -> dict[str, Any]:
    """Both phases' figures for GET /api/sessions/ID/."""
    rows = FileUpload.objects.filter(session=session)
    received = Arrival.objects.filter(file__session=session, received_at__isnull=False)
    bytes_received = Arrival.objects.filter(file__session=session).aggregate(n=Sum("offset"))["n"] or 0
    settled = session.settled_count
    return {
        "phase": phase(session),
        "receiving": rows.filter(status=FileStatus.RECEIVING).count(),
        "received": received.count(),
        "refused": session.params.get("refused", 0),
        "bytes_received": bytes_received,
        "received_percent": round(100.0 * bytes_received / session.bytes_total, 1) if session.bytes_total else 100.0,
        "processed": settled,
        "processed_percent": round(session.progress, 1),
    }
