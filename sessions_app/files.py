"""File states and the session counters beside them: the one writer of both.

    (new) -> pending | skipped                 add_planned (scan), admit_one (upload queue)
    pending -> uploading                       claim
    uploading -> uploaded|failed|skipped|cancelled   record (outcomes, in batches)
    uploading -> pending                       release (shutdown), recover_stale (resume, sweep)
    pending (, uploading) -> cancelled         cancel_rest
    failed | cancelled -> pending              requeue (retry round)
    uploaded|failed|skipped|cancelled -> (gone)      forget (the queue takes the file again)

Each verb is a conditional update naming the states it leaves from, so racing workers cannot
move a row twice, and adjusts the session's counters by what it actually moved, in the same
transaction. A move the graph does not allow raises TransitionError. `recount()` recomputes
the counters from the rows (the truth) for the places that reconcile.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from sessions_app import bulk
from sessions_app.errors import TransitionError
from sessions_app.models import FileStatus, FileUpload, SyncSession

PENDING, UPLOADING, UPLOADED = FileStatus.PENDING, FileStatus.UPLOADING, FileStatus.UPLOADED
FAILED, SKIPPED, CANCELLED = FileStatus.FAILED, FileStatus.SKIPPED, FileStatus.CANCELLED
NEW = "new"  # not a row yet
GONE = "gone"  # a row no more
OPEN = (PENDING, UPLOADING)
SETTLED = (UPLOADED, FAILED, SKIPPED, CANCELLED)

ALLOWED: dict[str, frozenset[str]] = {
    NEW: frozenset({PENDING, SKIPPED}),
    PENDING: frozenset({UPLOADING, CANCELLED}),
    UPLOADING: frozenset({UPLOADED, FAILED, SKIPPED, CANCELLED, PENDING}),
    UPLOADED: frozenset({GONE}),
    FAILED: frozenset({PENDING, GONE}),
    SKIPPED: frozenset({GONE}),
    CANCELLED: frozenset({PENDING, GONE}),
}
# Open rows share one counter: "pending" counts what is still to do.
COUNTER = {PENDING: "pending_count", UPLOADING: "pending_count", UPLOADED: "uploaded_count",
           FAILED: "failed_count", SKIPPED: "skipped_count", CANCELLED: "cancelled_count"}
COUNTERS = ("found_count", "pending_count", "uploaded_count", "failed_count", "skipped_count", "cancelled_count",
            "bytes_total", "bytes_uploaded")
OUTCOME_FIELDS = [
    "status", "attempts", "uploaded_at", "checksum", "remote_id", "size", "mtime", "note",
    "last_error", "error_permanent", "skip_reason", "claim_token", "verify_remote",
]


def check(source: str, target: str) -> None:
    if target not in ALLOWED.get(source, ()):
        raise TransitionError(f"a file cannot go from {source} to {target}")


@dataclass
class Outcome:
    """What became of one claimed row's transfer."""

    row: FileUpload
    status: str


# -- counters ---------------------------------------------------------------------------------------


def _less(name: str, n: int) -> Any:
    # Never below zero: rows written outside these verbs (tests, old data) are reconciled by recount().
    return Greatest(F(name) - n, 0)


def _bump(session_id: int, changes: dict[str, int], **fields: Any) -> None:
    updates = {name: (F(name) + n if n > 0 else _less(name, -n)) for name, n in changes.items() if n}
    if updates or fields:
        SyncSession.objects.filter(pk=session_id).update(**updates, **fields)


def _moved(source: str, target: str, n: int) -> dict[str, int]:
    changes: Counter[str] = Counter()
    changes[COUNTER[source]] -= n
    changes[COUNTER[target]] += n
    return changes


