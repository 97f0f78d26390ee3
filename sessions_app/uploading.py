"""Upload a session's pending files: claim chunks, transfer concurrently, record in batches.

One `drain()` call is one django-q2 task. It claims pending rows with a conditional update
(safe when the broker delivers a task twice or two tasks race), keeps `upload_workers`
transfers in flight, writes outcomes and counters in batches (from a recorder thread, while the
loop claims on), and hands over to a successor task after UPLOAD_TASK_SECONDS so no task
outlives the cluster's timeout.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings

from projects import localfile
from projects.destinations import Destination
from sessions_app import catalog, files, kinds, leases, lifecycle, logcontext, pacing, shutdown
from sessions_app.recorder import Recorder
from sessions_app.files import Outcome
from sessions_app.models import FileStatus, FileUpload, SessionStatus, SyncSession

log = logging.getLogger(__name__)

INLINE_CHUNK = 1000  # rows a claim takes when the destination sends small files inline
SEND_BATCH = 200  # small files per task of the sender thread: one thread handoff for many files


class Drainer:
    """One task's worth of uploading for one session."""

    def __init__(self, session: SyncSession, *, deadline: float | None, destination: str | None = None):
        self.session = session
        self.destination = destination  # the rows of this destination only (None: every row)
        self.project = session.project
        self.kind = kinds.of(session)
        self.transfer = self.kind.transfer(session)
        self.workers = max(1, session.params.get("workers") or self.project.upload_workers)
        self.max_tries = 1 + self.project.max_retries
        self.deadline = deadline
        self.outcomes: list[Outcome] = []
        self.last_flush = time.monotonic()
        self.stopped = False  # no more claims: cancelled, ended, out of time or shutting down
        self.cancelled = False
        self.shutting_down = False
        self.last_claimed = time.monotonic()
        self.dry = False  # the last claim got fewer rows than it asked for
        self.catalog_id: int | None = None  # of the destination run() gets
        self.lease: leases.Lease | None = None  # on the session and the rows claimed, while run() runs
        self.recorder: Recorder | None = None  # writes the outcomes, while run() runs
        self.pacer = pacing.Pacer(session, workers=self.workers, patience=self.project.throttle_patience)
        self.given_back: list[int] = []  # rows the pacer gave back to pending (the session paused)
        self.busy = 0  # claimed rows not yet back from their transfer
        self.inline_below = 0  # the destination's (run() sets it): smaller files go to the sender thread

    def run(self, dest: Destination) -> bool:
        """Upload until nothing is left to claim; True if this task stopped early (out of time or
        shutting down) and a successor should carry on."""
        self.catalog_id = catalog.open_for(self.project, dest).pk
        with leases.Lease(self.session.pk) as self.lease, Recorder(f"record-{self.session.pk}") as self.recorder:
            return self._run(dest)

    def _run(self, dest: Destination) -> bool:
        # Each future sends a list of rows: one row in the pool, a batch of small files in the sender.
        in_flight: dict[Future, list[FileUpload]] = {}
        # Transfers report here as they finish: wait() over every claimed future cost O(claimed) per file.
        finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self.inline_below = dest.inline_below
        context = contextvars.copy_context  # a copy per future: its log lines name the session (logcontext)
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"upload-{self.session.pk}",
                                initializer=pacing.use, initargs=(self.pacer,)) as pool, \
                ThreadPoolExecutor(1, thread_name_prefix=f"send-{self.session.pk}",
                                   initializer=pacing.use, initargs=(self.pacer,)) as sender:
            while True:
                if not self.shutting_down and shutdown.requested():
                    self._wind_down(in_flight)
                self.pacer.tick()
                if self.pacer.paused and not self.stopped:
                    self._wind_down(in_flight, "paused")
                if not self.stopped and self._wants_more(self.busy):
                    small: list[FileUpload] = []
                    for row in self.claim(self._chunk_size(self.busy)):
                        self.last_claimed = time.monotonic()
                        if row.size < self.inline_below and self.pacer.unthrottled:
                            small.append(row)
                        else:
                            self._start(pool.submit(context().run, self._send, dest, [row]), [row], in_flight,
                                        finished)
                    for i in range(0, len(small), SEND_BATCH):
                        batch = small[i:i + SEND_BATCH]
                        self._start(sender.submit(context().run, self._send, dest, batch), batch, in_flight,
                                    finished)
                if not in_flight:
                    if self.stopped or not self._more_coming():
                        break
                    time.sleep(0.2)  # the scan is still inserting pending rows, or producers are queueing
                else:
                    self._collect(finished, in_flight)
                if time.monotonic() - self.last_flush >= settings.UPLOAD_FLUSH_SECONDS:
                    self.flush()
                    self._check_stop()
                    if self.cancelled:
                        self._drop_unstarted(in_flight)
        self.pacer.tick(force=True)  # what the last transfers met (a pause) is shared before the task ends
        self.flush()
        self.recorder.wait()
        return self.timed_out or self.shutting_down

    def _start(self, fut: Future, rows: list[FileUpload], in_flight: dict[Future, list[FileUpload]],
               finished: queue.SimpleQueue) -> None:
        in_flight[fut] = rows
        self.busy += len(rows)
        fut.add_done_callback(finished.put)

    def _send(self, dest: Destination, rows: list[FileUpload]) -> list[Outcome]:
        """Transfer rows one after the other (in a pool thread, or the sender thread)."""
        with localfile.folders_kept():  # a batch's files share their folders: one walk to each
            return [self.transfer(dest, row, self.project.source_dir, self.max_tries) for row in rows]

    def _collect(self, finished: queue.SimpleQueue, in_flight: dict[Future, list[FileUpload]]) -> None:
        """The outcomes of the transfers that finished, waiting up to a flush interval for one."""
        try:
            fut = finished.get(timeout=min(settings.UPLOAD_FLUSH_SECONDS, pacing.TICK_SECONDS))
        except queue.Empty:
            return
        while True:
            if (rows := in_flight.pop(fut, None)) is not None:  # a cancelled one was taken out already
                self.busy -= len(rows)
                for outcome in fut.result():
                    if outcome.status == FileStatus.PENDING:
                        self.given_back.append(outcome.row.pk)
                    else:
                        self.outcomes.append(outcome)
            try:
                fut = finished.get_nowait()
            except queue.Empty:
                return

    @property
    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _chunk_size(self, busy: int) -> int:
        # Files sent inline take microseconds each: a bigger chunk spreads a claim's round trips.
        least = INLINE_CHUNK if self.inline_below else 2 * self.workers
        return max(settings.UPLOAD_CHUNK_SIZE, least) - busy

    def _wants_more(self, busy: int) -> bool:
        """Claim the next chunk while half of this one is still queued, so the workers never wait
        for a claim's round trips; after a short claim (nothing more pending yet), only once the
        workers run out or at the next flush. While the pacer holds concurrency down, no more than
        it allows."""
        limit = self.pacer.concurrency()
        if limit < self.workers:
            return busy < limit
        return busy < self.workers or (not self.dry and busy <= self._chunk_size(0) // 2)

    def _more_coming(self) -> bool:
        return self.kind.more_may_come(self.session, time.monotonic() - self.last_claimed, self.destination)

    def _check_stop(self) -> None:
        status = SyncSession.objects.values_list("status", flat=True).get(pk=self.session.pk)
        if status not in (SessionStatus.SCANNING, SessionStatus.UPLOADING) or self.timed_out:
            self.stopped = True
        self.cancelled = status == SessionStatus.CANCELLED

    def _drop_unstarted(self, in_flight: dict[Future, list[FileUpload]]) -> None:
        """Cancelled: claimed rows whose transfer has not started are not uploaded."""
        for fut, rows in list(in_flight.items()):
            if fut.cancel():
                in_flight.pop(fut)
                self.busy -= len(rows)
                self.outcomes.extend(Outcome(row, FileStatus.CANCELLED) for row in rows)

    def _wind_down(self, in_flight: dict[Future, list[FileUpload]], why: str = "shutting down") -> None:
        """Shutting down or paused: transfers in flight finish (or give their row back);
        claimed rows not started go back to pending."""
        self.stopped = True
        self.shutting_down = self.shutting_down or why == "shutting down"
        unstarted = [fut for fut in in_flight if fut.cancel()]
        released = [row.pk for fut in unstarted for row in in_flight.pop(fut)]
        self.busy -= len(released)
        files.release(self.session, released)
        if self.lease:
            self.lease.drop(released)
        log.info("session %s: %s: %d transfers finishing, %d claimed files back to pending",
                 self.session.pk, why, len(in_flight), len(released))

    def claim(self, n: int) -> list[FileUpload]:
        rows = files.claim(self.session, n, self.catalog_id, self.destination)
        self.dry = len(rows) < n
        if self.lease:
            self.lease.hold(row.pk for row in rows)
        return rows

    def flush(self) -> None:
        """Hand the outcomes so far to the recorder (also the session's heartbeat); claims go on
        meanwhile. Inside run()."""
        outcomes, self.outcomes = self.outcomes, []
        given_back, self.given_back = self.given_back, []
        self.last_flush, self.dry = time.monotonic(), False
        self.recorder.submit(self._write, outcomes, given_back)

    def _write(self, outcomes: list[Outcome], given_back: list[int]) -> None:
        """Outcomes and counters in one transaction; rows the pacer gave back to pending."""
        files.record(self.session, outcomes, self.catalog_id, self.destination)
        if self.lease:
            self.lease.drop(o.row.pk for o in outcomes)
        if given_back:
            files.release(self.session, given_back)
            if self.lease:
                self.lease.drop(given_back)


@logcontext.about_session
def drain(session_id: int, deadline_seconds: float | None = None, destination: str | None = None) -> str:
    """Upload what is pending to `destination` (by name; None: to each of the session's in turn);
    returns what happened: "idle", "handover", "paused" or "done"."""
    session = SyncSession.objects.select_related("project").get(pk=session_id)
    if session.status not in (SessionStatus.SCANNING, SessionStatus.UPLOADING):
        return "idle"
    deadline = time.monotonic() + deadline_seconds if deadline_seconds else None
    for name in [destination] if destination else (files.destination_names(session) or [None]):
        outcome = _drain_one(session, deadline, name)
        if outcome != "done":
            return outcome
    if not lifecycle.end_if_settled(session):
        kinds.of(session).ran_dry(session)
    return "done"


def _drain_one(session: SyncSession, deadline: float | None, name: str | None) -> str:
    """One destination's pending rows (None: every row, to the project's one destination)."""
    dest = session.project.destination_named(name) if name else session.project.destination()
    dest.bind(project=session.project.name, session_id=session.pk, source_dir=session.project.source_dir)
    try:
        drainer = Drainer(session, deadline=deadline, destination=name)
        timed_out = drainer.run(dest)
    finally:
        dest.close()
    if drainer.pacer.paused:
        return "paused"  # until `resume`: the pacer logged why
    if timed_out and files.has_pending(session, name):
        return "handover"
    return "done"
