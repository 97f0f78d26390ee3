"""The catalog: what we know is at each destination of a project, one entry per object.

It answers "is this file already there?" without asking the destination or the rows of earlier
sessions, so a sync writes rows only for files that need work and lists the destination only
when it must (see planning.py).

- `open_for()`   the project's catalog of a destination (created on first use).
- `Cursor`       entries in key order, a keyset page at a time, for the plan's merge.
- `reconcile()`  fold a full listing of the destination in: adopt what is there, drop what is not.
- `adopt()`      files the plan found at the destination: their entries now vouch for them.
- `record()`     objects that arrived (uploads), in the transaction that writes their rows' status.
- `arrived()`, `busy_keys()`   what other sessions of the project did or are doing (claims).
- `vouches_for()`   one file, for the upload queue.
- `tally()`, `tally_changed()`   what the entries add up to, stored on the catalog (the sweep).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone

from projects.destinations import Destination, RemoteObject
from projects.models import Project
from sessions_app import bulk
from sessions_app.models import (
    ACTIVE_STATUSES, Catalog, CatalogEntry, FileStatus, FileUpload, SyncSession,
)

log = logging.getLogger(__name__)

PAGE = 5000
WRITE_BATCH = 5000
SAMPLES = 20  # keys named in a session log per kind of finding
SKIP_ARRIVED = "uploaded meanwhile"
ARRIVAL_FIELDS = ("relative_path", "size", "mtime", "checksum", "remote_id", "session_id", "arrived_at")
# The fields of a file row an entry takes (record_arrivals), in its order.
ARRIVAL = ("remote_key", "relative_path", "size", "mtime", "checksum", "remote_id", "uploaded_at")
_arrival = operator.attrgetter(*ARRIVAL)


class Known(NamedTuple):
    """An entry as the plan sees it. mtime None: only a listing vouches for the object."""

    key: str
    size: int
    mtime: float | None
    session_id: int | None = None  # the session that put it there


NOTHING = ("", -1, None, None)
_KEY = connection.ops.quote_name("key")  # what `Cursor.match` answers for a key without an entry

def open_for(project: Project, dest: Destination) -> Catalog:
    catalog, _ = Catalog.objects.get_or_create(project=project, destination=dest.identity(),
                                               defaults={"source_dir": project.source_dir})
    return catalog


def find(project: Project, dest: Destination) -> Catalog | None:
    """The catalog if there is one, creating nothing (a dry run)."""
    if project.pk is None:
        return None
    return Catalog.objects.filter(project=project, destination=dest.identity()).first()


# -- reading in key order ----------------------------------------------------------------------------


def _page(catalog_id: int, after: str | None, size: int) -> list[tuple]:
    # Plain SQL and fetchall: the ORM's row-by-row iteration doubled the cost of a no-op re-sync.
    sql = (f"SELECT {_KEY}, size, mtime, session_id FROM {CatalogEntry._meta.db_table} WHERE catalog_id = %s"
           f"{f' AND {_KEY} > %s' if after is not None else ''} ORDER BY {_KEY} LIMIT %s")
    params = [catalog_id, *([after] if after is not None else []), size]
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    # The walk along the (catalog, key) index, whatever the statistics say: right after a big first
    # sync they may still describe a small table (before autovacuum's ANALYZE, or with it off), and
    # the planner then sorted every remaining entry of the catalog for each page (134 ms instead of 2
    # at 200,000 entries). SET LOCAL lasts to the end of the transaction: put back if it is the caller's.
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if nested:
            cursor.execute("SET LOCAL enable_sort = on; SET LOCAL enable_bitmapscan = on")
    return rows


def entries(catalog_id: int, page: int = PAGE) -> Iterator[Known]:
    """Every entry in key order. Keyset pages rather than one server-side cursor: each page is a
    short range scan of the (catalog, key) index, with no transaction held open across writes."""
    after = None
    while rows := _page(catalog_id, after, page):
        yield from map(Known._make, rows)
        after = rows[-1][0]


class Cursor:
    """Answers `match(keys)` for keys asked in (mostly) ascending order, walking the entries once.
    A key asked out of order (a name that NFC normalisation moved) is looked up on its own."""

    def __init__(self, catalog_id: int | None, page: int = PAGE):
        self._catalog_id, self._page = catalog_id, page
        self._rows: list[tuple] = []  # the current page, from _at on
        self._at = 0
        self._after: str | None = None
        self._done = catalog_id is None
        self._last = ""

    def get(self, key: str) -> Known | None:
        found = self.match([key])[0]
        return None if found is NOTHING else Known._make(found)

    def match(self, keys: list[str]) -> list[tuple]:
        """(key, size, mtime, session) of each key's entry, or NOTHING. One tight loop per batch: it runs
        for every file of every sync."""
        out = []
        rows, at, last = self._rows, self._at, self._last
        for key in keys:
            if key < last:
                out.append(self._lookup(key))
                continue
            last = key
            while True:
                while at < len(rows) and rows[at][0] < key:
                    at += 1
                if at < len(rows) or self._done:
                    break
                rows, at = self._next_page(), 0
            out.append(rows[at] if at < len(rows) and rows[at][0] == key else NOTHING)
        self._rows, self._at, self._last = rows, at, last
        return out

    def _next_page(self) -> list[tuple]:
        page = _page(self._catalog_id, self._after, self._page)
        self._done = len(page) < self._page
        if page:
            self._after = page[-1][0]
        return page

    def _lookup(self, key: str) -> tuple:
        if self._catalog_id is None:
            return NOTHING
        found = CatalogEntry.objects.filter(catalog_id=self._catalog_id, key=key)
        return found.values_list("key", "size", "mtime", "session_id").first() or NOTHING


# -- the destination's own word ----------------------------------------------------------------------


def reconciled(known: Known | None, remote: RemoteObject | None) -> Known | None:
    """What an entry becomes once a listing has been seen: gone when the object is missing; known
    only by the listing when the object is new to us or changed size behind our back."""
    if remote is None:
        return None
    if known is None or known.size != remote.size:
        return Known(remote.key, remote.size, None)
    return known


@dataclass
class Reconciliation:
    """What a listing changed in the catalog (with the first keys of each kind, for the log)."""

    listed: int = 0
    found: int = 0  # at the destination, not in the catalog
    missing: int = 0  # in the catalog, not at the destination
    changed: int = 0  # a different size there than we recorded
    samples: list[str] = field(default_factory=list)

    def note(self, what: str, key: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if what != "found" and len(self.samples) < SAMPLES:
            self.samples.append(f"  {what} at destination: {key}")

    def lines(self) -> list[str]:
        return [f"destination listed: {self.listed} objects; {self.found} not in the catalog (adopted where a "
                f"source file of the same size matches), {self.missing} missing (uploaded again), {self.changed} "
                f"changed there (compared by size)", *self.samples]


def reconcile(catalog: Catalog, listing: Iterable[RemoteObject]) -> Reconciliation:
    """Merge a full listing (key order) into the catalog (key order). Every write is to a key at
    or below the last page read, so the pages still to come are not disturbed."""
    result = Reconciliation()
    writes = _Writes(catalog)
    mine, theirs = entries(catalog.pk), iter(listing)
    known, remote = next(mine, None), next(theirs, None)
    while known is not None or remote is not None:
        if remote is not None and (known is None or remote.key < known.key):
            result.listed += 1
            result.note("found", remote.key)
            writes.put(reconciled(None, remote))
            remote = next(theirs, None)
        elif remote is None or known.key < remote.key:
            result.note("missing", known.key)
            writes.drop(known.key)
            known = next(mine, None)
        else:
            result.listed += 1
            if known.size != remote.size:
                result.note("changed", known.key)
                writes.put(reconciled(known, remote))
            known, remote = next(mine, None), next(theirs, None)
    writes.flush()
    Catalog.objects.filter(pk=catalog.pk).update(listed_at=timezone.now())
    return result


class _Writes:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.puts: list[tuple] = []
        self.drops: list[str] = []

    def put(self, known: Known) -> None:
        self.puts.append((self.catalog.pk, known.key, known.size, known.mtime, None, timezone.now()))
        if len(self.puts) >= WRITE_BATCH:
            self.flush()

    def drop(self, key: str) -> None:
        self.drops.append(key)
        if len(self.drops) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        with transaction.atomic():
            if self.puts:
                hold(self.catalog.pk)
            bulk.upsert_tuples(CatalogEntry, ("catalog_id", "key", "size", "mtime", "session_id", "arrived_at"),
                               self.puts, unique=("catalog_id", "key"), update=("size", "mtime"))
            CatalogEntry.objects.filter(catalog=self.catalog, key__in=self.drops).delete()
        self.puts, self.drops = [], []


def extras(catalog: Catalog, session: SyncSession) -> list[str]:
    """Objects only a listing vouches for: at the destination, but no file of the session's scan
    matched them (neither adopted nor about to replace them)."""
    qs = catalog.entries.filter(mtime__isnull=True).exclude(key__in=session.files.values("remote_key"))
    count = qs.count()
    if not count:
        return []
    keys = qs.order_by("key").values_list("key", flat=True)[:SAMPLES]
    return [f"{count} objects at the destination match no source file (extras, left alone)",
            *(f"  extra: {key}" for key in keys)]


def note_source(catalog: Catalog, source_dir: str) -> None:
    """The source folder the catalog's entries come from from now on."""
    if catalog.source_dir != source_dir:
        Catalog.objects.filter(pk=catalog.pk).update(source_dir=source_dir)
        catalog.source_dir = source_dir


