"""Small files sent by the plan itself (`upload --sync` to a local destination): each file's row is
written once, settled, instead of inserted pending, claimed and recorded (three writes of a row
with four indexes: most of a first sync's cost on PostgreSQL).

No other session's claim may take a file while it is being sent without a row. On PostgreSQL the
sending session holds a shared advisory lock keyed by its id from its first part until the rows
of its last part are committed; a claim of another session of the project takes that key
exclusively (catalog.lock_project), so it waits, then sees the rows and catalog entries. The
parts' rows are written by a recorder thread while the next part is sent. On SQLite a part is
sent inside the transaction that writes its rows (IMMEDIATE: no other writer meanwhile). While
another session of the project runs, or ran since this one began, nothing is sent this way (a
look before each part): the rows go pending and the claims sort it out (files.claim).

What a crash loses: the rows of the parts not yet written, never a file. The resumed scan plans
those files again (they are not in the catalog) and they are copied again; none is counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from django.db import connection, transaction

from projects import localfile
from projects.destinations import Destination
from sessions_app import bulk, catalog, shutdown
from sessions_app.files import PLANNED_COLUMNS, Outcome
from sessions_app.recorder import Recorder
from sessions_app.models import FileStatus, FileUpload, SyncSession
from sessions_app.transferring import Transfer

log = logging.getLogger(__name__)

PART_FILES = 2000  # files sent, then written, at a time
PART_BYTES = 64 * 1024 * 1024
SIZE_AT = PLANNED_COLUMNS.index("size")
VERIFY_AT = PLANNED_COLUMNS.index("verify_remote")


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


class Sender:
    """Sends the plan's files below the destination's inline size, part by part."""

    def __init__(self, session: SyncSession, dest: Destination, transfer: Transfer):
        self.session, self.dest, self.transfer = session, dest, transfer
        self.below = dest.inline_below
        self.on = self.below > 0
        self.source_dir = session.project.source_dir
        # PostgreSQL: parts written by a recorder thread, under the session's advisory lock.
        self.pipelined = connection.vendor == "postgresql"
        self._recorder: Recorder | None = None
        self._locked = False

    def send_part(self, rows: list[tuple], destination: str,
                  write: Callable[[list[Outcome], list[tuple]], None]) -> bool:
        """Send what it can of a part, then have `write(sent, rest)` write its rows: by the recorder
        thread while the next part is sent (pipelined), else in the transaction the files were sent
        in. True if rows are left for the upload tasks."""
        if self.pipelined:
            sent, rest = self.send(rows, destination)
            self.then(write, sent, rest)
            return bool(rest)
        with transaction.atomic():
            sent, rest = self.send(rows, destination)
            write(sent, rest)
        return bool(rest)

    def send(self, rows: list[tuple], destination: str) -> tuple[list[Outcome], list[tuple]]:
        """Send what it can of the rows: (outcomes of the files sent, rows left for the upload
        tasks: larger files, those to check at the destination first, those whose transfer failed
        but may work on another try). Not pipelined: call inside the transaction that writes both."""
        if not self.on or not rows or not self._alone():
            return [], rows
        small = [r for r in rows if r[SIZE_AT] < self.below and not r[VERIFY_AT]]
        rest = [r for r in rows if r[SIZE_AT] >= self.below or r[VERIFY_AT]]
        sent = []
        with localfile.folders_kept():
            for row in bulk.unsaved(FileUpload, list(PLANNED_COLUMNS), small):
                row.destination = destination
                outcome = self.transfer(self.dest, row, self.source_dir, 1)  # no backoff here: the tasks retry
                if outcome.status == FileStatus.FAILED and not row.error_permanent or (
                        outcome.status == FileStatus.PENDING):
                    rest.append(_planned(row))  # the upload tasks try it again, with backoff
                else:
                    sent.append(outcome)
        return sent, rest

    def then(self, write: Callable[..., None], *args: object) -> None:
        """Run a write of the plan after the parts' writes before it: in the recorder thread when
        pipelined (its error comes out of the next call, or of close()), else at once."""
        if self._recorder is None:
            write(*args)
        else:
            self._recorder.submit(write, *args)

    def close(self) -> None:
        """Wait for the parts' writes; then let other sessions' claims through."""
        try:
            if self._recorder is not None:
                self._recorder.close()
        finally:
            self._recorder = None
            self._unlock()

    def _let_go(self) -> None:
        """Sending is over before the plan is (another session came): once the parts sent are
        written, that session's claims need not wait for the rest of the scan."""
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
                self._recorder = Recorder(f"plan-{self.session.pk}")
            others = catalog.others_since(self.session)
        else:
            others = catalog.lock_project(self.session)
        if others or shutdown.requested():
            self.on = False
            self._let_go()
            if others:
                self.session.append_log(f"another session of the project ({others[0].pk}) is at work: the rest of "
                                        f"the files go through upload tasks")
        return self.on


def _planned(row: FileUpload) -> tuple:
    return tuple(getattr(row, name) for name in PLANNED_COLUMNS)
