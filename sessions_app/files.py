"""File states and the session counters beside them: the one writer of both.

    (new) -> pending | skipped                 add_pending (sync plan), add_planned (import),
                                               admit_one (upload queue)
    (new) -> failed                            add_refused (the plan: a name that cannot be a key)
    (new) -> receiving                         add_receiving (a browser upload's manifest)
    receiving -> pending                       received (its bytes are all in staging)
    receiving -> failed | cancelled            give_up_receiving (expired), cancel_rest, terminate
    (new) -> counted, no row                   count_skips (the plan found the file done)
    (new) -> uploaded | failed | skipped       add_sent (the plan sent the file first: its row
                                               is written once, settled; upload --sync)
    pending -> uploading                       claim
    uploading -> uploaded|failed|skipped|cancelled   record (outcomes, in batches)
    uploading -> pending                       release (shutdown), recover (resume, sweep: lease ran out)
    pending (, uploading) -> cancelled         cancel_rest
    failed | cancelled -> pending              requeue (retry round)
    uploaded|failed|skipped|cancelled -> (gone)      forget (the queue takes the file again)
    skipped -> counted, no row                 prune_skipped (old rows of skipped files)

Each verb is a conditional update naming the states it leaves from, so racing workers cannot
move a row twice, and adjusts the session's counters by what it actually moved, in the same
transaction. A move the graph does not allow raises TransitionError. `recount()` recomputes
the counters from the rows (the truth) and the skips counted without rows (`SyncSession.skips`).
An object that arrives (`record`) gets its catalog entry in the same transaction as its status.

A sync session has a row per file and destination (`FileUpload.destination`) and a counter row
per destination (`SessionDestination`): a verb given a destination bumps its counters beside the
session's (which are the totals over the destinations).
"""

from __future__ import annotations

import operator
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import Greatest
from django.utils import timezone

from projects.models import Project
from sessions_app import bulk, catalog
from sessions_app.errors import TransitionError
from sessions_app.models import SessionStatus, FileStatus, FileUpload, SessionDestination, SyncSession, Throughput

RECEIVING = FileStatus.RECEIVING
PENDING, UPLOADING, UPLOADED = FileStatus.PENDING, FileStatus.UPLOADING, FileStatus.UPLOADED
FAILED, SKIPPED, CANCELLED = FileStatus.FAILED, FileStatus.SKIPPED, FileStatus.CANCELLED
NEW = "new"  # not a row yet
GONE = "gone"  # a row no more
OPEN = (RECEIVING, PENDING, UPLOADING)
SETTLED = (UPLOADED, FAILED, SKIPPED, CANCELLED)

