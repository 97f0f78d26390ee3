"""What the browser-upload tests share: tus headers, a staging folder, a project to drop into."""
from __future__ import annotations

from pathlib import Path

import pytest

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


@pytest.fixture(autouse=True)
def staging(settings, tmp_path: Path) -> Path:
    settings.UPLOAD_STAGING_DIR = tmp_path / "staging"
    settings.THUMBNAIL_DIR = tmp_path / "thumbnails"
    return settings.UPLOAD_STAGING_DIR
