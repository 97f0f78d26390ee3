"""Session-wide pacing while a destination throttles: additive increase, multiplicative decrease
(AIMD), in the manner of rclone's pacer and the AWS SDKs' adaptive retry mode.

A throttling answer (S3 503 SlowDown / 429 / RequestLimitExceeded, an SFTP server refusing
channels, Roboflow 429: `RemoteError.throttled`) cuts the session's send rate by 30 % and halves
the transfers each task keeps in flight; every RAISE_SECONDS without one adds 10 % (at least two files/s) and one
transfer back; after CLEAR_SECONDS without one, the limit is gone. A throttled attempt waits here
and does not count against the file's max_retries; a file throttled for `throttle_patience`
seconds pauses the session (its rows go back to pending) instead of failing. So does, at once, a
destination with no space left (`RemoteError.full`): every other file would meet it too.

The state is one SessionPace row per session, shared by every task of the session on every
machine. Only a drainer's own thread reads and writes it, every TICK_SECONDS (workers never touch
the database): it pushes what its transfers met, reads the session's rate and reserves send slots
for its waiting transfers with one UPDATE (a generic cell rate algorithm: the row holds the next
free slot of the whole session). While nothing throttles, that is one read of a tiny row per tick.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Case, F, FloatField, Value, When
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from projects.errors import RemoteError
from sessions_app.models import SessionPace, SyncSession

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25  # how often a drainer syncs with the shared row (and how stale its copy may be)
LOWER_FACTOR = 0.7  # the AWS SDKs' beta: a sawtooth under a fixed limit averages ~85 % of it
COOLDOWN_SECONDS = 1.0  # answers to requests sent at the old rate arrive together: they lower it once
RAISE_SECONDS = 1.0
RAISE_FRACTION, RAISE_AT_LEAST = 0.1, 2.0
CLEAR_SECONDS = 30.0
MIN_RATE = 4.0  # files/s: a destination refusing this much from a session is refusing service; patience
# decides when to stop, and a Retry-After can ask for longer waits
MEASURE_SECONDS = 2.0  # the window over which a task measures what it sends, for the first decrease
LOG_RAISE_EVERY = 10.0


@dataclass
class _Shared:
    rate: float | None = None
    concurrency: int | None = None
    resume_at: float = 0.0
    paused: bool = False


class Pacer:
    """One drainer's view of its session's pace. wait()/throttled()/succeeded() are called by the
    transfer threads; tick() by the drainer's own thread."""

    def __init__(self, session: SyncSession, *, workers: int, patience: float):
        self.session_id = session.pk
        self.workers, self.patience = workers, patience
        self._cond = threading.Condition()
        self._shared = _Shared()
        self._slots: deque[float] = deque()
        self._waiting = 0
        self._demand = False
        self._sends: deque[float] = deque(maxlen=10_000)  # when this task's recent attempts went out
        self._unsynced_successes = 0
        self._throttles: list[RemoteError] = []
        self._last_tick = 0.0
        self._last_raise_log = 0.0
        SessionPace.objects.get_or_create(session_id=self.session_id)
        self.tick(force=True)

    # -- transfer threads --------------------------------------------------------------------
    def wait(self) -> bool:
        """Block until this transfer may send; False once the session is paused."""
        with self._cond:
            while True:
                shared, now = self._shared, time.time()
                if shared.paused:
                    return False
                if shared.resume_at > now:
                    self._cond.wait(min(shared.resume_at - now, TICK_SECONDS))
                    continue
                if shared.rate is None:
                    self._sends.append(time.monotonic())
                    return True
                while self._slots and self._slots[0] < now - TICK_SECONDS:
                    self._slots.popleft()  # a slot nobody took in time is not saved up for a burst
                if self._slots:
                    slot = self._slots.popleft()
                    self._sends.append(time.monotonic())
                    break
                self._waiting += 1
                self._demand = True
                try:
                    self._cond.wait(TICK_SECONDS)
                finally:
                    self._waiting -= 1
        delay = slot - time.time()
        if delay > 0:
            time.sleep(delay)  # pacing itself: this transfer's turn comes at `slot`
        return True

    def succeeded(self) -> None:
        with self._cond:
            self._unsynced_successes += 1

    def throttled(self, exc: RemoteError) -> None:
        with self._cond:
            self._throttles.append(exc)
            if exc.retry_after:
                self._shared.resume_at = max(self._shared.resume_at, time.time() + exc.retry_after)

    def pause(self, reason: str) -> None:
        """A file ran out of patience: the session stops sending (written at the next tick)."""
        with self._cond:
            if not self._shared.paused:
                self._shared.paused = True
                self._pause_reason = reason
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._shared.paused

    @property
    def unthrottled(self) -> bool:
        """Nothing holds transfers back: no rate, no Retry-After, no pause (a transfer the drainer's
        own thread runs must never wait for slots only that thread's tick() hands out)."""
        shared = self._shared
        return shared.rate is None and not shared.paused and shared.resume_at <= time.time()

    def concurrency(self) -> int:
        """Transfers this task may keep in flight now."""
        limit = self._shared.concurrency
        return self.workers if limit is None else max(1, min(self.workers, limit))

    # -- the drainer's thread ----------------------------------------------------------------
    def tick(self, force: bool = False) -> None:
        """Sync with the shared row, at most every TICK_SECONDS."""
        now = time.time()
        if not force and now - self._last_tick < TICK_SECONDS:
            return
        self._last_tick = now
        with self._cond:
            throttles, self._throttles = self._throttles, []
            successes, self._unsynced_successes = self._unsynced_successes, 0
            paused_here = self._shared.paused and getattr(self, "_pause_reason", None)
            local_resume = self._shared.resume_at
        if paused_here:
            self._write_pause(paused_here)
            self._pause_reason = None
        if throttles:
            self._lower(throttles, now)
        elif successes:
            self._raise(now)
        row = SessionPace.objects.filter(pk=self.session_id).values(
            "rate", "concurrency", "resume_at", "paused_at").first() or {}
        shared = _Shared(row.get("rate"), row.get("concurrency"), max(row.get("resume_at") or 0.0, local_resume),
                         row.get("paused_at") is not None or self._shared.paused)
        slots = self._reserve(shared.rate, now) if shared.rate is not None and not shared.paused else []
        with self._cond:
            self._shared = shared
            self._slots.extend(slots)
            self._cond.notify_all()

    def _reserve(self, rate: float, now: float) -> list[float]:
        """The session's send slots until the next tick, for this task if its transfers are
        waiting for slots, in one UPDATE."""
        with self._cond:
            demand, self._demand = self._demand or self._waiting > 0, False
            n = math.ceil(rate * TICK_SECONDS) - sum(1 for slot in self._slots if slot >= now)
        if not demand or n <= 0:
            return []
        step = 1.0 / rate
        with transaction.atomic():
            SessionPace.objects.filter(pk=self.session_id).update(
                next_send_at=Greatest(F("next_send_at"), Value(now)) + n * step)
            end = SessionPace.objects.values_list("next_send_at", flat=True).get(pk=self.session_id)
        return [end - (n - i) * step for i in range(n)]

    def _measured_rate(self) -> float:
        """Attempts/s this task sent over the last MEASURE_SECONDS (throttled ones too: a session
        throttled from its first request has no successes to measure)."""
        now = time.monotonic()
        with self._cond:
            recent = [t for t in self._sends if t >= now - MEASURE_SECONDS]
        return len(recent) / max(TICK_SECONDS, now - recent[0]) if recent else 0.0

    def _lower(self, throttles: list[RemoteError], now: float) -> None:
        retry_after = max((e.retry_after or 0.0) for e in throttles)
        first_rate = max(MIN_RATE, self._measured_rate() * LOWER_FACTOR)
        pace = SessionPace.objects.filter(pk=self.session_id)
        with transaction.atomic():
            pace.update(throttled_count=F("throttled_count") + len(throttles),
                        resume_at=Greatest(F("resume_at"), Value(now + retry_after)))
            lowered = pace.filter(lowered_at__lt=now - COOLDOWN_SECONDS).update(
                rate=Greatest(Value(MIN_RATE), Case(When(rate__isnull=True, then=Value(first_rate)),
                                                    default=F("rate") * LOWER_FACTOR, output_field=FloatField())),
                concurrency=Case(When(concurrency__isnull=True, then=Value(max(1, self.workers // 2))),
                                 default=Greatest(Value(1), F("concurrency") / 2)),
                lowered_at=now, raised_at=now)
            if lowered:
                row = pace.values("rate", "concurrency", "lowest_rate").get()
                if row["lowest_rate"] is None or row["rate"] < row["lowest_rate"]:
                    pace.update(lowest_rate=row["rate"])
        if lowered:
            wait = f"; waiting {retry_after:g} s as asked (Retry-After)" if retry_after else ""
            self._log(f"throttled: sending at {row['rate']:.1f}/s, {row['concurrency']} transfers per task "
                      f"({len(throttles)} throttling answers: {throttles[-1].message[:200]}){wait}")

    def _raise(self, now: float) -> None:
        pace = SessionPace.objects.filter(pk=self.session_id, rate__isnull=False)
        cleared = pace.filter(lowered_at__lt=now - CLEAR_SECONDS).update(rate=None, concurrency=None, raised_at=now)
        if cleared:
            self._log("no longer throttled: sending at full speed")
            return
        raised = pace.filter(lowered_at__lt=now - RAISE_SECONDS, raised_at__lt=now - RAISE_SECONDS).update(
            rate=F("rate") + Greatest(Value(RAISE_AT_LEAST), F("rate") * RAISE_FRACTION),
            concurrency=Least(F("concurrency") + 1, Value(self.workers)), raised_at=now)
        if raised and now - self._last_raise_log >= LOG_RAISE_EVERY:
            self._last_raise_log = now
            rate = pace.values_list("rate", flat=True).first()
            if rate is not None:
                self._log(f"throttle easing: sending at {rate:.1f}/s")

    def _write_pause(self, reason: str) -> None:
        if SessionPace.objects.filter(pk=self.session_id, paused_at__isnull=True).update(paused_at=timezone.now()):
            self._log(f"paused: {reason}; its files are back to pending: resume with "
                      f"`python manage.py resume {self.session_id}`")

    def _log(self, line: str) -> None:
        log.info("session %s: %s", self.session_id, line)
        SyncSession(pk=self.session_id).append_log(f"{timezone.now():%Y-%m-%d %H:%M:%S} {line}")


class _Unpaced:
    """Outside a drainer (a transfer called directly): no pacing, no patience."""

    patience = math.inf

    def wait(self) -> bool:
        return True

    def succeeded(self) -> None:
        pass

    def throttled(self, exc: RemoteError) -> None:
        time.sleep(exc.retry_after or 1.0)

    def pause(self, reason: str) -> None:
        pass


_local = threading.local()
UNPACED = _Unpaced()


def use(pacer: Pacer) -> None:
    """The pacer of this thread's transfers (a drainer's pool initializer)."""
    _local.pacer = pacer


def current() -> Pacer | _Unpaced:
    return getattr(_local, "pacer", UNPACED)


def clear_pause(session: SyncSession) -> bool:
    """Resuming a paused session: it sends again, at the rate it had."""
    return bool(SessionPace.objects.filter(pk=session.pk, paused_at__isnull=False).update(paused_at=None, resume_at=0))


def is_paused(session: SyncSession) -> bool:
    return SessionPace.objects.filter(pk=session.pk, paused_at__isnull=False).exists()


def describe(session: SyncSession) -> str:
    """"throttled: sending at N/s" while the session is paced, "paused: ..." when paused, else ""."""
    return describe_pace(SessionPace.objects.filter(pk=session.pk).first())


def describe_pace(pace: SessionPace | None) -> str:
    if pace is None:
        return ""
    if pace.paused_at is not None:
        return "paused: the session log says why; resume it"
    if pace.rate is None:
        return ""
    return f"throttled: sending at {pace.rate:.1f}/s"


def pace_of(session: SyncSession) -> SessionPace | None:
    """The session's pace row, if it has one (from select_related("pace") when the caller used it)."""
    try:
        return session.pace
    except SessionPace.DoesNotExist:
        return None