# -- writes as files are planned and uploaded ----------------------------------------------------------


def hold(catalog_id: int) -> None:
    """Before entries go in (inside their transaction): the catalog's project's row, held, so that
    no deletion of the project leaves them behind (projects.models.ProjectQuerySet)."""
    Project.objects.filter(pk=Subquery(Catalog.objects.filter(pk=catalog_id).values("project_id"))).hold()


def adopt(catalog_id: int, session_id: int, found: Sequence[tuple[str, str, int, float]]) -> None:
    """(key, relative_path, size, mtime) of source files the plan found at the destination already:
    their entries vouch for them from now on. Call inside the batch's transaction."""
    if not found:
        return
    hold(catalog_id)
    now = timezone.now()
    rows = [(catalog_id, key, "" if path == key else path, size, mtime, session_id, now)
            for key, path, size, mtime in found]
    bulk.upsert_tuples(CatalogEntry, ("catalog_id", "key", "relative_path", "size", "mtime", "session_id",
                                      "arrived_at"), rows, unique=("catalog_id", "key"),
                       update=("relative_path", "size", "mtime", "session_id", "arrived_at"))


def arrives(row: FileUpload) -> bool:
    """Is the row, as its transfer left it, an object now at the destination?"""
    return arrives_as(row.status, row.skip_reason)


