"""Where a browser upload's bytes wait (named by the file's row id, never by the name the browser
sent) and where the thumbnails the admin shows are kept. A leaf."""

from __future__ import annotations

import os

from django.conf import settings


def upload_path(session_id: int, file_id: int) -> str:
    return os.path.join(settings.UPLOAD_STAGING_DIR, str(session_id), str(file_id))


def thumbnail_path(session_id: int, file_id: int) -> str:
    return os.path.join(settings.THUMBNAIL_DIR, str(session_id), f"{file_id}.webp")


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
