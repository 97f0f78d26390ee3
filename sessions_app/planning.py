"""Plan a sync: which of the scanned files need work, decided against the catalog.

The scan (in key order) is merged with the catalog's entries, streamed in key order. A file whose
entry has its size and mtime is *unchanged*: counted, not stored. A file whose entry only a
listing vouches for (mtime unknown) and has its size is *already at the destination*: counted,
and its entry adopted. Every other file gets a `pending` row. So sessions keep rows only for work,
and a no-op re-sync writes none.

How far the catalog is trusted this time (`Mode`, decided by `mode_for`):
- trust:  the catalog as it is; the destination is not asked at all (the default);
- list:   the destination is listed first and reconciled into the catalog (catalog.reconcile): on
          the first sync of a destination, when asked (--check-destination, admin "Check
          destination"), and every `check_destination_every` days;
- fresh:  the source folder changed: the catalog's entries came from another folder, so every
          file is planned as new.

With several destinations, one scan is planned against each destination's catalog in turn, batch
by batch: each destination gets its own rows (`FileUpload.destination`), skips and counters, so a
destination whose catalog has a file costs nothing for it while another one gets a row.

The scan walks in a thread of its own and hands batches over a bounded queue to the calling
thread, which merges and writes (COPY on PostgreSQL): walking, planning and inserting overlap,
and memory stays flat. Every database call stays on the calling thread's connection.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from projects.destinations import Destination, RemoteObject
from projects.models import Project
from projects.names import KeyCollisions, Refused, not_utf8
from projects.walking import Entry
from sessions_app import catalog, enqueue, files, sending
from sessions_app.models import Catalog, CatalogEntry, FileStatus, FileUpload, SessionStatus, SyncSession

log = logging.getLogger(__name__)

SKIP_UNCHANGED = "unchanged"
SKIP_REMOTE = "already at destination"
QUEUE_FILES = 40_000  # files walked ahead of the batch being written
# The first batch's files; each next batch twice the last, up to the batch size: the first rows
# (and the first files sent) come as soon as with small batches, the rest with few transactions.
FIRST_BATCH = 5000
COUNT_EVERY_SECONDS = 1.0  # how often skip counts alone are written to the session


@dataclass(frozen=True, slots=True)
class Decision:
    entry: Entry
    key: str
    skip_reason: str  # "" means upload
    destination: str = ""  # its name, when the project has several


@dataclass
class Target:
    """One destination of a sync's plan: its name, the open destination, the names its keys refuse
    (projects/names.py) and, when it takes fewer files than the scan yields, what it accepts."""

    name: str
    dest: Destination
    names: KeyCollisions | None = None
    accepts: Callable[[str], bool] | None = None


@dataclass
class ScanStats:
    files: int = 0
    pending: int = 0
    skipped: int = 0
    counted: bool = False  # the counters are the rows' (no rows before this scan): no recount needed


@dataclass(frozen=True)
class Mode:
    listing: bool  # list the destination and reconcile the catalog first
    trusted: bool  # the catalog's entries vouch for the scanned files
    why: str = ""  # for the session log


def mode_for(project: Project, known: Catalog | None, dest: Destination, *, check: bool = False) -> Mode:
    if known is not None and known.source_dir and known.source_dir != project.source_dir:
        return Mode(False, False, f"source folder changed from {known.source_dir} to {project.source_dir}: every "
                                  f"file is planned as new (the catalog's entries came from the old folder)")
    if not dest.supports_listing:
        why = f"a {dest.kind} destination cannot be listed: the catalog is all we know" if check else ""
        return Mode(False, True, why)
    if check:
        return Mode(True, True, "destination check asked for: listing it")
    if known is None or known.listed_at is None:
        return Mode(True, True, "first sync to this destination: listing it")
    every = project.check_destination_every
    if every is not None and timezone.now() - known.listed_at >= timedelta(days=every):
        return Mode(True, True, f"last listed {known.listed_at:%Y-%m-%d %H:%M}, over check_destination_every "
                                f"({every:g} days) ago: listing it")
    return Mode(False, True)


def decide(size: int, mtime: float, known: tuple | None) -> str:
    """Why a file needs no work ("" when it does), given its entry (key, size, mtime) if any."""
    if known is None or known[1] != size:
        return ""
    if known[2] is None:
        return SKIP_REMOTE
    return SKIP_UNCHANGED if known[2] == mtime else ""


# -- a session's plan ----------------------------------------------------------------------------------

Scan = Callable[[bool], Iterator[Entry]]  # sort -> the scan's entries
CANCEL_CHECK_SECONDS = 0.5


def plan_session(session: SyncSession, targets: Destination | list[Target], scan: Scan, *, batch_size: int,
                 start_uploads: bool, names: KeyCollisions | None = None,
                 sender: sending.Sender | None = None) -> ScanStats:
    """Plan every scanned file of the session for each destination and write what needs work;
    upload tasks start with the first pending rows. Stops early when the session is cancelled.
    A bare destination is one target named "default", whose names are `names`. With a `sender`
    (one destination only), the files it can send go before their rows are written, settled."""
    if isinstance(targets, Destination):
        targets = [Target("default", targets, names)]
    several = len(targets) > 1
    plans = [_Plan(session, t, several, start_uploads) for t in targets]
    if sender is not None and not several:
        plans[0].writer.sender = sender
        if plans[0].all_new:  # a first sync sends nearly every file: the copier starts while the scan does
            sender.start()
    try:
        scanned, complete = _plan_batches(session, plans, scan, batch_size)
    finally:
        if sender is not None:
            sender.close()  # the parts' rows are in (or their error raised)
    complete = complete and not cancelled(session)
    for plan in plans:
        plan.writer.finish(plan.known, plan.listed, complete)
    stats = ScanStats(counted=True)
    for plan in plans:
        stats.files += plan.writer.stats.files
        stats.pending += plan.writer.stats.pending
        stats.skipped += plan.writer.stats.skipped
        stats.counted = stats.counted and plan.writer.first_run
    if several:
        each = "; ".join(f"{p.target.name}: {p.writer.stats.pending} to upload, {p.writer.stats.skipped} skipped"
                         for p in plans)
        session.append_log(f"scan: {scanned} files scanned once for {len(plans)} destinations ({each})")
    return stats


def _plan_batches(session: SyncSession, plans: list[_Plan], scan: Scan, batch_size: int) -> tuple[int, bool]:
    """Plan and write the scan a batch at a time; (files scanned, whether the scan was complete)."""
    several = len(plans) > 1
    complete, asked = True, time.monotonic()
    skips = files.Skips()
    scanned = 0
    for batch in _walk(scan(any(p.merge.needs_order for p in plans)), batch_size):
        scanned += len(batch)
        for plan in plans:
            plan.write(batch)
            if not plan.writer.start_uploads:  # its rows started the upload tasks: for every destination
                for other in plans:
                    other.writer.start_uploads = False
        # A cancel is noticed within a second; a query per batch cost a tenth of a no-op re-sync.
        if time.monotonic() - asked >= CANCEL_CHECK_SECONDS:
            asked = time.monotonic()
            if cancelled(session):
                complete = False
                break
        skips = _count(session, plans, skips) if several else skips
    if several:
        _count(session, plans, skips, final=True)
    return scanned, complete


def _count(session: SyncSession, plans: list[_Plan], skips: files.Skips, final: bool = False) -> files.Skips:
    """Several destinations: their skips, summed for the session, at most once a second."""
    if not final and time.monotonic() - plans[0].writer.written_at < COUNT_EVERY_SECONDS:
        return skips
    total = files.Skips(saved=skips.saved)
    for plan in plans:
        total.add(plan.writer.skips.by_reason, plan.writer.skips.size)
    files.count_skips(session, total, {plan.target.name: plan.writer.skips for plan in plans})
    for plan in plans:
        plan.writer.written_at = time.monotonic()
    return total


class _Plan:
    """One destination's side of a session's plan: its catalog, mode, merge and writer."""

    def __init__(self, session: SyncSession, target: Target, several: bool, start_uploads: bool):
        project, dest = session.project, target.dest
        self.session, self.target = session, target
        self.known = catalog.open_for(project, dest)
        self.mode = mode_for(project, self.known, dest, check=bool(session.params.get("check_destination")))
        notes = [self.mode.why] if self.mode.why else []
        self.listed = 0  # objects the listing found, if one was taken: only they can be extras
        if self.mode.listing:
            found = catalog.reconcile(self.known, dest.list_existing())
            self.listed = found.listed
            notes += found.lines()
        if notes:
            head = f"destination {target.name}: " if several else ""
            session.append_log("\n".join(head + line for line in notes))
        self.writer = _Writer(session, self.known.pk, start_uploads, target.name, saves_skips=not several)
        trusted = self.mode.trusted and self.known.entries.exists()
        self.all_new = not trusted  # no entry vouches for a file: every file scanned is planned as new
        self.merge = _Merge(dest, self.known.pk if trusted else None,
                            catalog.in_doubt(project.pk, session.pk), target.names,
                            (session.pk, session.files.filter(destination=target.name)))

    def write(self, batch: list[Entry]) -> None:
        if self.target.accepts is not None:
            batch = [e for e in batch if self.target.accepts(e.relative_path)]
        self.writer.write(*self.merge.plan(batch))
        if self.merge.refused:
            files.add_refused(self.session, [(r.path, r.key, r.entry.size, r.entry.mtime, r.reason)
                                             for r in self.merge.refused], self.target.name)


class _Merge:
    """The scan against the catalog, a batch at a time."""

    def __init__(self, dest: Destination, catalog_id: int | None, doubt: set[str], names: KeyCollisions | None,
                 mine: tuple[int, QuerySet[FileUpload]]):
        self.key_for, self.cursor, self.doubt = dest.key_for, catalog.Cursor(catalog_id), doubt
        self.names = names
        self.session_id, self.rows = mine  # the session planning, and its rows of this destination
        self.needs_order = catalog_id is not None  # key order only matters when merging with entries
        self.refused: list[Refused] = []

    def plan(self, batch: list[Entry]) -> tuple[list[tuple], list[tuple], dict[str, int], int]:
        """(rows to insert, entries to adopt, skips by reason, skipped bytes); the files whose name
        cannot be a key wait in `refused` for the writer."""
        rows, adopted, skips, skipped_bytes = [], [], {}, 0
        if self.names is not None:
            batch, keys, self.refused = self.names.split(batch)
        else:
            keys = [self.key_for(e.relative_path) for e in batch]
        found = self.cursor.match(keys)
        mine = self._rows_of_mine([e for e, known in zip(batch, found) if known[3] == self.session_id])
        for e, key, known in zip(batch, keys, found):
            if e.relative_path in mine:  # a scan run again: this session's row has it (and counts it)
                continue
            reason = decide(e.size, e.mtime, known)
            if not reason:
                rows.append((e.relative_path, key, e.size, e.mtime, e.device, e.inode, key in self.doubt))
                continue
            skips[reason] = skips.get(reason, 0) + 1
            skipped_bytes += e.size
            if reason == SKIP_REMOTE:
                adopted.append((key, e.relative_path, e.size, e.mtime))
        return rows, adopted, skips, skipped_bytes

    def _rows_of_mine(self, entries: list[Entry]) -> set[str]:
        """Of files whose entry this session put there (a scan run again after a crash), those it has
        a row for: uploaded (or sent) before the crash, not to be planned or counted twice. The
        others it adopted from a listing: skips, counted again."""
        if not entries:
            return set()
        paths = [e.relative_path for e in entries]
        return set(self.rows.filter(relative_path__in=paths).values_list("relative_path", flat=True))


class _Writer:
    """Writes a session's plan: a batch's rows, adopted entries and counters in one transaction;
    skip counts alone at most once a second (a no-op re-sync writes the session row, not a row
    per file)."""

    def __init__(self, session: SyncSession, catalog_id: int, start_uploads: bool, destination: str = "default",
                 *, saves_skips: bool = True):
        self.session, self.catalog_id, self.start_uploads = session, catalog_id, start_uploads
        # Its rows carry the destination's name and count on its counters. With several
        # destinations their skips are written together (plan_session), not by each writer.
        self.destination, self.saves_skips = destination, saves_skips
        self.stats = ScanStats()
        self.sender: sending.Sender | None = None  # plan_session's, if any
        self.skips = files.Skips()
        self.written_at = 0.0
        files.restart_skips(session)  # a re-run scan counts its skips again
        self.first_run = not session.files.filter(destination=destination).exists()

    def write(self, rows: list[tuple], adopted: list[tuple], skips: dict[str, int], skipped_bytes: int) -> None:
        self.stats.files += len(rows) + sum(skips.values())
        self.stats.skipped += sum(skips.values())
        if not rows and not adopted:
            due = self.saves_skips and time.monotonic() - self.written_at >= COUNT_EVERY_SECONDS
            self._then(self._adopt_and_count, [], skips, skipped_bytes, due)
            return
        head = (self.session.pk, self.session.project_id)
        rows = [head + row for row in rows]
        if self.sender is None:
            self._insert([], rows, adopted, skips, skipped_bytes)
            pending = bool(rows)
        else:
            pending = False
            for part in sending.parts(rows):
                pending = self.sender.send_part(part, self.destination, self._insert) or pending
            self._then(self._adopt_and_count, adopted, skips, skipped_bytes, True)
        if pending and self.start_uploads:  # rows went in pending: the upload tasks start
            enqueue.uploads(self.session.pk, self.session.project.upload_tasks)
            self.start_uploads = False

    def _insert(self, sent: files.Sent | list[files.Outcome], rows: list[tuple], adopted: list[tuple] = (),
                skips: dict[str, int] | None = None, skipped_bytes: int = 0) -> None:
        """A batch's (or part's) rows, its adopted entries and skips, in one transaction."""
        with transaction.atomic():
            files.add_sent(self.session, sent, self.catalog_id, first_run=self.first_run, destination=self.destination)
            self.stats.pending += files.add_pending(self.session, rows, first_run=self.first_run,
                                                    destination=self.destination)
            if skips is not None:
                self._adopt_and_count(adopted, skips, skipped_bytes, True)

    def _adopt_and_count(self, adopted: list[tuple], skips: dict[str, int], skipped_bytes: int, save: bool) -> None:
        """Adopted entries and skips (written when `save`), in one transaction. With a sender, only
        in its order (`_then`): its recorder thread writes the counters too."""
        with transaction.atomic(savepoint=False):  # inside _insert's: no savepoint round trips
            catalog.adopt(self.catalog_id, self.session.pk, adopted)
            self.skips.add(skips, skipped_bytes)
            if save and self.saves_skips:
                self._save_skips()

    def _then(self, write: Callable[..., None], *args: object) -> None:
        """A write in the sender's order, if there is one (see sending.Sender.then)."""
        (self.sender.then if self.sender else _now)(write, *args)

    def _save_skips(self) -> None:
        files.count_skips(self.session, self.skips, {self.destination: self.skips})
        self.written_at = time.monotonic()

    def finish(self, known: Catalog, listed: int, complete: bool) -> None:
        """`listed`: the objects the session's listing found. An empty destination (a first sync's)
        left no entry that only a listing vouches for, so there is no need to look for extras: on a
        first sync that look read the whole new catalog (0.2 s of 200,000 files on SQLite)."""
        if self.saves_skips:
            self._save_skips()
        if not complete:
            return
        notes = catalog.extras(known, self.session) if listed else []
        if notes:
            self.session.append_log("\n".join(notes))
        catalog.note_source(known, self.session.project.source_dir)


