"""The recorder: writes in a thread of its own (or the caller's, inside the caller's transaction)."""

from __future__ import annotations

import threading

import pytest

from sessions_app import recorder


def test_a_recorder_writes_in_a_thread_of_its_own_and_a_failed_write_surfaces_at_the_next_call(transactional_db):
    threads: list[str] = []
    with recorder.Recorder("record-test") as writes:
        writes.submit(lambda: threads.append(threading.current_thread().name))
        writes.wait()
        writes.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            writes.submit(lambda: threads.append("after the failed write"))

    assert threads == ["record-test_0"]


def test_inside_a_callers_transaction_a_recorder_writes_in_the_callers_thread(db):
    # A test's transaction: rows written in it are invisible to another thread's connection.
    threads: list[str] = []
    with recorder.Recorder("record-test") as writes:
        writes.submit(lambda: threads.append(threading.current_thread().name))

    assert threads == [threading.current_thread().name]


def test_a_recorder_of_depth_two_queues_a_second_write_behind_a_slow_one_and_holds_the_third(transactional_db):
    release = threading.Event()
    done: list[int] = []
    with recorder.Recorder("record-test", depth=2) as writes:
        writes.submit(lambda: (release.wait(10), done.append(1)))
        writes.submit(lambda: done.append(2))  # queued: the caller goes on while the first still runs
        assert done == []
        third = threading.Thread(target=writes.submit, args=(lambda: done.append(3),))
        third.start()
        third.join(timeout=0.5)
        assert third.is_alive()  # two are waiting: the third submit waits for the first
        release.set()
        third.join(timeout=10)
        writes.wait()

    assert done == [1, 2, 3]
