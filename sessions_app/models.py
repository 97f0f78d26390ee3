from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.urls import reverse
from django.utils import timezone

from projects.models import ConfigHistory, Project


class SessionStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SCANNING = "scanning", "Scanning"
    UPLOADING = "uploading", "Uploading"
    COMPLETED = "completed", "Completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors", "Completed with errors"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (SessionStatus.QUEUED, SessionStatus.SCANNING, SessionStatus.UPLOADING)
ENDED_STATUSES = (
    SessionStatus.COMPLETED,
    SessionStatus.COMPLETED_WITH_ERRORS,
    SessionStatus.FAILED,
    SessionStatus.CANCELLED,
)


class FileStatus(models.TextChoices):
    RECEIVING = "receiving", "Receiving"  # a browser upload's bytes are still arriving
    PENDING = "pending", "Pending"
    UPLOADING = "uploading", "Uploading"
    UPLOADED = "uploaded", "Uploaded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"


class Counters(models.Model):
    """The file counters of a session, or of one destination of it, and how far they have
    settled. Written only by sessions_app.files, in the transaction that moves the rows."""

    found_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    pending_count = models.PositiveIntegerField(default=0)
    uploaded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    cancelled_count = models.PositiveIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_uploaded = models.BigIntegerField(default=0)
    # Files the plan found already done are counted, not stored: {reason: files}, and their bytes.
    skips = models.JSONField(default=dict, blank=True)
    skipped_bytes = models.BigIntegerField(default=0)

    class Meta:
        abstract = True

    def has_ended(self) -> bool:
        raise NotImplementedError

    @property
    def settled_count(self) -> int:
        return self.uploaded_count + self.failed_count + self.skipped_count + self.cancelled_count

    @property
    def progress(self) -> float:
        """Percent of found files that are settled."""
        if not self.found_count:
            return 100.0 if self.has_ended() else 0.0
        return min(100.0, 100.0 * self.settled_count / self.found_count)


class SyncSessionQuerySet(models.QuerySet):
    def delete(self) -> tuple[int, dict[str, int]]:
        """Under their projects' rows' lock: no file row of theirs is being written meanwhile
        (projects.models.ProjectQuerySet)."""
        with transaction.atomic(using=self.db):
            Project.objects.filter(pk__in=self.values("project_id")).lock_for_delete()
            return super().delete()

    delete.alters_data = True
    delete.queryset_only = True