def _now(write: Callable[..., None], *args: object) -> None:
    write(*args)


def _walk(entries: Iterator[Entry], batch_size: int) -> Iterator[list[Entry]]:
    """Batches of the scan (FIRST_BATCH files, then doubling up to `batch_size`). The scan walks in a
    thread of its own and hands its files over in chunks, at most QUEUE_FILES ahead of the batch
    being written: what is held is that batch and those files, however large the tree."""
    chunk = min(FIRST_BATCH, batch_size)
    handover: queue.Queue = queue.Queue(max(1, QUEUE_FILES // chunk))
    stop = threading.Event()
    end = object()

    def walk() -> None:
        try:
            while not stop.is_set() and (part := list(islice(entries, chunk))):
                _put(part)
            _put(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(exc)
        finally:
            entries.close()  # in this thread: it stops `find`

    def _put(item: object) -> None:
        while not stop.is_set():
            try:
                handover.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def parts() -> Iterator[list[Entry]]:
        while (item := handover.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item

    # With the caller's context: its log lines name the session (logcontext).
    walker = threading.Thread(target=contextvars.copy_context().run, args=(walk,), name="scan-walker", daemon=True)
    walker.start()
    try:
        yield from _doubling(parts(), chunk, batch_size)
    finally:
        stop.set()
        walker.join()


def _doubling(parts: Iterator[list[Entry]], first: int, most: int) -> Iterator[list[Entry]]:
    """The parts' items again, in batches of `first` items, each next one twice the last, up to `most`."""
    size, batch = first, []
    for part in parts:
        batch += part
        while len(batch) >= size:
            yield batch[:size]
            batch, size = batch[size:], min(2 * size, most)
    if batch:
        yield batch


def cancelled(session: SyncSession) -> bool:
    return SyncSession.objects.filter(pk=session.pk, status=SessionStatus.CANCELLED).exists()


def fill(session: SyncSession, batches: Iterable[list[FileUpload]], start_uploads: bool) -> ScanStats:
    """Insert rows planned elsewhere (an import's listing) batch by batch; upload tasks start with
    the first pending rows. Stops early when the session is cancelled."""
    stats, uploads_started = ScanStats(), False
    for rows in batches:
        new = files.add_planned(session, rows)
        pending = sum(1 for r in new if r.status == FileStatus.PENDING)
        stats.files += len(new)
        stats.pending += pending
        stats.skipped += len(new) - pending
        if start_uploads and pending and not uploads_started:
            enqueue.uploads(session.pk, session.project.upload_tasks)
            uploads_started = True
        if cancelled(session):
            break
    return stats


# -- a dry run ----------------------------------------------------------------------------------------


class RemoteCursor:
    """Walks a key-ordered remote listing alongside a key-ordered scan (dry runs: no catalog writes)."""

    def __init__(self, objects: Iterable[RemoteObject]):
        self._it = iter(objects)
        self._current: RemoteObject | None = next(self._it, None)

    def at(self, key: str) -> RemoteObject | None:
        while self._current is not None and self._current.key < key:
            self._current = next(self._it, None)
        return self._current if self._current is not None and self._current.key == key else None


def preview(project: Project, dest: Destination, scan: Scan, *, check: bool = False) -> Iterator[Decision]:
    """What a session of the (possibly unsaved) project would decide, file by file; writes nothing.
    A listing is merged the way `catalog.reconcile` would fold it in."""
    known = catalog.find(project, dest)
    mode = mode_for(project, known, dest, check=check)
    trusted = known is not None and mode.trusted and CatalogEntry.objects.filter(catalog=known).exists()
    cursor = catalog.Cursor(known.pk if trusted else None)
    remote = RemoteCursor(dest.list_existing()) if mode.listing else None
    for e in scan(trusted or remote is not None):
        if reason := not_utf8(e.relative_path):
            yield Decision(e, "", reason)
            continue
        key = dest.key_for(e.relative_path)
        entry = cursor.get(key)
        if remote is not None:
            entry = catalog.reconciled(entry, remote.at(key))
        yield Decision(e, key, decide(e.size, e.mtime, entry))
