"""LOG_FORMAT=json: one JSON object per line, with the session and project a line is about."""

from __future__ import annotations

import json
from pathlib import Path

from projects.models import Project
from sessions_app.models import SyncSession
from tests.conftest import manage, manage_env, write_files


def test_a_sync_logs_json_lines_that_name_its_session_and_project(transactional_db, tmp_path, source):
    write_files(source, {"a.wav": "a", "new\nline.wav": "b"})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"project": "json-logs", "source_dir": str(source),
                                  "destination": {"type": "local", "path": str(tmp_path / "out")}}))

    result = manage("upload", "--no-progress", "--sync", "--config", str(config),
                    env=manage_env(LOG_FORMAT="json", LOG_LEVEL="INFO"))

    assert result.returncode == 0, result.stderr
    session = SyncSession.objects.get(project=Project.objects.get(name="json-logs"))
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    about = [line for line in lines if line.get("session_id") == session.pk]
    assert about, result.stderr
    assert all(line["project_id"] == session.project_id for line in about)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("scanned 2 files" in line["message"] for line in about)
    # Every line of the log is one object: nothing a file name holds splits one.
    assert not [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("{")
                and not line.startswith(("Session", "session", "Uploaded", "uploaded", "Done"))], result.stderr


def test_an_unknown_log_format_stops_the_start_with_one_message(tmp_path):
    result = manage("check", env=manage_env(LOG_FORMAT="xml"))
    assert result.returncode != 0
    assert "LOG_FORMAT must be plain or json, not 'xml'" in result.stderr