class SyncSession(Counters):
    objects = SyncSessionQuerySet.as_manager()

    class Kind(models.TextChoices):
        SYNC = "sync", "Folder sync"
        STREAM = "stream", "Upload queue"
        IMPORT = "import", "Import"
        BROWSER = "browser", "Browser upload"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="sessions")
    config = models.ForeignKey(ConfigHistory, on_delete=models.PROTECT, null=True, blank=True, related_name="sessions")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SYNC)
    status = models.CharField(max_length=24, choices=SessionStatus.choices, default=SessionStatus.QUEUED)
    # Parameters of this run that are not project config (e.g. an import's source).
    params = models.JSONField(default=dict, blank=True)

    scan_problems = models.PositiveIntegerField(default=0)
    # Folders the scan could not list: files it could not see are files not synced (ends with errors).
    unread_folders = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    scan_finished_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    log = models.TextField(blank=True, default="", help_text="scan problems and other notes")
    created_by = models.CharField(max_length=150, blank=True, default="")

    retry_round = models.PositiveIntegerField(default=0)
    auto_retry = models.BooleanField(default=False)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    # A digest of (project, destination identity) for kinds that hold the lease (kinds.Kind.lease):
    # at most one active session per value, enforced by the database.
    lease = models.CharField(max_length=64, null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            models.UniqueConstraint(fields=["lease"], condition=models.Q(status__in=ACTIVE_STATUSES),
                                    name="one_active_session_per_lease"),
        ]
        permissions = [
            ("retry_syncsession", "Can retry failed files"),
            ("notify_syncsession", "Can notify endpoints"),
            ("cancel_syncsession", "Can cancel sessions"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.project.name} ({self.status})"

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Under its project's row's lock (SyncSessionQuerySet.delete)."""
        with transaction.atomic():
            Project.objects.filter(pk=self.project_id).lock_for_delete()
            return super().delete(*args, **kwargs)

    # -- guarded transitions -------------------------------------------------------------------
    def _move(self, allowed: tuple[str, ...], status: str, **fields: Any) -> bool:
        """Optimistic transition: only one caller wins when several race."""
        fields["status"] = status
        won = SyncSession.objects.filter(pk=self.pk, status__in=allowed).update(**fields) == 1
        self.refresh_from_db()
        return won

    def mark_scanning(self) -> bool:
        now = timezone.now()
        return self._move((SessionStatus.QUEUED,), SessionStatus.SCANNING, started_at=now, heartbeat_at=now)

    def mark_scan_finished(self) -> bool:
        now = timezone.now()
        return self._move(
            (SessionStatus.SCANNING,), SessionStatus.UPLOADING, scan_finished_at=now, heartbeat_at=now
        )

    def mark_cancelled(self) -> bool:
        """Stop a running session; finished_at is set once its last transfer has settled."""
        return self._move(ACTIVE_STATUSES, SessionStatus.CANCELLED, finished_at=None, auto_retry=False,
                          next_retry_at=None)

    # The three below end a session: only sessions_app.lifecycle calls them, and announces the end.
    def mark_failed(self, error: str) -> bool:
        return self._move(ACTIVE_STATUSES, SessionStatus.FAILED, error=error[:10000], finished_at=timezone.now())

    def mark_completed(self, with_errors: bool) -> bool:
        status = SessionStatus.COMPLETED_WITH_ERRORS if with_errors else SessionStatus.COMPLETED
        return self._move((SessionStatus.UPLOADING,), status, finished_at=timezone.now())

    def mark_cancel_settled(self) -> bool:
        """A cancelled session's last transfer has settled: it ends now (once)."""
        won = SyncSession.objects.filter(
            pk=self.pk, status=SessionStatus.CANCELLED, finished_at__isnull=True
        ).update(finished_at=timezone.now()) == 1
        self.refresh_from_db()
        return won

    def reopen(self) -> bool:
        """Back to uploading for a retry round (from any ended status but failed-before-scan)."""
        return self._move(
            (SessionStatus.COMPLETED, SessionStatus.COMPLETED_WITH_ERRORS, SessionStatus.CANCELLED,
             SessionStatus.FAILED),
            SessionStatus.UPLOADING,
            finished_at=None,
            heartbeat_at=timezone.now(),
            error="",
        ) if self.scan_finished_at else False

    def touch(self) -> None:
        SyncSession.objects.filter(pk=self.pk).update(heartbeat_at=timezone.now())

    def take_over(self) -> bool:
        """Renew the heartbeat if nobody did since this instance was read: of several sweeps that
        found the session stale, only the one that wins resumes it."""
        now = timezone.now()
        won = SyncSession.objects.filter(pk=self.pk, heartbeat_at=self.heartbeat_at).update(heartbeat_at=now) == 1
        if won:
            self.heartbeat_at = now
        return won

    # -- questions -------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def heartbeat_age(self) -> timedelta:
        """Time since a worker last showed a sign of life (or since the session was created)."""
        return timezone.now() - (self.heartbeat_at or self.created_at)

    def heartbeat_lost(self) -> bool:
        """Active, but no worker has shown a sign of life for SESSION_STALE_SECONDS."""
        return self.is_active and self.heartbeat_age() > timedelta(seconds=settings.SESSION_STALE_SECONDS)

    def has_ended(self) -> bool:
        return self.status in ENDED_STATUSES

    @property
    def duration(self) -> timedelta | None:
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def bytes_per_second(self) -> float:
        d = self.duration
        if not d or d.total_seconds() <= 0:
            return 0.0
        return self.bytes_uploaded / d.total_seconds()

    def unstored_skips(self) -> int:
        """Files skipped without a row (counted in `skips`)."""
        return sum(self.skips.values())

    def append_log(self, line: str) -> None:
        SyncSession.objects.filter(pk=self.pk).update(
            log=models.functions.Concat(models.F("log"), models.Value(line.rstrip("\n") + "\n"))
        )

    def admin_url(self) -> str:
        return settings.SITE_URL.rstrip("/") + reverse("admin:sessions_app_syncsession_change", args=[self.pk])


class FileUpload(models.Model):
    # No index of its own: file_session_status and unique_file_per_session begin with it. Every index
    # is written three times per file (insert, claim, outcome).
    # No database constraint either: a check per row at each commit; the project's row is held
    # instead (projects.models.ProjectQuerySet).
    session = models.ForeignKey(SyncSession, on_delete=models.CASCADE, related_name="files", db_index=False,
                                db_constraint=False)
    # The session's project, copied onto the row for the project's queries. No database constraint
    # (see `session`; Django's delete still cascades).
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="files", db_constraint=False)
    relative_path = models.CharField(max_length=4096)
    # The project destination (by name) this row sends the file to: one row per file and destination.
    destination = models.CharField(max_length=64, default="default")
    remote_key = models.CharField(max_length=4096, blank=True, default="")
    size = models.BigIntegerField(default=0)
    mtime = models.FloatField(default=0)
    # The file's identity when scanned or queued (walking.identity_of); the upload opens only that file.
    device = models.BigIntegerField(null=True, blank=True)
    inode = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=FileStatus.choices, default=FileStatus.PENDING)
    skip_reason = models.CharField(max_length=100, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0, help_text="transfer attempts, all rounds")
    retries = models.PositiveIntegerField(default=0, help_text="retry rounds this file was queued in")
    last_error = models.TextField(blank=True, default="")
    error_permanent = models.BooleanField(default=False)
    uploaded_at = models.DateTimeField(null=True, blank=True)
    checksum = models.CharField(max_length=200, blank=True, default="")
    remote_id = models.CharField(max_length=200, blank=True, default="")
    note = models.CharField(max_length=500, blank=True, default="")
    tag = models.CharField(max_length=200, blank=True, default="")
    # The claim of the task uploading it; a crash leaves it set and the resume checks the remote.
    claim_token = models.UUIDField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    verify_remote = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["session", "destination", "relative_path"],
                                    name="unique_file_per_session_destination"),
        ]
        indexes = [
            models.Index(fields=["session", "status", "id"], name="file_session_status"),
        ]

    def __str__(self) -> str:
        return self.relative_path

    @property
    def retryable(self) -> bool:
        return self.status == FileStatus.FAILED and not self.error_permanent