def arrives_as(status: str, skip_reason: str) -> bool:
    """arrives() of a row with this status and skip reason. (A remote's "duplicate" answer means
    it has the file: as good as an upload of ours.)"""
    return status == FileStatus.UPLOADED or (status == FileStatus.SKIPPED and skip_reason == "duplicate")


# arrives(), for the database (PostgreSQL's entries are made from the rows).
_ARRIVED_SQL = (f"(f.status = '{FileStatus.UPLOADED}' OR (f.status = '{FileStatus.SKIPPED}' "
                f"AND f.skip_reason = 'duplicate'))")


def record(catalog_id: int, session_id: int, rows: Iterable[FileUpload], *, inserted_after: int | None = None) -> None:
    """Entries for rows whose objects arrived. Call inside the transaction writing their status, so
    the catalog and the rows never disagree; that transaction holds their project already
    (files.hold). `inserted_after`: the rows were just inserted, with ids above it
    (files.add_sent), and have no primary key on them."""
    if connection.vendor == "postgresql":
        if inserted_after is not None:
            _record_from_rows(catalog_id, session_id, "f.session_id = %s AND f.id > %s AND " + _ARRIVED_SQL,
                              [session_id, inserted_after])
        elif ids := [r.pk for r in rows if arrives(r)]:
            _record_from_rows(catalog_id, session_id, "f.id = ANY(%s)", [ids])
        return
    record_arrivals(catalog_id, session_id, [_arrival(r) for r in rows if arrives(r)])