def counts(session: SyncSession) -> dict[str, int]:
    """The counters as the rows say, in one query."""
    agg = session.files.aggregate(
        found_count=Count("id"),
        pending_count=Count("id", filter=Q(status__in=OPEN)),
        uploaded_count=Count("id", filter=Q(status=UPLOADED)),
        failed_count=Count("id", filter=Q(status=FAILED)),
        skipped_count=Count("id", filter=Q(status=SKIPPED)),
        cancelled_count=Count("id", filter=Q(status=CANCELLED)),
        bytes_total=Sum("size"),
        bytes_uploaded=Sum("size", filter=Q(status=UPLOADED)),
    )
    return {name: agg[name] or 0 for name in COUNTERS}


def recount(session: SyncSession) -> None:
    """Set the counters to what the rows say (and on the instance)."""
    fields = counts(session)
    SyncSession.objects.filter(pk=session.pk).update(**fields)
    for name, value in fields.items():
        setattr(session, name, value)


# -- questions --------------------------------------------------------------------------------------


def has_open(session: SyncSession) -> bool:
    return session.files.filter(status__in=OPEN).exists()


def has_pending(session: SyncSession) -> bool:
    return session.files.filter(status=PENDING).exists()


def in_flight(session: SyncSession) -> bool:
    return session.files.filter(status=UPLOADING).exists()


# -- new rows ---------------------------------------------------------------------------------------


def planned_row(session: SyncSession, *, relative_path: str, remote_key: str, size: int = 0, mtime: float = 0,
                skip_reason: str = "", remote_id: str = "", device: int | None = None,
                inode: int | None = None) -> FileUpload:
    """A row for the plan: pending, or skipped with its reason. Not saved: add_planned() inserts it."""
    return FileUpload(session_id=session.pk, project_id=session.project_id, relative_path=relative_path,
                      remote_key=remote_key, size=size, mtime=mtime, skip_reason=skip_reason, remote_id=remote_id,
                      device=device, inode=inode, status=SKIPPED if skip_reason else PENDING)


def add_planned(session: SyncSession, rows: Sequence[FileUpload]) -> list[FileUpload]:
    """Insert a batch of planned rows (those already there are left alone: a re-run scan) and
    count them; also the session's heartbeat. Returns the rows inserted."""
    for row in rows:
        check(NEW, row.status)
    with transaction.atomic():
        new = bulk.insert_new(FileUpload, rows, ("session_id", "relative_path"))
        pending = sum(1 for r in new if r.status == PENDING)
        _bump(session.pk, {"found_count": len(new), "pending_count": pending, "skipped_count": len(new) - pending,
                           "bytes_total": sum(r.size for r in new)}, heartbeat_at=timezone.now())
    return new


def admit_one(session: SyncSession, **fields: Any) -> FileUpload:
    """A new pending row for one file of the upload queue. Call inside the transaction that
    took lock() and made the checks the lock protects (the queue's limit)."""
    row = FileUpload(session=session, project_id=session.project_id, status=PENDING, **fields)
    row.save(force_insert=True)
    _bump(session.pk, {"found_count": 1, "pending_count": 1, "bytes_total": row.size})
    return row


def lock(session: SyncSession, status: str) -> bool:
    """Lock the session row while it has `status`; False if it has another one."""
    return bool(SyncSession.objects.select_for_update().filter(pk=session.pk, status=status)
                .values_list("pk", flat=True))


def forget(row: FileUpload) -> None:
    """A settled row makes way for a new request for its file."""
    check(row.status, GONE)
    with transaction.atomic():
        if not FileUpload.objects.filter(pk=row.pk, status=row.status).delete()[0]:
            return
        changes = {"found_count": -1, COUNTER[row.status]: -1, "bytes_total": -row.size}
        if row.status == UPLOADED:
            changes["bytes_uploaded"] = -row.size
        _bump(row.session_id, changes)


# -- moves ------------------------------------------------------------------------------------------