class SessionDestination(Counters):
    """One destination of a sync session and its counters (the session's own counters are the
    totals over its destinations); its status is read from the counters (files.destination_status)."""

    session = models.ForeignKey(SyncSession, on_delete=models.CASCADE, related_name="destinations")
    name = models.CharField(max_length=64)
    identity = models.CharField(max_length=2000, blank=True, default="", help_text="e.g. s3://bucket/prefix")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["session", "name"], name="unique_session_destination")]

    def __str__(self) -> str:
        return self.name

    def has_ended(self) -> bool:
        return self.session.status in ENDED_STATUSES


class Arrival(models.Model):
    """The bytes of one browser-uploaded file (a tus upload), staged on the web machine (staging.py).
    Its upload id is the capability in its upload url. Verbs in sessions_app/receiving.py."""

    file = models.OneToOneField(FileUpload, on_delete=models.CASCADE, related_name="arrival")
    upload_id = models.UUIDField(unique=True)
    # Bytes stored so far, as of the last PATCH (the staged file's size is the truth).
    offset = models.BigIntegerField(default=0)
    # "user:<id>" or "token:<project id>": only the one who sent the manifest may send the bytes.
    owner = models.CharField(max_length=64)
    expires_at = models.DateTimeField()
    received_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="arrival_expires")]

    def __str__(self) -> str:
        return str(self.upload_id)


class Notification(models.Model):
    """One delivery attempt of a session summary to an external endpoint."""

    class Trigger(models.TextChoices):
        ADMIN = "admin", "Admin action"
        COMMAND = "command", "Command"
        AUTO = "auto", "Session end"

    session = models.ForeignKey(SyncSession, on_delete=models.CASCADE, related_name="notifications")
    url = models.CharField(max_length=2000)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.COMMAND)
    idempotency_key = models.CharField(max_length=100)
    attempt = models.PositiveIntegerField(default=1)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.url} attempt {self.attempt}"


# -- the catalog: what we know is at each destination (verbs in sessions_app/catalog.py) -------------


