"""The future ``Coordinator.ask`` returns: a reply is delivered exactly once,
to every getter, and a caller who gave up refuses it (so the session undoes it)."""

from __future__ import annotations

import asyncio
import queue
import threading

import pytest

from coordactors import errors
from coordactors._protocol import RequestFuture


def test_a_result_is_got_as_often_as_asked_and_by_every_waiting_thread():
    future = RequestFuture("Join")
    got: queue.SimpleQueue = queue.SimpleQueue()
    getters = [threading.Thread(target=lambda: got.put(future.get(timeout=10))) for _ in range(4)]
    for getter in getters:
        getter.start()
    assert future.resolve("joined")
    for getter in getters:
        getter.join(10)
    assert [got.get_nowait() for _ in range(4)] == ["joined"] * 4
    assert future.get() == "joined"


def test_an_error_is_raised_with_its_traceback():
    future = RequestFuture("Acquire")
    try:
        raise errors.LockTimeout("held")
    except errors.LockTimeout as exc:
        future.reject(exc)
        rejected = exc
    with pytest.raises(errors.LockTimeout, match="held") as info:
        future.get(timeout=1)
    assert info.value is rejected
    # The traceback still shows where it was raised, not only where it was got.
    assert any("raise errors.LockTimeout" in str(entry.statement) for entry in info.traceback)


def test_a_caller_that_timed_out_refuses_the_late_result():
    future = RequestFuture("Acquire")
    with pytest.raises(errors.OperationTimedOut, match="Acquire: no reply within 0.01s"):
        future.get(timeout=0.01)
    assert not future.wanted()
    assert future.resolve("lease") is False  # the session releases it
    with pytest.raises(errors.OperationTimedOut):
        future.get()


def test_a_result_that_came_before_the_timeout_is_not_lost():
    future = RequestFuture("Acquire")
    assert future.resolve("lease")
    assert future.get(timeout=0) == "lease"
    future.abandon()  # too late: nothing to give up
    assert future.get() == "lease"


def test_a_reply_racing_the_callers_timeout_is_taken_by_exactly_one_side():
    # Whichever comes first wins: the caller gets the result if and only if
    # the session was told it was delivered.  Never both, never neither.
    for _ in range(300):
        future = RequestFuture("Acquire")
        delivered = []
        replier = threading.Thread(target=lambda f=future, d=delivered: d.append(f.resolve("lease")))
        replier.start()
        try:
            got = future.get(timeout=0.0001)
        except errors.OperationTimedOut:
            got = None
        replier.join(10)
        assert delivered == [got == "lease"]


def test_set_twice_is_refused():
    future = RequestFuture()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    assert future.get() == 1


def test_pykka_combinators_and_await_work():
    first, second = RequestFuture(), RequestFuture()
    first.set(2)
    second.set(3)
    assert first.join(second).get(timeout=1) == [2, 3]
    assert first.map(lambda value: value * 10).get(timeout=1) == 20

    async def main():
        return await first

    assert asyncio.run(main()) == 2


def test_abandon_wakes_a_waiting_getter():
    future = RequestFuture("Acquire")
    got: queue.SimpleQueue = queue.SimpleQueue()

    def wait() -> None:
        try:
            future.get(timeout=10)
        except errors.OperationTimedOut as exc:
            got.put(exc)

    getter = threading.Thread(target=wait)
    getter.start()
    future.abandon()
    getter.join(10)
    assert "abandoned by the caller" in str(got.get_nowait())
    assert future.resolve("lease") is False