def record_arrivals(catalog_id: int, session_id: int, arrivals: Sequence[tuple]) -> None:
    """record() of rows given as their ARRIVAL values (files.Sent.arrivals: no instances), under
    the same conditions."""
    if not arrivals:
        return
    now = timezone.now()
    tuples = [(catalog_id, key, "" if path == key else path, size, mtime, checksum, remote_id, session_id, at or now)
              for key, path, size, mtime, checksum, remote_id, at in arrivals]
    bulk.upsert_tuples(CatalogEntry, ("catalog_id", "key") + ARRIVAL_FIELDS, tuples, unique=("catalog_id", "key"),
                       update=ARRIVAL_FIELDS)


def _record_from_rows(catalog_id: int, session_id: int, where: str, params: list) -> None:
    """The entries made by the database from the rows just written (same transaction) that `where`
    picks: no value of a row crosses to the database a second time (a first sync writes 200,000)."""
    qn = connection.ops.quote_name
    entry, row = qn(CatalogEntry._meta.db_table), qn(FileUpload._meta.db_table)
    updates = ", ".join(f"{qn(name)} = EXCLUDED.{qn(name)}" for name in ARRIVAL_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {entry} (catalog_id, {_KEY}, relative_path, size, mtime, checksum, remote_id, session_id, "
            f"arrived_at) SELECT DISTINCT ON (f.remote_key) %s, f.remote_key, CASE WHEN f.relative_path = f.remote_key "
            f"THEN '' ELSE f.relative_path END, f.size, f.mtime, f.checksum, f.remote_id, %s, "
            f"COALESCE(f.uploaded_at, now()) FROM {row} f WHERE {where} ORDER BY f.remote_key, f.id DESC "
            f"ON CONFLICT (catalog_id, {_KEY}) DO UPDATE SET {updates}",
            [catalog_id, session_id, *params])


# -- other sessions of the project ---------------------------------------------------------------------


def others_since(session: SyncSession) -> list[SyncSession]:
    """Other sessions of the project running now, or that ended after this one began: they may
    have uploaded (or be uploading) files this one planned."""
    return list(_others_since(session).only("pk", "status"))


def _others_since(session: SyncSession) -> QuerySet[SyncSession]:
    return (SyncSession.objects.filter(project_id=session.project_id)
            .filter(Q(status__in=ACTIVE_STATUSES) | Q(finished_at__gte=session.created_at)).exclude(pk=session.pk))


class OthersSince:
    """others_since(session) asked again and again (before each part a plan sends): its SQL made
    once, the ids of those sessions each time (the query's making was most of each look)."""

    def __init__(self, session: SyncSession):
        self.sql, self.params = _others_since(session).values_list("pk", flat=True).query.sql_with_params()

    def __call__(self) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(self.sql, self.params)
            return [pk for pk, in cursor.fetchall()]


SENDING_LOCKS = 0x5E4D  # PostgreSQL advisory locks (this, a session's id): a plan sending files (sending.py)


def lock_project(session: SyncSession) -> list[SyncSession]:
    """Inside a claim's transaction: the project's row lock, so the claims of all its sessions
    take turns (a claim sees every row another one moved to uploading), then `others_since`; on
    PostgreSQL, waits for the running ones that are sending files without rows yet (sending.py)."""
    # NO KEY UPDATE: a mutex among claimers that lets the holds (KEY SHARE) of transactions writing
    # the project's rows through (ProjectQuerySet.hold); FOR UPDATE deadlocked with a scan
    # committing its rows.
    list(Project.objects.select_for_update(no_key=True).filter(pk=session.project_id).values_list("pk", flat=True))
    others = others_since(session)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for other in others:
                if other.status in ACTIVE_STATUSES:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [SENDING_LOCKS, other.pk])
    return others


