"""Pruning old rows of skipped files. Sessions used to keep one row per file the plan skipped;
the catalog now answers what those rows did, so old ones can go. Their counts move to the
session's skip counts (`SyncSession.skips`), so every session keeps its figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Count, QuerySet, Sum

from sessions_app.models import FileStatus, FileUpload, SyncSession

BATCH = 10_000


@dataclass(frozen=True)
class Pruned:
    rows: int
    sessions: int


def skipped_before(cut_off: datetime) -> QuerySet[FileUpload]:
    return FileUpload.objects.filter(status=FileStatus.SKIPPED, created_at__lt=cut_off)


def count_skipped(cut_off: datetime) -> Pruned:
    rows = skipped_before(cut_off)
    return Pruned(rows.count(), rows.order_by().values("session_id").distinct().count())


def prune_skipped(cut_off: datetime) -> Pruned:
    """Delete rows of files skipped before cut_off, a batch per transaction, folding them into
    their sessions' skip counts."""
    rows, sessions = 0, set()
    while ids := list(skipped_before(cut_off).order_by("id").values_list("id", flat=True)[:BATCH]):
        with transaction.atomic():
            batch = FileUpload.objects.filter(id__in=ids, status=FileStatus.SKIPPED)
            groups = batch.values_list("session_id", "skip_reason").annotate(n=Count("id"), size=Sum("size"))
            for session_id, folded in _by_session(groups.order_by()).items():
                _fold(session_id, *folded)
                sessions.add(session_id)
            rows += batch.delete()[0]
    return Pruned(rows, len(sessions))


def _by_session(groups) -> dict[int, tuple[Counter, int]]:
    out: dict[int, tuple[Counter, int]] = {}
    for session_id, reason, n, size in groups:
        counts, size_sum = out.get(session_id, (Counter(), 0))
        counts[reason or "skipped"] += n
        out[session_id] = (counts, size_sum + (size or 0))
    return out


def _fold(session_id: int, counts: Counter, size: int) -> None:
    # Under the row's lock: the JSON is read, added to and written back.
    session = SyncSession.objects.select_for_update().only("skips", "skipped_bytes").get(pk=session_id)
    skips = Counter(session.skips)
    skips.update(counts)
    SyncSession.objects.filter(pk=session_id).update(skips=dict(skips), skipped_bytes=session.skipped_bytes + size)
