"""Fenced locks, on every backend."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from coordactors import errors
from helpers import wait_until
from coordactors._protocol import Call
from coordactors.messages import Acquire, Heartbeat, Lease, Release


def test_acquire_grants_a_lease_naming_the_holder(connect):
    coord = connect("holder")
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert isinstance(lease, Lease)
    assert (lease.name, lease.member_id) == ("jobs", "holder")
    assert isinstance(lease.fence, int)
    lease.check()
    assert lease.held


def test_try_lock_on_a_held_lock_raises_lock_timeout_at_once(connect):
    a, b = connect("a"), connect("b")
    a.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.LockTimeout):
        b.ask(Acquire("jobs", timeout=0), block=True, timeout=10)


def test_fences_strictly_increase_across_holders(connect):
    coords = [connect(f"m{i}") for i in range(3)]
    fences = []
    for round_ in range(4):
        for coord in coords:
            lease = coord.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
            fences.append(lease.fence)
            coord.ask(Release(lease), block=True, timeout=10)
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)


def test_fences_of_different_locks_are_independent_but_each_increases(connect):
    coord = connect()
    seen: dict[str, list[int]] = {"x": [], "y": []}
    for name in "xyxyyx":
        lease = coord.ask(Acquire(name), block=True, timeout=10)
        seen[name].append(lease.fence)
        coord.ask(Release(lease), block=True, timeout=10)
    for fences in seen.values():
        assert fences == sorted(set(fences))


def test_blocking_acquire_wakes_when_the_holder_releases(connect):
    a, b = connect("a"), connect("b")
    held = a.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = b.submit(Acquire("jobs", timeout=30))
    assert not waiting.done()
    with pytest.raises(errors.LockTimeout):  # still held by a while b waits
        connect("c").ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    a.ask(Release(held), block=True, timeout=10)
    granted = waiting.result(timeout=10)
    assert granted.member_id == "b"
    assert granted.fence > held.fence


def test_blocking_acquire_gives_up_after_its_timeout(connect):
    a, b = connect("a"), connect("b")
    a.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.LockTimeout):
        b.ask(Acquire("jobs", timeout=0.2), block=True, timeout=10)


def test_two_callers_sharing_a_coordinator_exclude_each_other(connect):
    coord = connect()
    first = coord.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.LockTimeout):
        coord.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    second = coord.submit(Acquire("jobs", timeout=30))
    assert not second.done()
    coord.ask(Release(first), block=True, timeout=10)
    assert second.result(timeout=10).fence > first.fence


def test_releasing_what_is_not_held_raises_lock_not_held(connect):
    a, b = connect("a"), connect("b")
    with pytest.raises(errors.LockNotHeld):
        a.ask(Release("jobs"), block=True, timeout=10)
    lease = a.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.LockNotHeld):
        b.ask(Release("jobs"), block=True, timeout=10)
    a.ask(Release("jobs"), block=True, timeout=10)
    assert lease.lost.is_set()
    with pytest.raises(errors.LockNotHeld):
        a.ask(Release(lease), block=True, timeout=10)


def test_a_stale_lease_cannot_release_a_newer_one(connect):
    coord = connect()
    old = coord.ask(Acquire("jobs"), block=True, timeout=10)
    coord.ask(Release(old), block=True, timeout=10)
    new = coord.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.LockNotHeld):
        coord.ask(Release(old), block=True, timeout=10)
    assert new.held


def test_lock_context_manager_holds_then_releases(connect):
    a, b = connect("a"), connect("b")
    with a.lock("jobs", timeout=5) as lease:
        assert lease.held
        with pytest.raises(errors.LockTimeout):
            b.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    assert lease.lost.is_set()
    b.ask(Acquire("jobs", timeout=0), block=True, timeout=10)


def test_a_caller_that_times_out_leaves_no_lock_behind(connect):
    a, b = connect("a"), connect("b")
    held = a.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.OperationTimedOut):
        b.ask(Acquire("jobs"), block=True, timeout=0.2)
    a.ask(Release(held), block=True, timeout=10)
    # b gave up: it must not be granted the lock now that it is free.
    c = connect("c")
    assert c.ask(Acquire("jobs", timeout=5), block=True, timeout=10).member_id == "c"
    assert b.statistics()["leases"] == 0


def test_a_cancelled_submit_leaves_no_lock_behind(connect):
    a, b = connect("a"), connect("b")
    held = a.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = b.submit(Acquire("jobs", timeout=30))
    assert waiting.cancel()
    a.ask(Release(held), block=True, timeout=10)
    assert connect("c").ask(Acquire("jobs", timeout=5), block=True, timeout=10).member_id == "c"


class _LateReply:
    """A reply slot whose caller gives up just as the grant arrives."""

    def __init__(self) -> None:
        self.offered = threading.Event()

    def wanted(self) -> bool:
        return True

    def resolve(self, value):
        self.offered.set()
        return False

    def reject(self, exc):
        self.offered.set()


def test_a_grant_that_arrives_after_the_caller_gave_up_is_released(connect):
    a, b = connect("a"), connect("b")
    late = _LateReply()
    b._route.session.tell(Call(Acquire("jobs"), late))
    assert late.offered.wait(10)
    # The session was granted the lock, found nobody wanted it, released it.
    assert a.ask(Acquire("jobs", timeout=5), block=True, timeout=10).member_id == "a"
    assert b.statistics()["leases"] == 0


def test_asyncio_callers_wait_for_a_lock_without_blocking_the_loop(connect):
    a, b = connect("a"), connect("b")
    held = a.ask(Acquire("jobs"), block=True, timeout=10)

    async def main():
        ticks = 0
        waiting = asyncio.ensure_future(b.request(Acquire("jobs", timeout=30)))
        while ticks < 5:  # the loop keeps running while the lock is contended
            await asyncio.sleep(0.01)
            ticks += 1
        assert not waiting.done()
        a.ask(Release(held), block=True, timeout=10)
        return await asyncio.wait_for(waiting, 10)

    lease = asyncio.run(main())
    assert lease.member_id == "b"


def test_a_cancelled_asyncio_acquire_leaves_no_lock_behind(connect):
    a, b = connect("a"), connect("b")
    held = a.ask(Acquire("jobs"), block=True, timeout=10)

    async def main():
        with pytest.raises(errors.OperationTimedOut):
            await b.request(Acquire("jobs", timeout=30), timeout=0.1)

    asyncio.run(main())
    a.ask(Release(held), block=True, timeout=10)
    assert connect("c").ask(Acquire("jobs", timeout=5), block=True, timeout=10).member_id == "c"


def test_a_lease_with_a_ttl_is_refreshed_while_the_holder_lives(connect, backend_url):
    coord = connect(url=backend_url + ("&" if "?" in backend_url else "?") + "heartbeat_interval=0.05")
    if not coord._route.session.actor_class.LEASE_TTL:
        with pytest.raises(errors.NotSupported):
            coord.ask(Acquire("jobs", ttl=0.3), block=True, timeout=10)
        return
    started = time.monotonic()
    lease = coord.ask(Acquire("jobs", ttl=0.3), block=True, timeout=10)
    assert lease.ttl == 0.3
    # Wait for refreshes that carry the lease past three TTLs from the grant.
    wait_until(lambda: (lease._state.expires_at or 0) > started + 1.0, timeout=10)
    lease.check()
    with pytest.raises(errors.LockTimeout):
        connect("other").ask(Acquire("jobs", timeout=0), block=True, timeout=10)


def test_reserved_and_malformed_lock_names_are_refused_before_sending(connect):
    with pytest.raises(errors.InvalidArgument):
        Acquire("__leader__/g")
    with pytest.raises(errors.InvalidArgument):
        Acquire("")
    with pytest.raises(errors.InvalidArgument):
        Acquire("x", timeout=-1)
    with pytest.raises(errors.InvalidArgument):
        connect().ask("not a message")


def test_a_session_holding_hundreds_of_locks_refreshes_them_all(connect):
    # More than one batch anywhere a backend batches refreshes (etcd's
    # transactions take at most 128 operations).
    coord = connect("holder")
    leases = [coord.ask(Acquire(f"job-{i}"), block=True, timeout=10) for i in range(300)]
    assert coord.ask(Heartbeat(), block=True, timeout=60) > 0
    for lease in leases:
        lease.check()
    assert coord.statistics()["leases"] == 300
    with pytest.raises(errors.LockTimeout):
        connect("other").ask(Acquire("job-299", timeout=0), block=True, timeout=10)


@pytest.mark.timeout(60)
def test_a_lease_marked_lost_sets_its_lost_event_however_the_two_threads_interleave():
    # The event is made on first use, by whichever thread asks: a holder
    # starting to wait while the session marks the lease lost must never
    # miss it.
    from coordactors.messages.locks import LeaseState

    for _round in range(2000):
        state = LeaseState()
        seen = []
        waiter = threading.Thread(target=lambda: seen.append(state.lost.wait(10)))
        waiter.start()
        state.mark_lost("released")
        waiter.join(15)
        assert seen == [True]
        assert state.lost.is_set() and state.cause == "released"


def test_a_released_lease_reports_itself_lost_to_check_held_and_its_event(connect):
    coord = connect("me")
    lease = coord.ask(Acquire("lazy-event"), block=True)
    waiting = lease.lost  # made before the release
    assert lease.held and not waiting.is_set()
    coord.ask(Release(lease), block=True)
    assert waiting.wait(10) and not lease.held
    with pytest.raises(errors.LockLost, match="released"):
        lease.check()
    other = coord.ask(Acquire("lazy-event"), block=True)
    coord.ask(Release(other), block=True)
    assert other.lost.is_set()  # made after the release
