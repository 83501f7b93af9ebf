"""Requests queued behind a busy session, on every backend.

A session that coalesces (Redis pipelines, PostgreSQL's one statement,
MySQL's batched calls, ZooKeeper's multis and round trips in flight together) serves
what queued up while it was busy together; every caller must still get the
answer it would have had alone, in order.  The session is kept busy on
purpose so the queue is known to hold every request before it is served.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordactors import errors
from coordactors.backend_actors._coalesce import Coalescing
from coordactors.messages import Acquire, Release
from helpers import BusySession

BOUND = 30


def _session(coord: Any) -> Any:
    return coord._route.session._actor_weakref()


def _count_batches(session: Any) -> list[int]:
    """Record the size of every batch the session serves (empty for a session that does not coalesce)."""
    sizes: list[int] = []
    if isinstance(session, Coalescing):
        serve = session.serve_batch

        def counting(calls: list[Any]) -> None:
            sizes.append(len(calls))
            serve(calls)

        session.serve_batch = counting
    return sizes


@pytest.mark.timeout(90)
def test_queued_lock_requests_each_get_their_own_answer(connect: Any) -> None:
    shared, other = connect("shared"), connect("other")
    taken = other.ask(Acquire("taken"), block=True, timeout=BOUND)
    held = shared.ask(Acquire("held"), block=True, timeout=BOUND)
    session = _session(shared)
    sizes = _count_batches(session)

    busy = BusySession(session)
    free = [shared.submit(Acquire(f"free-{i}")) for i in range(6)]
    refused = shared.submit(Acquire("taken", timeout=0))
    released = shared.submit(Release(held))
    waiting = shared.submit(Acquire("taken", timeout=BOUND))
    again = shared.submit(Acquire("free-0", timeout=0))  # the same name twice in one queue: held by then
    busy.release()

    leases = [future.result(timeout=BOUND) for future in free]
    assert [lease.name for lease in leases] == [f"free-{i}" for i in range(6)]
    assert all(isinstance(lease.fence, int) for lease in leases)
    with pytest.raises(errors.LockTimeout):
        refused.result(timeout=BOUND)
    assert released.result(timeout=BOUND) is None
    with pytest.raises(errors.LockTimeout):
        again.result(timeout=BOUND)
    assert not waiting.done()

    # What the batch granted is really held, and what it released is free.
    for lease in leases:
        with pytest.raises(errors.LockTimeout):
            other.ask(Acquire(lease.name, timeout=0), block=True, timeout=BOUND)
    retaken = other.ask(Acquire("held", timeout=0), block=True, timeout=BOUND)
    assert retaken.fence > held.fence

    # The waiting acquire is granted once the other holder lets go.
    other.ask(Release(taken), block=True, timeout=BOUND)
    granted = waiting.result(timeout=BOUND)
    assert granted.fence > taken.fence

    # Releases queued together free every lock.
    busy = BusySession(session)
    releases = [shared.submit(Release(lease)) for lease in leases]
    busy.release()
    for future in releases:
        assert future.result(timeout=BOUND) is None
    for lease in leases:
        other.ask(Release(other.ask(Acquire(lease.name, timeout=0), block=True, timeout=BOUND)), block=True, timeout=BOUND)
    if isinstance(session, Coalescing):
        assert max(sizes) >= 6, sizes  # the queue really was served together


@pytest.mark.timeout(90)
def test_a_batch_on_file_is_one_registry_write(coordinators: Any, tmp_path: Any) -> None:
    # No heartbeat within the test: every write counted is a request's.
    coord = coordinators("shared", f"file://{tmp_path}/coord?session_ttl=180&heartbeat_interval=60")
    session = _session(coord)
    storage = session.conn
    writes: list[int] = []
    store = storage._store

    def counting(doc: Any) -> None:
        writes.append(1)
        store(doc)

    storage._store = counting
    busy = BusySession(session)
    acquires = [coord.submit(Acquire(f"n{i}")) for i in range(8)]
    busy.release()
    leases = [future.result(timeout=BOUND) for future in acquires]
    assert writes == [1]
    busy = BusySession(session)
    releases = [coord.submit(Release(lease)) for lease in leases]
    busy.release()
    assert [future.result(timeout=BOUND) for future in releases] == [None] * 8
    assert writes == [1, 1]


@pytest.mark.timeout(90)
def test_queued_acquires_with_a_ttl_of_their_own_keep_it(connect: Any) -> None:
    shared = connect("shared")
    session = _session(shared)
    busy = BusySession(session)
    timed = [shared.submit(Acquire(f"timed-{i}", ttl=30)) for i in range(4)]
    busy.release()
    if not session.LEASE_TTL:  # a lock that lives as long as the session
        for future in timed:
            with pytest.raises(errors.NotSupported):
                future.result(timeout=BOUND)
        return
    leases = [future.result(timeout=BOUND) for future in timed]
    assert [lease.ttl for lease in leases] == [30] * 4
