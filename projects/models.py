from __future__ import annotations

import difflib
import hashlib
import json
import secrets
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from projects.destinations import KINDS, ConfigError, Destination, build_destination, destination_class
from projects.outbound import redact_url
from projects.schema import KEYS, NotifyOn, config_of


def _default(key: str) -> Any:
    return KEYS[key].default


class ProjectGone(Exception):
    """Rows of a project were being written while it (or the session) was deleted: rolled back."""


class ProjectQuerySet(models.QuerySet):
    """A project's file rows and catalog entries have no database foreign key to their session
    or catalog: a check per row at each commit was nearly a third of a first sync's PostgreSQL
    time. Instead a transaction writing such rows holds its project's row (`hold`), and a
    deletion of projects or sessions locks the projects' rows before it gathers what to delete
    (`delete`, `lock_for_delete`): the deletion waits for the writes under way, and gathers their
    rows; a write that comes after it finds the project gone and is rolled back. Either way no
    row outlives its session. (On SQLite every write transaction begins with the database's
    write lock: the deletion's lock is that.)"""

    def hold(self) -> None:
        """Inside a transaction writing rows of the project (the one this picks): its row, held
        (KEY SHARE) until the commit; raises ProjectGone if it was deleted."""
        sql, params = self.values("pk").query.sql_with_params()
        if connection.vendor == "postgresql":
            sql += " FOR KEY SHARE"
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.fetchone() is None:
                raise ProjectGone("the project was deleted meanwhile: its rows were not written")

    def lock_for_delete(self) -> None:
        """Inside the deleting transaction, before anything is gathered: the projects' rows locked
        (FOR UPDATE), once the writes holding them are committed."""
        list(self.select_for_update().values_list("pk", flat=True))

    def delete(self) -> tuple[int, dict[str, int]]:
        with transaction.atomic(using=self.db):
            self.lock_for_delete()
            return super().delete()

    delete.alters_data = True
    delete.queryset_only = True