def move(session_id: int, rows: QuerySet[FileUpload], sources: Iterable[str], target: str, **fields: Any) -> int:
    """Move the rows of `rows` that are in one of `sources` to `target`, counting per source;
    the general form of the verbs below."""
    if target not in COUNTER:
        raise TransitionError(f"a file cannot be moved to {target}")
    total = 0
    with transaction.atomic():
        for source in sources:
            check(source, target)
            n = rows.filter(session_id=session_id, status=source).update(status=target, **fields)
            _bump(session_id, _moved(source, target, n))
            total += n
    return total


def claim(session: SyncSession, n: int) -> list[FileUpload]:
    """Up to n pending rows, in id order, now uploading under one claim token; racing claimers
    never get the same row."""
    if n <= 0:
        return []
    token = uuid.uuid4()
    with transaction.atomic():
        qs = FileUpload.objects.filter(session_id=session.pk, status=PENDING).order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        ids = list(qs.values_list("id", flat=True)[:n])
        if not ids:
            return []
        move(session.pk, FileUpload.objects.filter(id__in=ids), (PENDING,), UPLOADING, claim_token=token,
              claimed_at=timezone.now())
    return list(FileUpload.objects.filter(claim_token=token, status=UPLOADING).order_by("id"))


def record(session: SyncSession, outcomes: Sequence[Outcome]) -> int:
    """Write a batch of transfer outcomes (one statement per batch on PostgreSQL) and the counters
    they change, with the session's heartbeat, in one transaction. Only rows still uploading are
    written (a resume may have taken one back). Returns how many were."""
    for o in outcomes:
        check(o.row.status, o.status)
    now = timezone.now()
    if not outcomes:
        SyncSession.objects.filter(pk=session.pk).update(heartbeat_at=now)
        return 0
    by_pk = {o.row.pk: o for o in outcomes}
    rows = []
    for o in outcomes:
        o.row.status, o.row.claim_token, o.row.verify_remote = o.status, None, False
        rows.append(o.row)
    with transaction.atomic():
        done = [by_pk[pk] for pk in bulk.update_fields(FileUpload, rows, OUTCOME_FIELDS, where={"status": UPLOADING})]
        changes: Counter[str] = Counter()
        for o in done:
            changes.update(_moved(UPLOADING, o.status, 1))
            if o.status == UPLOADED:  # its size as uploaded (or as verified at the destination)
                changes["bytes_uploaded"] += o.row.size
        _bump(session.pk, changes, heartbeat_at=now)
    return len(done)


def release(session: SyncSession, ids: Sequence[int]) -> int:
    """Claimed rows whose transfer never started go back to pending (a worker shutting down)."""
    return move(session.pk, FileUpload.objects.filter(id__in=ids), (UPLOADING,), PENDING, claim_token=None,
                 claimed_at=None)


def recover_stale(session: SyncSession, claimed_before: Any = None) -> int:
    """Rows a vanished worker left uploading go back to pending, to be checked at the destination
    before any re-upload (resume, sweep)."""
    rows = FileUpload.objects.all() if claimed_before is None else FileUpload.objects.filter(
        claimed_at__lt=claimed_before)
    return move(session.pk, rows, (UPLOADING,), PENDING, claim_token=None, verify_remote=True)


def cancel_rest(session: SyncSession, *, claimed_too: bool = False) -> int:
    """Pending rows become cancelled; with claimed_too, also rows whose worker is gone."""
    sources = (PENDING, UPLOADING) if claimed_too else (PENDING,)
    return move(session.pk, FileUpload.objects.all(), sources, CANCELLED, claim_token=None)


def requeue(session: SyncSession, failed_rows: QuerySet[FileUpload],
            cancelled_rows: QuerySet[FileUpload]) -> tuple[int, int]:
    """A retry round: failed rows (one more round each) and cancelled rows back to pending."""
    with transaction.atomic():
        n_failed = move(session.pk, failed_rows, (FAILED,), PENDING, retries=F("retries") + 1,
                         error_permanent=False, claim_token=None)
        n_cancelled = move(session.pk, cancelled_rows, (CANCELLED,), PENDING, claim_token=None)
    return n_failed, n_cancelled
