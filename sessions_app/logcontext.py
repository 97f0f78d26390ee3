"""Which session and project a log line is about, and LOG_FORMAT=json: one JSON object per line.

`about_session` marks a function whose first argument is a session id (a scan, a drain): every
line logged while it runs, in its thread, carries `session_id` and `project_id`. A call may also
name them itself: `log.info(..., extra={"session_id": ...})`. Loaded by the logging set-up,
before the apps: nothing here imports a model at import time.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any, TypeVar

CONTEXT: ContextVar[dict[str, int]] = ContextVar("uploader_log_context", default={})
IDS = ("session_id", "project_id")
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def about(**ids: int) -> Iterator[None]:
    token = CONTEXT.set({**CONTEXT.get(), **ids})
    try:
        yield
    finally:
        CONTEXT.reset(token)


def about_session(func: F) -> F:
    @functools.wraps(func)
    def wrapper(session_id: int, *args: Any, **kwargs: Any) -> Any:
        from sessions_app.models import SyncSession

        project_id = SyncSession.objects.filter(pk=session_id).values_list("project_id", flat=True).first()
        ids = {"session_id": session_id} | ({"project_id": project_id} if project_id is not None else {})
        with about(**ids):
            return func(session_id, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids it is about, and the
    traceback if any. json.dumps escapes control characters, so a file name cannot split a line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = CONTEXT.get()
        for name in IDS:
            value = getattr(record, name, None) or context.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)