def busy_keys(others: Sequence[SyncSession], destination: str | None = None) -> QuerySet:
    """Remote keys other running sessions are uploading right now (a subquery); to the project's
    destination of that name, when given."""
    running = [s.pk for s in others if s.status in ACTIVE_STATUSES]
    rows = FileUpload.objects.filter(session_id__in=running, status=FileStatus.UPLOADING)
    return (rows if destination is None else rows.filter(destination=destination)).values("remote_key")


def arrived(catalog_id: int, rows: Sequence[FileUpload]) -> dict[int, int | None]:
    """Claimed rows whose file the catalog already vouches for (same key, size and mtime), as
    {row pk: the session that put it there}: another session got there first."""
    found = {
        key: (size, mtime, session_id)
        for key, size, mtime, session_id in CatalogEntry.objects.filter(
            catalog_id=catalog_id, key__in=[r.remote_key for r in rows]
        ).values_list("key", "size", "mtime", "session_id")
    }
    done = {}
    for r in rows:
        entry = found.get(r.remote_key)
        if entry is not None and entry[:2] == (r.size, r.mtime):
            done[r.pk] = entry[2]
    return done


def in_doubt(project_id: int, session_id: int) -> set[str]:
    """Remote keys whose upload another session may have started but never recorded (its worker
    died, then the session ended or was cancelled): the object may be there. The plan has them
    checked (HEAD) before any upload."""
    cut_off = (Q(status=FileStatus.UPLOADING) & ~Q(session__status__in=ACTIVE_STATUSES)) | Q(
        status=FileStatus.CANCELLED, claimed_at__isnull=False
    )
    rows = FileUpload.objects.filter(cut_off, project_id=project_id).exclude(session_id=session_id)
    return set(rows.values_list("remote_key", flat=True))


def vouches_for(project: Project, destination: str, key: str, size: int, mtime: float) -> bool:
    """Does an entry say this file is at the destination (its identity) as it is now?"""
    return CatalogEntry.objects.filter(catalog__project=project, catalog__destination=destination, key=key,
                                       size=size, mtime=mtime).exists()


# -- tallies ----------------------------------------------------------------------------------------


def tally(catalog_id: int) -> None:
    """Store what the catalog's entries add up to (objects, bytes)."""
    started = timezone.now()  # changes made while counting are counted by the next tally
    agg = CatalogEntry.objects.filter(catalog_id=catalog_id).aggregate(n=Count("id"), size=Sum("size"))
    Catalog.objects.filter(pk=catalog_id).update(object_count=agg["n"], byte_count=agg["size"] or 0,
                                                 tallied_at=started)


def tally_changed() -> list[str]:
    """Tally the catalogs never tallied or whose project had a session at work since."""
    busy = SyncSession.objects.filter(project_id=OuterRef("project_id")).filter(
        Q(heartbeat_at__gte=OuterRef("tallied_at")) | Q(finished_at__gte=OuterRef("tallied_at")))
    due = list(Catalog.objects.filter(Q(tallied_at__isnull=True) | Exists(busy)).values_list("id", flat=True))
    for catalog_id in due:
        tally(catalog_id)
    return [f"catalog {catalog_id}: tallied" for catalog_id in due]
