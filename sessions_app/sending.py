"""Small files sent by the plan itself (`upload --sync` to a local destination): each file's row is
written once, settled, instead of inserted pending, claimed and recorded (three writes of a row
with four indexes: most of a first sync's cost on PostgreSQL).

No other session's claim may take a file while it is being sent without a row. On PostgreSQL the
sending session holds a shared advisory lock keyed by its id from its first part until the rows
of its last part are committed; a claim of another session of the project takes that key
exclusively (catalog.lock_project), so it waits, then sees the rows and catalog entries. The
files are copied by a child process (projects/copier.py); while it copies a part, the plan goes
on and a recorder thread writes the rows of the part before. On SQLite a part is copied inside
the transaction that writes its rows (IMMEDIATE: no other writer meanwhile); one transaction
takes the parts of up to HOLD_SECONDS, so that while two parts are copying, the one before
them is written (another writer waits that long at most, against the 30 s SQLite timeout). While
another session of the project runs, or ran since this one began, nothing is sent this way (a
look before each part): the rows go pending and the claims sort it out (files.claim).

What a crash loses: the rows of the parts not yet written, never a file. The resumed scan plans
those files again (they are not in the catalog) and they are copied again; none is counted twice.
"""

from __future__ import annotations

import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.db.transaction import Atomic

from projects.copier import Copier, CopierError
from projects.destinations import Destination
from projects.errors import RemoteError
from sessions_app import bulk, catalog, files, shutdown, transferring
from sessions_app.files import PLANNED_COLUMNS, SIZE_AT, VERIFY_AT, Outcome
from sessions_app.recorder import Recorder
from sessions_app.models import FileUpload, SyncSession

log = logging.getLogger(__name__)

PART_FILES = 2000  # files sent, then written, at a time
PART_BYTES = 64 * 1024 * 1024
# Parts handed to the copier before the first of them is collected, and part writes queued for
# the recorder thread: each side has the next one at hand when it is quicker for a moment.
AHEAD = 2
# SQLite: how long one transaction takes parts in (see above). Its commit waits for the parts
# copying, so the copier idles until the next transaction's first part: ~45 ms a commit, 0.5 s of
# a 200,000-file first sync at half a second.
HOLD_SECONDS = 1.0
# A row's item for the copier: (relative path, key, device, inode).
ITEM = operator.itemgetter(*map(PLANNED_COLUMNS.index, ("relative_path", "remote_key", "device", "inode")))


