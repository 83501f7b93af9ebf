"""connect()/stop() hygiene on the embedded memory:// backend.

A stopped coordinator leaves nothing behind: no thread, no file descriptor,
no lock held, no group membership, no leadership.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from typing import Any

import pytest

import coordactors
from coordactors.errors import BackendUnavailable, CoordinatorStopped, LockTimeout
from coordactors.events import MemberLeft
from coordactors.messages import Acquire, GetGroups, Release
from coordactors.runtime import runtime

try:
    from helpers import wait_until
except ImportError:  # tests/ is a package
    from tests.helpers import wait_until

CYCLES = 200
SETTLE = 10.0  # seconds threads get to exit after the last stop()


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds() -> dict[str, str]:
    listing = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            listing[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            listing[fd] = "?"
    return listing


def _namespace() -> str:
    return f"memory://lifecycle-{uuid.uuid4().hex[:12]}"


def test_connect_stop_cycles_leave_threads_and_fds_as_they_were() -> None:
    threads_before = _threads()
    fds_before = _fds()
    users_before = runtime.users
    for i in range(CYCLES):
        coord = coordactors.connect("memory://lifecycle", f"m{i}")
        try:
            coord.join("lifecycle", {"cycle": i}, create=True)
            lease = coord.ask(Acquire("lifecycle-lock", timeout=10), block=True, timeout=10)
            coord.ask(Release(lease), block=True, timeout=10)
        finally:
            coord.stop()
        assert coord.stopped

    assert runtime.users == users_before
    # Only what the cycles added counts: threads and descriptors of earlier
    # tests (a Consul reader finishing its long poll) may end meanwhile.
    wait_until(
        lambda: not _threads() - threads_before,
        SETTLE,
        message=lambda: f"threads left behind: {sorted(t.name for t in _threads() - threads_before)}",
    )

    def new_fds() -> dict[str, str]:
        return {fd: target for fd, target in _fds().items() if fds_before.get(fd) != target}

    wait_until(lambda: not new_fds(), SETTLE, message=lambda: f"{_fd_count()} fds open, {len(fds_before)} before; new: {new_fds()}")


def test_stop_is_idempotent() -> None:
    coord = coordactors.connect(_namespace(), "idempotent")
    assert not coord.stopped
    coord.stop()
    assert coord.stopped
    coord.stop()
    coord.stop(timeout=0.1)
    assert coord.stopped
    assert "stopped" in repr(coord)


def test_stopped_coordinator_raises_coordinator_stopped() -> None:
    assert issubclass(CoordinatorStopped, BackendUnavailable)
    coord = coordactors.connect(_namespace(), "stopped")
    coord.stop()
    with pytest.raises(CoordinatorStopped):
        coord.ask(GetGroups())
    with pytest.raises(CoordinatorStopped):
        coord.ask(GetGroups(), block=True, timeout=1)
    with pytest.raises(CoordinatorStopped):
        coord.submit(GetGroups())
    with pytest.raises(CoordinatorStopped):
        coord.tell(GetGroups())
    with pytest.raises(CoordinatorStopped):
        coord.join("group", create=True)
    with pytest.raises(CoordinatorStopped):
        with coord.lock("lock", timeout=0):
            pass  # pragma: no cover
    with pytest.raises(CoordinatorStopped):
        asyncio.run(coord.request(GetGroups(), timeout=1))


def test_with_block_stops_on_exit() -> None:
    namespace = _namespace()
    observer = coordactors.connect(namespace, "observer")
    try:
        with coordactors.connect(namespace, "scoped") as coord:
            assert not coord.stopped
            coord.join("group", create=True)
            assert observer.members("group") == {"scoped"}
        assert coord.stopped
        with pytest.raises(CoordinatorStopped):
            coord.ask(GetGroups())
        assert observer.members("group") == frozenset()
    finally:
        observer.stop()


def test_with_block_stops_when_the_body_raises() -> None:
    namespace = _namespace()
    observer = coordactors.connect(namespace, "observer")
    try:
        with pytest.raises(RuntimeError, match="body failed"):
            with coordactors.connect(namespace, "scoped") as coord:
                coord.join("group", create=True)
                coord.ask(Acquire("lock", timeout=0), block=True, timeout=10)
                raise RuntimeError("body failed")
        assert coord.stopped
        assert observer.members("group") == frozenset()
        lease = observer.ask(Acquire("lock", timeout=0), block=True, timeout=10)
        assert lease.member_id == "observer"
    finally:
        observer.stop()


def test_stop_releases_locks_leaves_groups_and_stands_down() -> None:
    namespace = _namespace()
    holder = coordactors.connect(namespace, "holder")
    other = coordactors.connect(namespace, "other")
    seen: list[Any] = []
    try:
        holder.join("workers", create=True)
        other.join("workers")
        other.watch("workers", seen.append)
        held = holder.ask(Acquire("job", timeout=0), block=True, timeout=10)
        with pytest.raises(LockTimeout):
            other.ask(Acquire("job", timeout=0), block=True, timeout=10)
        holder.campaign("workers")
        wait_until(lambda: other.leader("workers") == "holder", 10, message=lambda: f"leader is {other.leader('workers')!r}")
        other.campaign("workers")
        assert other.members("workers") == {"holder", "other"}

        holder.stop()

        # Synchronously released and left by the time stop() returns.
        lease = other.ask(Acquire("job", timeout=0), block=True, timeout=10)
        assert lease.member_id == "other"
        assert lease.fence > held.fence
        assert other.members("workers") == {"other"}
        assert held.lost.is_set() and not held.held
        wait_until(lambda: other.leader("workers") == "other", 10, message=lambda: f"leader is {other.leader('workers')!r}")
        wait_until(lambda: MemberLeft("workers", "holder") in seen, 10, message=lambda: f"events seen: {seen}")
    finally:
        holder.stop()
        other.stop()


def test_the_runtime_stops_its_pools_when_a_worker_left_on_its_own() -> None:
    # A futurist worker whose idle wait times out just as it is stopped
    # leaves without taking the no-op item meant to wake it; stopping the
    # pool must not then wait for that item forever.
    from coordactors.runtime import QuietThreadPool, _shutdown_promptly

    pool = QuietThreadPool(max_workers=2)
    started = threading.Barrier(3)
    for _ in range(2):  # two workers, both busy at once
        pool.submit(started.wait, 10)
    started.wait(10)
    workers = list(pool._workers)
    assert len(workers) == 2
    workers[0].stop()  # as if stopped just before its idle get timed out: it leaves on its own
    workers[0].join(10)
    assert not workers[0].is_alive()
    stopper = threading.Thread(target=_shutdown_promptly, args=(pool,), daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "stopping the pool hung"
    assert not any(worker.is_alive() for worker in workers)
