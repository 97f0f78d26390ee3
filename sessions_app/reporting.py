"""The SQL views seed-level users query from Grafana's PostgreSQL (or SQLite) data source
(README "Observability").

A view pins the columns it reads: PostgreSQL refuses to change their type and SQLite fails to
rebuild their table while it exists. So the views are not made by a migration: they are dropped
before every `migrate` (pre_migrate) and made again after it (post_migrate), and every migration of
any app meets the tables alone.
"""

from __future__ import annotations

from typing import Any

VIEWS = {
    # Per day and project: files and bytes uploaded, files failed (from the hourly throughput).
    "uploader_daily_uploads": """
        SELECT {day} AS day, p.name AS project, SUM(t.uploaded) AS files, SUM(t.uploaded_bytes) AS bytes,
               SUM(t.failed) AS failed
        FROM sessions_app_throughput t JOIN projects_project p ON p.id = t.project_id
        GROUP BY {day}, p.name""",
    # Per hour and project, as stored.
    "uploader_hourly_uploads": """
        SELECT t.hour AS hour, p.name AS project, t.uploaded AS files, t.uploaded_bytes AS bytes,
               t.failed AS failed
        FROM sessions_app_throughput t JOIN projects_project p ON p.id = t.project_id""",
    # Failed files by project and reason (the error's first line, 200 characters): ORDER BY files DESC LIMIT N.
    "uploader_failure_reasons": """
        SELECT p.name AS project, SUBSTR(f.last_error, 1, 200) AS reason, COUNT(*) AS files,
               MAX(f.created_at) AS last_seen
        FROM sessions_app_fileupload f JOIN projects_project p ON p.id = f.project_id
        WHERE f.status = 'failed'
        GROUP BY p.name, SUBSTR(f.last_error, 1, 200)""",
}


def drop_views(connection: Any) -> None:
    with connection.cursor() as cursor:
        for name in VIEWS:
            cursor.execute(f"DROP VIEW IF EXISTS {name}")


def create_views(connection: Any) -> bool:
    """(Re)make the views; False while a table they read is missing (migrated backwards)."""
    tables = set(connection.introspection.table_names())
    if not {"sessions_app_throughput", "sessions_app_fileupload", "projects_project"} <= tables:
        return False
    drop_views(connection)
    day = "CAST(t.hour AS date)" if connection.vendor == "postgresql" else "date(t.hour)"
    with connection.cursor() as cursor:
        for name, sql in VIEWS.items():
            cursor.execute(f"CREATE VIEW {name} AS {sql.format(day=day)}")
    return True