class Catalog(models.Model):
    """One per project and destination. A changed bucket, prefix, host, folder or kind is another
    destination (`Destination.identity()`), so it starts a catalog of its own."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="catalogs")
    destination = models.CharField(max_length=2000, help_text="e.g. s3://bucket/prefix")
    source_dir = models.CharField(max_length=1024, blank=True, default="",
                                  help_text="the source folder its entries came from")
    listed_at = models.DateTimeField(null=True, blank=True, help_text="last full listing of the destination")
    created_at = models.DateTimeField(default=timezone.now)
    # What its entries add up to, as of tallied_at (catalog.tally, run by the sweep): read by
    # /metrics and pages, which must not add up millions of entries on every request.
    object_count = models.BigIntegerField(default=0)
    byte_count = models.BigIntegerField(default=0)
    tallied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "destination"]
        constraints = [models.UniqueConstraint(fields=["project", "destination"], name="unique_catalog")]

    def __str__(self) -> str:
        return f"{self.project.name} → {self.destination}"


class CatalogEntry(models.Model):
    """One object we know is at the destination. `mtime` is None for an object only a listing
    vouches for (found there, or changed there behind our back): no source file was compared."""

    # No index of its own: the unique (catalog, key) index serves every lookup by catalog.
    # No database constraint: the project's row is held instead (projects.models.ProjectQuerySet).
    catalog = models.ForeignKey(Catalog, on_delete=models.CASCADE, related_name="entries", db_index=False,
                                db_constraint=False)
    # On PostgreSQL the column sorts bytewise (COLLATE "C", see migration 0003): the order the scan
    # and every listing yield keys in, which the plan's merge relies on.
    key = models.CharField(max_length=4096)
    relative_path = models.CharField(max_length=4096, blank=True, default="",
                                     help_text="the source file; blank when it is the key itself")
    size = models.BigIntegerField()
    mtime = models.FloatField(null=True, blank=True)
    checksum = models.CharField(max_length=200, blank=True, default="")
    remote_id = models.CharField(max_length=200, blank=True, default="")
    # No index of its own: entries are read by (catalog, key); it only names where an object came from.
    # Which session put it there, for the record. No database constraint (Django's delete of a
    # session still empties it): a check per entry at each commit, on a session row that its own
    # counters keep updating, cost more than the entry's insert.
    session = models.ForeignKey(SyncSession, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="arrivals", db_index=False, db_constraint=False)
    arrived_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "catalog entries"
        constraints = [models.UniqueConstraint(fields=["catalog", "key"], name="unique_catalog_key")]

    def __str__(self) -> str:
        return self.key

    @property
    def path(self) -> str:
        return self.relative_path or self.key


class SessionPace(models.Model):
    """A session's shared send rate while its destination throttles it: one row per session, read
    and written by every upload task of the session (sessions_app/pacing.py is its only writer).
    Times are epoch seconds (floats): the arithmetic stays in one UPDATE on every database."""

    session = models.OneToOneField(SyncSession, on_delete=models.CASCADE, primary_key=True, related_name="pace")
    rate = models.FloatField(null=True, blank=True, help_text="files/s for the whole session; empty: not limited")
    concurrency = models.PositiveIntegerField(null=True, blank=True,
                                              help_text="transfers in flight per task; empty: upload_workers")
    next_send_at = models.FloatField(default=0.0)  # the next free send slot of the session
    resume_at = models.FloatField(default=0.0)  # nothing is sent before (the remote's Retry-After)
    lowered_at = models.FloatField(default=0.0)
    raised_at = models.FloatField(default=0.0)
    throttled_count = models.PositiveIntegerField(default=0, help_text="throttling answers in this session")
    lowest_rate = models.FloatField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"pace of session {self.session_id}"


class Throughput(models.Model):
    """Files that settled per project and hour, over all its sessions: the history behind the
    dashboard's charts and the SQL views. Written only by sessions_app.files, beside the session
    counters; it outlives pruned rows and needs no scan of file rows to read."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="throughput")
    hour = models.DateTimeField(help_text="start of the hour (UTC)")
    uploaded = models.BigIntegerField(default=0)
    uploaded_bytes = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["project", "hour"]
        constraints = [models.UniqueConstraint(fields=["project", "hour"], name="unique_throughput_hour")]

    def __str__(self) -> str:
        return f"{self.project_id} {self.hour:%Y-%m-%d %H}:00"
