"""The file state machine (sessions_app/files.py) on the real database: every allowed move through
the verb that makes it, every forbidden one refused with TransitionError, and the session's
counters equal to a recount after each verb."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from django.db import transaction
from django.utils import timezone

from projects.errors import UploaderError
from sessions_app import catalog, files, starting
from sessions_app.errors import TransitionError
from sessions_app.files import (ALLOWED, CANCELLED, FAILED, GONE, NEW, RECEIVING, Outcome, PENDING, SKIPPED,
                                UPLOADED, UPLOADING)
from sessions_app.models import FileUpload, SyncSession

STATES = [NEW, RECEIVING, PENDING, UPLOADING, UPLOADED, FAILED, SKIPPED, CANCELLED, GONE]
ROWS = [RECEIVING, PENDING, UPLOADING, UPLOADED, FAILED, SKIPPED, CANCELLED]
ALLOWED_MOVES = [(s, t) for s in STATES for t in sorted(ALLOWED.get(s, ()))]
FORBIDDEN_MOVES = [(s, t) for s, t in itertools.product(STATES, STATES) if t not in ALLOWED.get(s, ())]


@pytest.fixture
def session(make_project, tmp_path) -> SyncSession:
    project = make_project({"type": "local", "path": str(tmp_path / "out")})
    session = starting.create_session(project, created_by="test")
    session.mark_scanning()
    return session


def assert_counters_match_rows(session: SyncSession) -> None:
    session.refresh_from_db()
    assert {name: getattr(session, name) for name in files.COUNTERS} == files.counts(session)


def plan(session: SyncSession, name: str, *, skip: str = "", size: int = 7) -> FileUpload:
    row = files.planned_row(session, relative_path=name, remote_key=name, size=size, skip_reason=skip)
    assert files.add_planned(session, [row]) == [row]
    return FileUpload.objects.get(session=session, relative_path=name)


def settle(session: SyncSession, row: FileUpload, status: str) -> FileUpload:
    [claimed] = [r for r in files.claim(session, 100) if r.pk == row.pk]
    assert files.record(session, [Outcome(claimed, status)]) == 1
    return FileUpload.objects.get(pk=row.pk)


def row_in(session: SyncSession, status: str, name: str = "f.wav") -> FileUpload:
    """A row brought to `status` through the verbs alone."""
    if status == RECEIVING:
        return _receive(session, name)
    if status == SKIPPED:
        return plan(session, name, skip="uploaded earlier")
    row = plan(session, name)
    if status == UPLOADING:
        files.claim(session, 100)
    elif status == CANCELLED:
        files.cancel_rest(session)
    elif status in (UPLOADED, FAILED):
        row = settle(session, row, status)
    row.refresh_from_db()
    assert row.status == status
    assert_counters_match_rows(session)
    return row


def one(row: FileUpload):
    return FileUpload.objects.filter(pk=row.pk)


# How each allowed move is made: (verb, the row's state before) -> the row's state after.
def _plan_pending(session: SyncSession) -> str:
    return plan(session, "new.wav").status


def _plan_skipped(session: SyncSession) -> str:
    return plan(session, "new.wav", skip="already at destination").status


def _receive(session: SyncSession, name: str = "new.wav") -> FileUpload:
    [row] = files.add_receiving(session, [FileUpload(session=session, project_id=session.project_id,
                                                     relative_path=name, remote_key=name, size=5,
                                                     status=RECEIVING)])
    return row


def _refuse(session: SyncSession) -> str:
    files.add_refused(session, [("new.wav", "", 3, 0.0, "key collision with n\u00e9w.wav")])
    return FileUpload.objects.get(session=session, relative_path="new.wav").status


def _admit(session: SyncSession) -> str:
    return files.admit_one(session, relative_path="new.wav", remote_key="new.wav", size=3).status


def _send(status: str) -> Callable[[SyncSession], str]:
    """The plan sent the file first (sending.py): its row goes in settled."""
    def run(session: SyncSession) -> str:
        row = FileUpload(session=session, project_id=session.project_id, relative_path="new.wav",
                         remote_key="new.wav", size=4, attempts=1, skip_reason="duplicate" if status == SKIPPED else "")
        catalog_id = catalog.open_for(session.project, session.project.destination()).pk
        assert files.add_sent(session, [Outcome(row, status)], catalog_id) == 1
        return FileUpload.objects.get(session=session, relative_path="new.wav").status
    return run


def _from(status: str, verb: Callable[[SyncSession, FileUpload], object]) -> Callable[[SyncSession], str]:
    def run(session: SyncSession) -> str:
        row = row_in(session, status)
        verb(session, row)
        return FileUpload.objects.filter(pk=row.pk).values_list("status", flat=True).first() or GONE
    return run


def _record(status: str) -> Callable[[SyncSession, FileUpload], object]:
    return lambda session, row: files.record(session, [Outcome(row, status)])


VERBS: dict[tuple[str, str], list[Callable[[SyncSession], str]]] = {
    (NEW, PENDING): [_plan_pending, _admit],
    (NEW, SKIPPED): [_plan_skipped, _send(SKIPPED)],
    (NEW, UPLOADED): [_send(UPLOADED)],
    (NEW, RECEIVING): [lambda s: _receive(s).status],
    (RECEIVING, PENDING): [_from(RECEIVING, lambda s, r: files.received(r))],
    (RECEIVING, FAILED): [_from(RECEIVING, lambda s, r: files.give_up_receiving(s.pk, one(r), "expired"))],
    (RECEIVING, CANCELLED): [_from(RECEIVING, lambda s, r: files.terminate(r)),
                             _from(RECEIVING, lambda s, r: files.cancel_rest(s))],
    (NEW, FAILED): [_refuse, _send(FAILED)],
    (PENDING, UPLOADING): [_from(PENDING, lambda s, r: files.claim(s, 1))],
    (PENDING, CANCELLED): [_from(PENDING, lambda s, r: files.cancel_rest(s))],
    (UPLOADING, PENDING): [_from(UPLOADING, lambda s, r: files.release(s, [r.pk])),
                           _from(UPLOADING, lambda s, r: files.recover_stale(s)),
                           _from(UPLOADING, lambda s, r: files.recover_stale(s, claimed_before=timezone.now()))],
    (UPLOADING, CANCELLED): [_from(UPLOADING, lambda s, r: files.cancel_rest(s, claimed_too=True)),
                             _from(UPLOADING, _record(CANCELLED))],
    (UPLOADING, UPLOADED): [_from(UPLOADING, _record(UPLOADED))],
    (UPLOADING, FAILED): [_from(UPLOADING, _record(FAILED))],
    (UPLOADING, SKIPPED): [_from(UPLOADING, _record(SKIPPED))],
    (FAILED, PENDING): [_from(FAILED, lambda s, r: files.requeue(s, one(r), one(r).none()))],
    (CANCELLED, PENDING): [_from(CANCELLED, lambda s, r: files.requeue(s, one(r).none(), one(r)))],
    **{(status, GONE): [_from(status, lambda s, r: files.forget(r))] for status in (UPLOADED, FAILED, SKIPPED,
                                                                                     CANCELLED)},
}


def test_every_allowed_move_has_a_verb():
    assert sorted(VERBS) == sorted(ALLOWED_MOVES)


@pytest.mark.parametrize(("move", "way"), [(m, i) for m in ALLOWED_MOVES for i in range(len(VERBS[m]))],
                         ids=lambda v: "-".join(v) if isinstance(v, tuple) else str(v))
def test_allowed_move_lands_in_its_state_and_keeps_the_counters_exact(session, move, way):
    plan(session, "bystander.wav", skip="uploaded earlier")  # another row, which no verb here moves
    assert VERBS[move][way](session) == move[1]
    assert_counters_match_rows(session)


@pytest.mark.parametrize("move", FORBIDDEN_MOVES, ids=lambda m: "-".join(m))
def test_forbidden_move_is_refused(session, move):
    source, target = move
    with pytest.raises(TransitionError, match=f"from {source} to {target}"):
        files.check(source, target)
    if source not in ROWS:
        return
    row = row_in(session, source)
    with pytest.raises(TransitionError) as info:
        files.move(session.pk, one(row), (source,), target)
    assert isinstance(info.value, UploaderError)
    assert FileUpload.objects.get(pk=row.pk).status == source
    assert_counters_match_rows(session)


def test_an_outcome_for_a_row_that_was_never_claimed_is_refused(session):
    row = row_in(session, PENDING)
    with pytest.raises(TransitionError):
        files.record(session, [Outcome(row, UPLOADED)])
    assert FileUpload.objects.get(pk=row.pk).status == PENDING


def test_an_open_row_cannot_be_forgotten(session):
    row = row_in(session, UPLOADING)
    with pytest.raises(TransitionError):
        files.forget(row)
    assert FileUpload.objects.filter(pk=row.pk).exists()


def test_a_plan_cannot_insert_rows_already_settled(session):
    row = files.planned_row(session, relative_path="x.wav", remote_key="x.wav")
    row.status = UPLOADED
    with pytest.raises(TransitionError):
        files.add_planned(session, [row])
    assert not session.files.exists()


def test_an_outcome_for_a_row_taken_back_meanwhile_is_not_written(session):
    row = row_in(session, UPLOADING)
    files.recover_stale(session)  # a resume took it back while its transfer was finishing
    assert files.record(session, [Outcome(row, UPLOADED)]) == 0
    assert FileUpload.objects.get(pk=row.pk).status == PENDING
    assert_counters_match_rows(session)


def test_a_rerun_plan_counts_only_the_rows_it_added(session):
    plan(session, "a.wav")
    again = [files.planned_row(session, relative_path=n, remote_key=n, size=1) for n in ("a.wav", "b.wav")]
    assert [r.relative_path for r in files.add_planned(session, again)] == ["b.wav"]
    assert_counters_match_rows(session)


def test_racing_claims_never_share_a_row(session):
    for i in range(5):
        plan(session, f"{i}.wav")
    a, b = files.claim(session, 3), files.claim(session, 3)
    assert len(a) == 3 and len(b) == 2 and not {r.pk for r in a} & {r.pk for r in b}
    assert_counters_match_rows(session)


def test_first_run_rows_that_collide_after_all_are_left_alone(session):
    """A first run inserts without the collision check (COPY straight in on PostgreSQL); should a
    row be there already (another writer), the batch falls back to skipping it."""
    def batch(*names: str) -> list[tuple]:
        return [(session.pk, session.project_id, n, n, 3, 1.0, None, None, False) for n in names]

    with transaction.atomic():
        assert files.add_pending(session, batch("a.wav", "b.wav"), first_run=True) == 2
    with transaction.atomic():
        assert files.add_pending(session, batch("b.wav", "c.wav"), first_run=True) == 1
    assert sorted(session.files.values_list("relative_path", flat=True)) == ["a.wav", "b.wav", "c.wav"]
