"""System checks (`manage.py check`; `check --database default` also reads the projects): timing
settings that would make a task run twice or be killed mid-upload, a scan batch size that would
plan nothing, and secrets that projects name but this process's environment lacks."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import DatabaseError

from projects.models import Project
from projects.schema import SECRET_ENV_OPTIONS


@register("uploader")
def check_task_timing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    cluster = getattr(settings, "Q_CLUSTER", {})
    timeout, retry = cluster.get("timeout"), cluster.get("retry")
    if not timeout:
        return []
    found: list[CheckMessage] = []
    if retry is not None and retry <= timeout:
        found.append(Error(
            f"Q_CLUSTER['retry'] ({retry} s) is not longer than Q_CLUSTER['timeout'] ({timeout} s).",
            hint="The broker hands a task to another worker after `retry` seconds: one still running within its "
                 "timeout would run twice. Set Q_RETRY above Q_TIMEOUT.",
            id="projects.E001"))
    task_seconds = getattr(settings, "UPLOAD_TASK_SECONDS", 0)
    if task_seconds >= timeout:
        found.append(Error(
            f"UPLOAD_TASK_SECONDS ({task_seconds:g} s) is not shorter than Q_CLUSTER['timeout'] ({timeout} s).",
            hint="An upload task hands over to a successor after UPLOAD_TASK_SECONDS; the cluster kills a task at "
                 "its timeout, mid-upload. Set UPLOAD_TASK_SECONDS well below Q_TIMEOUT.",
            id="projects.E002"))
    return found


@register("uploader")
def check_scan_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    size = getattr(settings, "SCAN_BATCH_SIZE", 1)
    if isinstance(size, int) and size >= 1:
        return []
    return [Error(
        f"SCAN_BATCH_SIZE ({size!r}) is not a whole number of at least 1.",
        hint="It is how many files a scan writes per transaction; unset, it is 40000 on PostgreSQL and 5000 on "
             "SQLite.",
        id="projects.E003")]


@register("uploader")
def check_project_secrets(app_configs: Any = None, databases: list[str] | None = None,
                          **kwargs: Any) -> list[CheckMessage]:
    if not databases or "default" not in databases:
        return []  # reads the database: only when asked to (check --database default, migrate)
    try:
        projects = list(Project.objects.only("name", "destination_kind", "destination_options",
                                             "notify_secret_env"))
    except DatabaseError:
        return []  # not migrated yet: no projects to check
    return [missing_secret(project, label, name)
            for project in projects for label, name in secret_names(project) if name not in os.environ]


def secret_names(project: Project) -> list[tuple[str, str]]:
    """(setting, variable name) of every environment variable the project reads a secret from."""
    names = [(f"destination.{option}", project.destination_options.get(option)) for option in SECRET_ENV_OPTIONS]
    names.append(("notify_secret_env", project.notify_secret_env))
    return [(label, name) for label, name in names if isinstance(name, str) and name]


def missing_secret(project: Project, label: str, name: str) -> Warning:
    return Warning(
        f"Project {project.name!r}: {label} names the environment variable {name}, which is not set.",
        hint=f"Set {name} in the environment of the qcluster workers and the commands. This check sees only "
             "the environment of the process that runs it.",
        obj=project, id="projects.W001")