class Project(models.Model):
    """A project's config as columns; what each key means, its type, default and limits live in
    projects/schema.py, which validates every value before it gets here."""

    NotifyOn = NotifyOn
    objects = ProjectQuerySet.as_manager()

    name = models.CharField(max_length=200, unique=True)
    source_dir = models.CharField(max_length=1024)
    # The first destination: its name (a single `destination` key is named "default"), kind and
    # options. More destinations are ProjectDestination rows (the `destinations` key).
    destination_name = models.CharField(max_length=64, default="default")
    destination_kind = models.CharField(max_length=32)
    destination_options = models.JSONField(default=dict, blank=True)
    extensions = models.JSONField(default=list, blank=True)
    exclude = models.JSONField(default=list, blank=True)
    follow_symlinks = models.BooleanField(default=_default("follow_symlinks"))
    upload_workers = models.PositiveIntegerField(default=_default("upload_workers"))
    upload_tasks = models.PositiveIntegerField(default=_default("upload_tasks"))
    max_retries = models.PositiveIntegerField(default=_default("max_retries"))
    throttle_patience = models.FloatField(default=_default("throttle_patience"))
    preflight_timeout = models.FloatField(default=_default("preflight_timeout"))
    retry_backoff_base = models.FloatField(default=_default("retry_backoff_base"))
    retry_backoff_cap = models.FloatField(default=_default("retry_backoff_cap"))
    notify_url = models.CharField(max_length=2000, blank=True, default="")
    notify_url_env = models.CharField(max_length=200, blank=True, default="")
    notify_on = models.CharField(max_length=16, choices=NotifyOn.choices, default=_default("notify_on"))
    notify_secret_env = models.CharField(max_length=200, blank=True, default="")
    notify_timeout = models.FloatField(default=_default("notify_timeout"))
    queue_limit = models.PositiveIntegerField(default=_default("queue_limit"))
    check_destination_every = models.FloatField(null=True, blank=True, default=_default("check_destination_every"))
    thumbnail_size = models.PositiveIntegerField(default=_default("thumbnail_size"))
    thumbnail_prefix = models.CharField(max_length=1024, blank=True, default=_default("thumbnail_prefix"))
    upload_max_file_mb = models.PositiveIntegerField(null=True, blank=True, default=None)
    upload_quota_mb = models.PositiveIntegerField(null=True, blank=True, default=None)
    api_token_hash = models.CharField(max_length=128, blank=True, default="", editable=False)
    # The last destination health check (sessions_app.health); None: never checked.
    health_ok = models.BooleanField(null=True, editable=False)
    health_message = models.CharField(max_length=500, blank=True, default="", editable=False)
    health_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("start_sync", "Can start a sync session")]

    def __str__(self) -> str:
        return self.name

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Under its row's lock (ProjectQuerySet)."""
        with transaction.atomic():
            Project.objects.filter(pk=self.pk).lock_for_delete()
            return super().delete(*args, **kwargs)

    def destination(self) -> Destination:
        return build_destination(self.destination_kind, self.destination_options)

    def destination_specs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, kind, options) of every destination, the first one first."""
        first = (self.destination_name or "default", self.destination_kind, self.destination_options)
        if self.pk is None or hasattr(self, "unsaved_extras"):  # a config not applied yet (config.unsaved_project)
            return [first, *getattr(self, "unsaved_extras", [])]
        return [first, *((d.name, d.kind, d.options) for d in self.extra_destinations.all())]

    def destination_names(self) -> list[str]:
        return [name for name, _, _ in self.destination_specs()]

    def destination_named(self, name: str) -> Destination:
        for spec_name, kind, options in self.destination_specs():
            if spec_name == name:
                return build_destination(kind, options)
        raise ConfigError(f"project {self.name}: no destination named {name!r} "
                          f"(it has: {', '.join(self.destination_names())})")

    def last_session(self):  # -> SyncSession | None
        return self.sessions.order_by("-id").first()

    def describe_destination(self, name: str | None = None) -> dict[str, Any]:
        """Where files go (to the destination of that name; None: the first), from the stored options
        alone: no client is built, nothing is patched."""
        specs = self.destination_specs() if name else [(None, self.destination_kind, self.destination_options)]
        kind, options = next(((k, o) for n, k, o in specs if n == name), (None, None))
        if kind not in KINDS or not isinstance(options, dict):
            return {"kind": kind}
        return destination_class(kind).describe_options(options)

    def effective_config(self) -> dict[str, Any]:
        """The config as stored in ConfigHistory: options only name secrets, never hold them."""
        specs = [(name, kind, destination_class(kind).redact_options(options))
                 for name, kind, options in self.destination_specs()]
        config = config_of(self, specs)
        config["notify_url"] = redact_url(config["notify_url"]) if config["notify_url"] else None
        return config

    def record_config(self, source: str, created_by: str = "") -> ConfigHistory:
        """Store the effective config when it differs from the last recorded one; return the current row."""
        config = self.effective_config()
        last = self.config_history.order_by("-id").first()
        if last is not None and last.config == config:
            return last
        return ConfigHistory.objects.create(project=self, config=config, source=source, created_by=created_by)

    def issue_api_token(self) -> str:
        """A new token for the upload-queue API; only its hash is kept."""
        token = secrets.token_urlsafe(32)
        self.api_token_hash = hash_token(token)
        self.save(update_fields=["api_token_hash", "updated_at"])
        return token

    def check_api_token(self, token: str) -> bool:
        return bool(self.api_token_hash) and secrets.compare_digest(self.api_token_hash, hash_token(token))

    def record_health(self, ok: bool, message: str) -> None:
        """Store a health check's outcome without touching updated_at (it is not a config change)."""
        self.health_ok, self.health_message, self.health_checked_at = ok, message[:500], timezone.now()
        Project.objects.filter(pk=self.pk).update(
            health_ok=ok, health_message=self.health_message, health_checked_at=self.health_checked_at
        )


class ProjectDestination(models.Model):
    """A project's second, third... destination (the first is on the project's own columns):
    named, with its kind and options, validated by its kind like the first one."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="extra_destinations")
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=32)
    options = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="unique_destination_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConfigHistory(models.Model):
    class Source(models.TextChoices):
        FILE = "file", "Config file"
        COMMAND_LINE = "command_line", "Command line"
        ADMIN = "admin", "Admin"
        API = "api", "API"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="config_history")
    config = models.JSONField()
    source = models.CharField(max_length=20, choices=Source.choices)
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "config history"

    def __str__(self) -> str:
        return f"{self.project.name} config #{self.pk}"

    def previous(self) -> ConfigHistory | None:
        return ConfigHistory.objects.filter(project_id=self.project_id, id__lt=self.id).order_by("-id").first()

    def diff_from_previous(self) -> str:
        prev = self.previous()
        old = json.dumps(prev.config, indent=2, sort_keys=True).splitlines() if prev else []
        new = json.dumps(self.config, indent=2, sort_keys=True).splitlines()
        label = f"config #{prev.pk}" if prev else "(nothing)"
        return "\n".join(difflib.unified_diff(old, new, label, f"config #{self.pk}", lineterm=""))
