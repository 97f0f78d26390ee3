"""Small pieces of admin HTML shared by the session and project pages."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.timesince import timesince

from sessions_app.models import SyncSession


def progress_bar(percent: float, failed: bool = False) -> str:
    colour = "#ba2121" if failed else "#417690"
    return format_html(
        '<div style="width:120px;background:#eee;border-radius:3px" title="{}%">'
        '<div style="width:{}%;background:{};height:10px;border-radius:3px"></div></div>'
        '<small>{}%</small>',
        f"{percent:.1f}", f"{percent:.1f}", colour, f"{percent:.1f}",
    )


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def last_session(session: SyncSession | None, url: str) -> str:
    """A project's last session in a list: link, status, progress bar and age."""
    if session is None:
        return "-"
    when = session.finished_at or session.started_at or session.created_at
    return format_html('<a href="{}">#{} {}</a>{}<small> · {} ago</small>', url, session.pk,
                       session.get_status_display(), progress_bar(session.progress, failed=bool(session.failed_count)),
                       timesince(when))