def parts(rows: list[tuple]) -> Iterator[list[tuple]]:
    """The rows (tuples of PLANNED_COLUMNS) in parts, each sent and written in one transaction."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        size += row[SIZE_AT]
        if i + 1 - start >= PART_FILES or size >= PART_BYTES:
            yield rows[start:i + 1]
            start, size = i + 1, 0
    if start < len(rows) or not rows:
        yield rows[start:]


@dataclass
class _Part:
    """A part on its way: its small files copying in the child, the rest left for the upload tasks."""

    small: list[tuple]
    rest: list[tuple]
    destination: str
    write: Callable[[files.Sent, list[tuple]], None]
    asked: bool = field(default=False)  # its small files were handed to the copier


class Sender:
    """Sends the plan's files below the destination's inline size, part by part, by a copier
    process (projects/copier.py): while it copies a part, this process writes the one before."""

    def __init__(self, session: SyncSession, dest: Destination, *, follow_symlinks: bool):
        self.session, self.dest, self.follow_symlinks = session, dest, follow_symlinks
        self.below = dest.inline_below
        self.on = self.below > 0
        self.source_dir = session.project.source_dir
        # PostgreSQL: parts written by a recorder thread, under the session's advisory lock.
        self.pipelined = connection.vendor == "postgresql"
        self._recorder: Recorder | None = None
        self._copier: Copier | None = None
        self._ahead: deque[_Part] = deque()  # pipelined: the parts copying while the plan goes on
        self._locked = False
        self._others: catalog.OthersSince | None = None  # pipelined: the look for other sessions
        self._held: Atomic | None = None  # SQLite: the transaction the parts go in, while open
        self._held_since = 0.0
        self._copying: deque[_Part] = deque()  # SQLite: the parts copying, each written with a later one

    def start(self) -> None:
        """Start the copier process now rather than with the first part (its start-up then runs
        beside the scan's first batch): for a plan that will send most of its files."""
        if self.on and self._copier is None:
            try:
                self._copier = Copier()
            except CopierError as exc:
                self._stop(exc)

    def send_part(self, rows: list[tuple], destination: str,
                  write: Callable[[files.Sent, list[tuple]], None]) -> bool:
        """Send what it can of a part, then have `write(sent, rest)` write its rows. Pipelined, the
        part is copying when this returns, and its rows are written (by the recorder thread) once
        AHEAD more parts are handed over, or at collect() or close(). On SQLite too it is written once
        AHEAD more parts are copying, in a transaction of up to HOLD_SECONDS of parts (or at
        collect() or close()). True if rows are left for the upload tasks (so far)."""
        if self.pipelined:
            self._ahead.append(part := self._start(rows, destination, write))
            while len(self._ahead) > AHEAD:
                self._finish(self._ahead.popleft())
            return bool(part.rest)
        if self._held is None and self.on:
            self._held, self._held_since = transaction.atomic(), time.monotonic()
            self._held.__enter__()
        with self._rolled_back_on_error():
            part = self._start(rows, destination, write)
        if self._held is None:  # nothing is sent (any more): the part in a transaction of its own
            with transaction.atomic():
                self._finish(part)
            return bool(part.rest)
        with self._rolled_back_on_error():
            self._copying.append(part)
            while len(self._copying) > AHEAD:
                self._finish(self._copying.popleft())  # written while the parts after it copy
        if time.monotonic() - self._held_since >= HOLD_SECONDS:
            self._commit()
        return bool(part.rest)

    def collect(self) -> None:
        """The parts copying, copied and written: pipelined, handed to the recorder thread to
        write; on SQLite, written and committed."""
        while self._ahead:
            self._finish(self._ahead.popleft())
        if self._held is not None:
            self._commit()

    def _commit(self) -> None:
        """SQLite: write the parts copying and commit the parts' transaction."""
        with self._rolled_back_on_error():
            while self._copying:
                self._finish(self._copying.popleft())
        held, self._held = self._held, None
        held.__exit__(None, None, None)

    @contextmanager
    def _rolled_back_on_error(self) -> Iterator[None]:
        """SQLite: an error ends the parts' transaction (rolled back) as it goes up."""
        try:
            yield
        except BaseException as exc:
            held, self._held = self._held, None
            self._copying.clear()
            if held is not None:
                held.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def _start(self, rows: list[tuple], destination: str, write: Callable[..., None]) -> _Part:
        if not self.on or not rows or not self._alone():
            return _Part([], rows, destination, write)
        small = [r for r in rows if r[SIZE_AT] < self.below and not r[VERIFY_AT]]
        part = _Part(small, [r for r in rows if r[SIZE_AT] >= self.below or r[VERIFY_AT]], destination, write)
        if small:
            self.start()
        if small and self._copier is not None:  # else (it could not start) they go to the upload tasks
            try:
                self._copier.submit(self.dest.options, self.source_dir, self.follow_symlinks,
                                    list(map(ITEM, small)))
                part.asked = True
            except CopierError as exc:
                self._stop(exc)
        return part

    def _finish(self, part: _Part) -> None:
        """Its rows made ready here from the copier's answer, then written (see then())."""
        failed, copied = self._outcomes(part)
        self.then(part.write, files.sent(failed, part.destination, copied=copied), part.rest)

    def _outcomes(self, part: _Part) -> tuple[list[Outcome], list[files.Copied]]:
        """The files the copier refused for good, and those it copied; those it did not copy for a
        reason another try may mend go to `part.rest`, for the upload tasks to try with backoff."""
        answers = None
        if part.asked:
            try:
                answers = self._copier.result()
            except CopierError as exc:
                self._stop(exc)
        if answers is None:
            part.rest.extend(part.small)
            return [], []
        failed, copied = [], []
        for planned, (written, size, mtime, error, permanent) in zip(part.small, answers):
            if written is not None:
                copied.append((planned, written, mtime, transferring.change_note(planned[SIZE_AT], size)))
            elif permanent:
                row = bulk.unsaved(FileUpload, list(PLANNED_COLUMNS), [planned])[0]
                row.destination, row.attempts = part.destination, 1
                failed.append(transferring.failed(row, RemoteError(error, permanent=True), 1))
            else:
                part.rest.append(planned)
        return failed, copied

    def _stop(self, exc: CopierError) -> None:
        """The copier failed: the rest of the files go through the upload tasks."""
        if self.on:
            self.on = False
            self.session.append_log(f"{exc}: the rest of the files go through upload tasks")

    def then(self, write: Callable[..., None], *args: object) -> None:
        """Run a write of the plan after the parts' writes before it: in the recorder thread when
        pipelined (its error comes out of the next call, or of close()), else at once."""
        if self._recorder is None:
            write(*args)
        else:
            self._recorder.submit(write, *args)

    def close(self) -> None:
        """Collect the parts copying and wait for the parts' writes; then let other sessions'
        claims through, and end the copier."""
        try:
            self.collect()
            if self._recorder is not None:
                self._recorder.close()
        finally:
            self._recorder = None
            self._unlock()
            if self._copier is not None:
                self._copier.close()
                self._copier = None

    def _let_go(self) -> None:
        """Sending is over before the plan is (another session came): once the parts sent are
        written, that session's claims need not wait for the rest of the scan."""
        self.collect()
        if self._recorder is not None:
            self._recorder.wait()
        self._unlock()

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock_shared(%s, %s)", [catalog.SENDING_LOCKS, self.session.pk])

    def _alone(self) -> bool:
        """Is it still alone? False (and nothing sent from now on) if another session of the project
        is at work or worked since this one began, or this process shuts down."""
        if self.pipelined:
            if not self._locked:  # before the look: a claim from now on waits for the key
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_lock_shared(%s, %s)", [catalog.SENDING_LOCKS, self.session.pk])
                self._locked = True
                self._recorder = Recorder(f"plan-{self.session.pk}", depth=AHEAD)
                self._others = catalog.OthersSince(self.session)
            others = self._others()
        else:
            others = [other.pk for other in catalog.lock_project(self.session)]
        if others or shutdown.requested():
            self.on = False
            self._let_go()
            if others:
                self.session.append_log(f"another session of the project ({others[0]}) is at work: the rest of "
                                        f"the files go through upload tasks")
        return self.on