ALLOWED: dict[str, frozenset[str]] = {
    NEW: frozenset({PENDING, SKIPPED, FAILED, RECEIVING, UPLOADED}),
    RECEIVING: frozenset({PENDING, FAILED, CANCELLED}),
    PENDING: frozenset({UPLOADING, CANCELLED}),
    UPLOADING: frozenset({UPLOADED, FAILED, SKIPPED, CANCELLED, PENDING}),
    UPLOADED: frozenset({GONE}),
    FAILED: frozenset({PENDING, GONE}),
    SKIPPED: frozenset({GONE}),
    CANCELLED: frozenset({PENDING, GONE}),
}
# Open rows share one counter: "pending" counts what is still to do.
COUNTER = {RECEIVING: "pending_count", PENDING: "pending_count", UPLOADING: "pending_count", UPLOADED: "uploaded_count",
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


def _bump(session_id: int, changes: dict[str, int], destination: str | None = None, **fields: Any) -> None:
    updates = {name: (F(name) + n if n > 0 else _less(name, -n)) for name, n in changes.items() if n}
    if updates or fields:
        SyncSession.objects.filter(pk=session_id).update(**updates, **fields)
    if destination is not None and updates:
        SessionDestination.objects.filter(session_id=session_id, name=destination).update(**updates)


def hold(session: SyncSession) -> None:
    """Before a session's rows go in (inside their transaction): its project's row, held, so that
    no deletion of it or of the session leaves them behind (projects.models.ProjectQuerySet)."""
    Project.objects.filter(pk=session.project_id).hold()


def open_destinations(session: SyncSession, identities: dict[str, str]) -> None:
    """The session's destinations ({name: identity}) get their counter rows (a sync's start)."""
    SessionDestination.objects.bulk_create(
        [SessionDestination(session=session, name=name, identity=identity) for name, identity in identities.items()],
        ignore_conflicts=True)


def destination_names(session: SyncSession | int) -> list[str]:
    """The names of the session's destinations, in the project's order (none: a session of one
    destination whose rows are not told apart, e.g. the upload queue)."""
    session_id = session if isinstance(session, int) else session.pk
    return list(SessionDestination.objects.filter(session_id=session_id).values_list("name", flat=True))


def destination_status(sd: SessionDestination) -> str:
    """Where one destination of a session stands, from its counters and the session's status: a
    destination with nothing left open has ended even while another one still uploads."""
    status = sd.session.status
    if status in (SessionStatus.QUEUED, SessionStatus.SCANNING, SessionStatus.FAILED) or sd.pending_count:
        return status
    if status == SessionStatus.CANCELLED and sd.cancelled_count:
        return status
    return SessionStatus.COMPLETED_WITH_ERRORS if sd.failed_count else SessionStatus.COMPLETED


def _tally(project_id: int, now: Any, changes: Counter[str]) -> None:
    """Add a batch's outcomes to the project's hour in Throughput (the history of all sessions)."""
    added = {"uploaded": changes["uploaded_count"], "uploaded_bytes": changes["bytes_uploaded"],
             "failed": changes["failed_count"]}
    if not any(added.values()):
        return
    hour = now.replace(minute=0, second=0, microsecond=0)
    rows = Throughput.objects.filter(project_id=project_id, hour=hour)
    if rows.update(**{name: F(name) + n for name, n in added.items()}):
        return
    try:
        with transaction.atomic():
            Throughput.objects.create(project_id=project_id, hour=hour, **added)
    except IntegrityError:  # another batch created the hour first
        rows.update(**{name: F(name) + n for name, n in added.items()})


def _moved(source: str, target: str, n: int) -> dict[str, int]:
    changes: Counter[str] = Counter()
    changes[COUNTER[source]] -= n
    changes[COUNTER[target]] += n
    return changes


def _aggregates(rows: QuerySet[FileUpload]) -> dict[str, Any]:
    return dict(
        found_count=Count("id"),
        pending_count=Count("id", filter=Q(status__in=OPEN)),
        uploaded_count=Count("id", filter=Q(status=UPLOADED)),
        failed_count=Count("id", filter=Q(status=FAILED)),
        skipped_count=Count("id", filter=Q(status=SKIPPED)),
        cancelled_count=Count("id", filter=Q(status=CANCELLED)),
        bytes_total=Sum("size"),
        bytes_uploaded=Sum("size", filter=Q(status=UPLOADED)),
    )


def counts(session: SyncSession, by_destination: dict[str, dict[str, Any]] | None = None) -> dict[str, int]:
    """The counters as the rows say (`by_destination`, if the caller has them), plus the files
    skipped without a row."""
    by_destination = _by_destination(session) if by_destination is None else by_destination
    skips, skipped_bytes = SyncSession.objects.values_list("skips", "skipped_bytes").get(pk=session.pk)
    return _with_unstored(_summed(by_destination.values()), skips, skipped_bytes)


def _by_destination(session: SyncSession) -> dict[str, dict[str, Any]]:
    """The rows' aggregates per destination: one pass over the session's rows."""
    return {row["destination"]: row for row in session.files.order_by().values("destination").annotate(
        **_aggregates(session.files))}


def _summed(groups: Iterable[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(group.get(name) or 0 for group in groups) for name in COUNTERS}


def _with_unstored(agg: dict[str, Any], skips: dict[str, int], skipped_bytes: int) -> dict[str, int]:
    out = {name: agg.get(name) or 0 for name in COUNTERS}
    unstored = sum(skips.values())
    out["found_count"] += unstored
    out["skipped_count"] += unstored
    out["bytes_total"] += skipped_bytes
    return out


def recount(session: SyncSession) -> None:
    """Set the counters to what the rows say (and on the instance), the session's and each of its
    destinations' (one pass over the rows for both)."""
    by_name = _by_destination(session)
    fields = counts(session, by_name)
    SyncSession.objects.filter(pk=session.pk).update(**fields)
    for name, value in fields.items():
        setattr(session, name, value)
    for sd in SessionDestination.objects.filter(session_id=session.pk):
        SessionDestination.objects.filter(pk=sd.pk).update(
            **_with_unstored(by_name.get(sd.name, {}), sd.skips, sd.skipped_bytes))


# -- questions --------------------------------------------------------------------------------------


def has_open(session: SyncSession) -> bool:
    return session.files.filter(status__in=OPEN).exists()


def has_pending(session: SyncSession, destination: str | None = None) -> bool:
    rows = session.files.filter(status=PENDING)
    return (rows if destination is None else rows.filter(destination=destination)).exists()


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
        if row.status not in (PENDING, SKIPPED):  # a settled row goes in only as sent (add_sent)
            raise TransitionError(f"a planned file is pending or skipped, not {row.status}")
    with transaction.atomic():
        hold(session)
        new = bulk.insert_new(FileUpload, rows, ("session_id", "destination", "relative_path"))
        pending = sum(1 for r in new if r.status == PENDING)
        _bump(session.pk, {"found_count": len(new), "pending_count": pending, "skipped_count": len(new) - pending,
                           "bytes_total": sum(r.size for r in new)}, heartbeat_at=timezone.now())
    return new


PLANNED_COLUMNS = ("session_id", "project_id", "relative_path", "remote_key", "size", "mtime", "device", "inode",
                   "verify_remote")
SIZE_AT, DEVICE_AT, VERIFY_AT = (PLANNED_COLUMNS.index(name) for name in ("size", "device", "verify_remote"))


def add_pending(session: SyncSession, rows: Sequence[tuple], *, first_run: bool = False,
                destination: str | None = None) -> int:
    """Insert a batch of pending rows given as plain tuples of PLANNED_COLUMNS (no model instances:
    COPY on PostgreSQL) and count them. Rows a crashed run of the same scan inserted are left
    alone (the scan's end recounts); on the `first_run` of a session's scan there are none, and
    the rows go in without that check. Call inside the batch's transaction. Returns how many went in."""
    # The rows of that destination (else of the one, "default"): given once, not added to each row.
    same = {"destination": destination} if destination is not None else None
    hold(session)
    inserted = bulk.insert_tuples(FileUpload, PLANNED_COLUMNS, rows, new=first_run, same=same)
    _bump(session.pk, {"found_count": inserted, "pending_count": inserted,
                       "bytes_total": sum(r[SIZE_AT] for r in rows)}, destination)
    return inserted


SENT_COLUMNS = PLANNED_COLUMNS + ("destination", "status", "attempts", "uploaded_at", "checksum", "remote_id",
                                  "note", "last_error", "error_permanent", "skip_reason")


_SENT_OUTCOME = operator.itemgetter(*map(SENT_COLUMNS.index, ("status", "skip_reason")))
_SENT_ARRIVAL = operator.itemgetter(*map(SENT_COLUMNS.index, catalog.ARRIVAL))


@dataclass
class Sent:
    """The rows of files the plan sent, made ready to insert (`sent()`), where the files were sent:
    the thread that writes them then only talks to the database."""

    rows: list[tuple]  # of SENT_COLUMNS
    text: str | None  # PostgreSQL: the rows encoded for COPY

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        at = SENT_COLUMNS.index(name)
        return [row[at] for row in self.rows]

    def arrivals(self) -> list[tuple]:
        """Of the rows whose objects arrived, what their catalog entries take (catalog.record_arrivals)."""
        outcome, arrival = _SENT_OUTCOME, _SENT_ARRIVAL
        return [arrival(row) for row in self.rows if catalog.arrives_as(*outcome(row))]


# A file the plan copied: (its planned row (PLANNED_COLUMNS), bytes written, mtime of the file as
# opened, transferring.change_note). A plain tuple: a named one cost 0.3 s of the scan's thread to
# make for a first sync's 200,000 files.
Copied = tuple[tuple, int, float, str]


def sent(outcomes: Sequence[Outcome], destination: str = "default", *, copied: Sequence[Copied] = ()) -> Sent:
    """The rows of the files the plan sent: each of `outcomes` settled as its transfer left it (new ->
    status), each of `copied` uploaded (new -> uploaded) straight from its planned row, with no model
    instance (making 200,000 of them was a fifth of a first sync's time in the scan's thread)."""
    rows = []
    for o in outcomes:
        check(NEW, o.status)
        r = o.row
        r.status = o.status
        rows.append((r.session_id, r.project_id, r.relative_path, r.remote_key, r.size, r.mtime, r.device, r.inode,
                     False, destination, o.status, r.attempts, r.uploaded_at, r.checksum, r.remote_id, r.note,
                     r.last_error, r.error_permanent, r.skip_reason))
    if copied:
        check(NEW, UPLOADED)
        # Adapted for the database once for the part, not by the driver once per row (SQLite).
        tail = (destination, UPLOADED, 1, connection.ops.adapt_datetimefield_value(timezone.now()), "", "")
        rows.extend(p[:SIZE_AT] + (size, mtime) + p[DEVICE_AT:VERIFY_AT] + (False,) + tail + (note, "", False, "")
                    for p, size, mtime, note in copied)
    return Sent(rows, bulk.encoded(FileUpload, SENT_COLUMNS, rows))


def add_sent(session: SyncSession, outcomes: Sequence[Outcome] | Sent, catalog_id: int, *, first_run: bool = False,
             destination: str = "default") -> int:
    """Insert the rows of files the plan sent before writing them (their outcomes, or the rows
    `sent()` made of them), each settled as its transfer left it, count them, and record the
    objects that arrived in the catalog. Call inside the transaction the files were sent in (see
    sending.py). Returns how many rows went in; a re-run scan's collide and are left alone (the
    scan's end recounts)."""
    ready = outcomes if isinstance(outcomes, Sent) else sent(outcomes, destination)
    rows = ready.rows
    if not rows:
        return 0
    hold(session)
    after = bulk.id_floor(FileUpload)
    inserted = bulk.insert_tuples(FileUpload, SENT_COLUMNS, rows, new=first_run, text=ready.text)
    sizes, statuses = ready.column("size"), ready.column("status")
    changes = Counter(found_count=inserted, bytes_total=sum(sizes))
    for status, n in Counter(statuses).items():
        changes[COUNTER[status]] += n
    changes["bytes_uploaded"] = sum(size for size, status in zip(sizes, statuses) if status == UPLOADED)
    now = timezone.now()
    _bump(session.pk, changes if inserted == len(rows) else {}, destination, heartbeat_at=now)
    _tally(session.project_id, now, changes)
    # Where the ids are known (PostgreSQL), the database makes the entries from the rows just inserted.
    if after is not None:
        catalog.record(catalog_id, session.pk, [], inserted_after=after)
    else:
        catalog.record_arrivals(catalog_id, session.pk, ready.arrivals())
    return inserted


def add_refused(session: SyncSession, rows: Sequence[tuple[str, str, int, float, str]],
                destination: str = "default") -> int:
    """Insert files the plan refuses (path, key, size, mtime, why) as permanently failed rows and
    count them. Returns how many went in (a re-run scan's are there already)."""
    check(NEW, FAILED)
    objs = [FileUpload(session_id=session.pk, project_id=session.project_id, relative_path=path, remote_key=key,
                       size=size, mtime=mtime, status=FAILED, last_error=why, error_permanent=True,
                       destination=destination)
            for path, key, size, mtime, why in rows]
    with transaction.atomic():
        hold(session)
        new = bulk.insert_new(FileUpload, objs, ("session_id", "destination", "relative_path"))
        _bump(session.pk, {"found_count": len(new), "failed_count": len(new), "bytes_total": sum(r.size for r in new)},
              destination)
    return len(new)


@dataclass
class Skips:
    """Files a scan found already done, counted without rows: by reason, and their bytes."""

    by_reason: dict[str, int] = field(default_factory=dict)
    files: int = 0
    size: int = 0
    saved: tuple[int, int] = (0, 0)  # files and bytes already added to the counters

    def add(self, by_reason: dict[str, int], size: int) -> None:
        for reason, n in by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n
            self.files += n
        self.size += size


def count_skips(session: SyncSession, skips: Skips, by_destination: dict[str, Skips] | None = None) -> None:
    """Write a scan's skip counts so far (and what they add to the counters); the heartbeat too.
    `by_destination`: each destination's (with one destination, `skips` itself)."""
    files, size = skips.files - skips.saved[0], skips.size - skips.saved[1]
    for name, mine in (by_destination or {}).items():
        n, n_bytes = mine.files - mine.saved[0], mine.size - mine.saved[1]
        if n or n_bytes:
            SessionDestination.objects.filter(session_id=session.pk, name=name).update(
                found_count=F("found_count") + n, skipped_count=F("skipped_count") + n,
                bytes_total=F("bytes_total") + n_bytes, skipped_bytes=F("skipped_bytes") + n_bytes,
                skips=mine.by_reason)
        mine.saved = (mine.files, mine.size)
    _bump(session.pk, {"found_count": files, "skipped_count": files, "bytes_total": size, "skipped_bytes": size},
          skips=skips.by_reason, heartbeat_at=timezone.now())
    skips.saved = (skips.files, skips.size)


def restart_skips(session: SyncSession) -> None:
    """A scan that runs again (resumed) counts its skips again: the earlier run's go."""
    if session.skips or session.skipped_bytes:
        SyncSession.objects.filter(pk=session.pk).update(skips={}, skipped_bytes=0)
        SessionDestination.objects.filter(session_id=session.pk).update(skips={}, skipped_bytes=0)
        recount(session)


def admit_one(session: SyncSession, **fields: Any) -> FileUpload:
    """A new pending row for one file of the upload queue. Call inside the transaction that
    took lock() and made the checks the lock protects (the queue's limit)."""
    row = FileUpload(session=session, project_id=session.project_id, status=PENDING, **fields)
    hold(session)
    row.save(force_insert=True)
    _bump(session.pk, {"found_count": 1, "pending_count": 1, "bytes_total": row.size})
    return row


def add_receiving(session: SyncSession, rows: Sequence[FileUpload]) -> list[FileUpload]:
    """Insert a browser upload's accepted files, waiting for their bytes, and count them."""
    for row in rows:
        check(NEW, row.status)
        if row.status != RECEIVING:
            raise TransitionError(f"a manifest's file starts receiving, not {row.status}")
    with transaction.atomic():
        hold(session)
        new = FileUpload.objects.bulk_create(rows, batch_size=1000)
        _bump(session.pk, {"found_count": len(new), "pending_count": len(new),
                           "bytes_total": sum(r.size for r in new)})
    return new


def received(row: FileUpload) -> bool:
    """All its bytes are in staging: the row waits for processing (pending). False if it had moved."""
    return move(row.session_id, FileUpload.objects.filter(pk=row.pk), (RECEIVING,), PENDING) == 1


def give_up_receiving(session_id: int, rows: QuerySet[FileUpload], error: str) -> int:
    """Files whose bytes never all came (their upload expired) fail, permanently, with the reason."""
    return move(session_id, rows, (RECEIVING,), FAILED, last_error=error, error_permanent=True)


def terminate(row: FileUpload) -> bool:
    """The client gave the upload up (tus termination): the file is cancelled."""
    return move(row.session_id, FileUpload.objects.filter(pk=row.pk), (RECEIVING,), CANCELLED) == 1


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
        _bump(row.session_id, changes, row.destination)


# -- moves ------------------------------------------------------------------------------------------


def move(session_id: int, rows: QuerySet[FileUpload], sources: Iterable[str], target: str, **fields: Any) -> int:
    """Move the rows of `rows` that are in one of `sources` to `target`, counting per source;
    the general form of the verbs below."""
    if target not in COUNTER:
        raise TransitionError(f"a file cannot be moved to {target}")
    total = 0
    names = destination_names(session_id) or [None]
    with transaction.atomic():
        for source in sources:
            check(source, target)
            for name in names:  # counted per destination, when the session tells them apart
                mine = rows if name is None else rows.filter(destination=name)
                n = mine.filter(session_id=session_id, status=source).update(status=target, **fields)
                _bump(session_id, _moved(source, target, n), name)
                total += n
    return total


def claim(session: SyncSession, n: int, catalog_id: int | None = None,
          destination: str | None = None) -> list[FileUpload]:
    """Up to n pending rows, in id order, now uploading under one claim token; racing claimers
    never get the same row. While another session of the project runs (or ran since this one
    began), a file it is uploading waits for that upload's outcome, and a claimed file the
    catalog (`catalog_id`) says arrived meanwhile is recorded as skipped, not returned: no
    object is sent twice."""
    if n <= 0:
        return []
    check(PENDING, UPLOADING)
    with transaction.atomic():
        others = catalog.lock_project(session)
        qs = FileUpload.objects.filter(session_id=session.pk, status=PENDING).order_by("id")
        if destination is not None:
            qs = qs.filter(destination=destination)
        if others:
            qs = qs.exclude(remote_key__in=catalog.busy_keys(others, destination))
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True)
        # One statement: pick, move and read back the rows.
        rows = bulk.update_returning(qs[:n], {"status": PENDING}, status=UPLOADING, claim_token=uuid.uuid4(),
                                     claimed_at=timezone.now())
        _bump(session.pk, _moved(PENDING, UPLOADING, len(rows)), destination)
    if not others or catalog_id is None:
        return rows
    done = catalog.arrived(catalog_id, rows)
    for row in rows:
        if row.pk in done:
            row.skip_reason, row.note = catalog.SKIP_ARRIVED, f"uploaded by session {done[row.pk]}"
    record(session, [Outcome(row, SKIPPED) for row in rows if row.pk in done], destination=destination)
    return [row for row in rows if row.pk not in done]


def record(session: SyncSession, outcomes: Sequence[Outcome], catalog_id: int | None = None,
           destination: str | None = None) -> int:
    """Write a batch of transfer outcomes (one statement per batch on PostgreSQL) and the counters
    they change, with the session's heartbeat, in one transaction; with `catalog_id`, the catalog
    entries of the objects that arrived too. Only rows still uploading are written (a resume may
    have taken one back). Returns how many were."""
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
        if catalog_id is not None:  # before the rows' locks: a deletion waiting for it holds the project's
            hold(session)
        done = [by_pk[pk] for pk in bulk.update_fields(FileUpload, rows, OUTCOME_FIELDS, where={"status": UPLOADING})]
        changes: Counter[str] = Counter()
        for status, n in Counter(o.status for o in done).items():
            changes.update(_moved(UPLOADING, status, n))
        # Their sizes as uploaded (or as verified at the destination).
        changes["bytes_uploaded"] += sum(o.row.size for o in done if o.status == UPLOADED)
        _bump(session.pk, changes, destination, heartbeat_at=now)
        _tally(session.project_id, now, changes)
        if catalog_id is not None:
            catalog.record(catalog_id, session.pk, [o.row for o in done])
    return len(done)


def release(session: SyncSession, ids: Sequence[int]) -> int:
    """Claimed rows whose transfer never started go back to pending (a worker shutting down)."""
    return move(session.pk, FileUpload.objects.filter(id__in=ids), (UPLOADING,), PENDING, claim_token=None,
                 claimed_at=None)


def recover_stale(session: SyncSession, claimed_before: Any = None) -> int:
    """Rows a vanished worker left uploading go back to pending, to be checked at the destination
    before any re-upload (resume, sweep)."""
    return len(recover(session, claimed_before))


def recover(session: SyncSession, claimed_before: Any = None) -> list[tuple[str, str]]:
    """recover_stale(), returning the (destination, remote key) of the rows taken back: what the
    vanished workers may have left half-written at that destination."""
    rows = session.files.filter(status=UPLOADING)
    if claimed_before is not None:  # a lease last renewed before then
        rows = rows.filter(claimed_at__lt=claimed_before)
    taken = {pk: (destination, key) for pk, destination, key in rows.values_list("id", "destination", "remote_key")}
    with transaction.atomic():
        moved = FileUpload.objects.filter(id__in=list(taken), status=UPLOADING)
        ids = list(moved.select_for_update().values_list("id", flat=True))
        move(session.pk, FileUpload.objects.filter(id__in=ids), (UPLOADING,), PENDING, claim_token=None,
             verify_remote=True)
    return [taken[pk] for pk in ids]


def renew(session_id: int, ids: Iterable[int]) -> None:
    """A running task's lease: on its session (the heartbeat) and on the rows it claimed."""
    now = timezone.now()
    # Two short transactions, never one: record() locks rows then the session, and a lease holding
    # the session while waiting for a row would close a cycle.
    SyncSession.objects.filter(pk=session_id).update(heartbeat_at=now)
    if not (ids := list(ids)):
        return
    with transaction.atomic():
        rows = FileUpload.objects.filter(id__in=ids, status=UPLOADING)
        if connection.features.has_select_for_update_skip_locked:
            # Rows being recorded right now are skipped, not waited for.
            rows = FileUpload.objects.filter(id__in=list(rows.select_for_update(skip_locked=True)
                                                         .values_list("id", flat=True)))
        rows.update(claimed_at=now)


def has_expired_claims(session: SyncSession, claimed_before: Any) -> bool:
    return session.files.filter(status=UPLOADING, claimed_at__lt=claimed_before).exists()


def cancel_rest(session: SyncSession, *, claimed_too: bool = False) -> int:
    """Pending rows become cancelled; with claimed_too, also rows whose worker is gone."""
    sources = (RECEIVING, PENDING, UPLOADING) if claimed_too else (RECEIVING, PENDING)
    return move(session.pk, FileUpload.objects.all(), sources, CANCELLED, claim_token=None)


def requeue(session: SyncSession, failed_rows: QuerySet[FileUpload],
            cancelled_rows: QuerySet[FileUpload]) -> tuple[int, int]:
    """A retry round: failed rows (one more round each) and cancelled rows back to pending."""
    with transaction.atomic():
        n_failed = move(session.pk, failed_rows, (FAILED,), PENDING, retries=F("retries") + 1,
                         error_permanent=False, claim_token=None)
        n_cancelled = move(session.pk, cancelled_rows, (CANCELLED,), PENDING, claim_token=None)
    return n_failed, n_cancelled


# -- pruning ----------------------------------------------------------------------------------------

PRUNE_BATCH = 10_000


def skipped_before(cut_off: Any) -> QuerySet[FileUpload]:
    return FileUpload.objects.filter(status=SKIPPED, created_at__lt=cut_off)


def prune_skipped(cut_off: Any) -> tuple[int, int]:
    """Delete rows of files skipped before cut_off, a batch per transaction; their sessions count
    them on (in `skips`), so no session's figures change. Returns (rows, sessions)."""
    check(SKIPPED, GONE)
    rows, sessions = 0, set()
    while ids := list(skipped_before(cut_off).order_by("id").values_list("id", flat=True)[:PRUNE_BATCH]):
        with transaction.atomic():
            batch = FileUpload.objects.filter(id__in=ids, status=SKIPPED)
            groups = batch.order_by().values_list("session_id", "skip_reason").annotate(n=Count("id"), size=Sum("size"))
            for session_id, reason, n, size in groups:
                _fold(session_id, reason or "skipped", n, size or 0)
                sessions.add(session_id)
            rows += batch.delete()[0]
    return rows, len(sessions)


def _fold(session_id: int, reason: str, n: int, size: int) -> None:
    # Under the session row's lock: its skips are read, added to and written back.
    skips = SyncSession.objects.select_for_update().values_list("skips", flat=True).get(pk=session_id)
    skips[reason] = skips.get(reason, 0) + n
    SyncSession.objects.filter(pk=session_id).update(skips=skips, skipped_bytes=F("skipped_bytes") + size)
