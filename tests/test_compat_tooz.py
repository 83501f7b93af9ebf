"""The tooz-compatible facade keeps tooz's documented semantics on every backend.

Each test drives ``coordactors.compat.tooz`` the way tooz code does (bytes
ids, async results with ``.get()``, callbacks run by ``run_watchers()``) on
every row of ``backend_url``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import pytest

import coordactors.compat.tooz as tooz
from coordactors.compat.tooz import coordination
from tests.helpers import wait_until

Factory = Callable[..., coordination.CoordinationDriver]


@pytest.fixture
def tooz_coordinator(backend_url: str) -> Iterator[Factory]:
    """Make started tooz-facade coordinators on ``backend_url``; all are stopped after the test."""
    made: list[coordination.CoordinationDriver] = []

    def make(member_id: bytes) -> coordination.CoordinationDriver:
        coord = coordination.get_coordinator(backend_url, member_id)
        coord.start(start_heart=True)
        made.append(coord)
        return coord

    yield make
    for coord in made:
        if coord.is_started:
            coord.stop()


def _raises(kind: type[BaseException], result: Any) -> BaseException:
    with pytest.raises(kind) as info:
        result.get(timeout=30)
    return info.value


def test_groups_members_and_capabilities_follow_tooz_semantics_and_error_cases(tooz_coordinator: Factory) -> None:
    a, b = tooz_coordinator(b"alpha"), tooz_coordinator(b"beta")

    assert _raises(coordination.GroupNotCreated, a.join_group(b"pool")).group_id == b"pool"
    assert _raises(coordination.GroupNotCreated, a.get_members(b"pool")).group_id == b"pool"
    assert _raises(coordination.GroupNotCreated, a.delete_group(b"pool")).group_id == b"pool"
    assert _raises(coordination.GroupNotCreated, a.leave_group(b"pool")).group_id == b"pool"

    assert a.create_group(b"pool").get() is None
    error = _raises(coordination.GroupAlreadyExist, b.create_group(b"pool"))
    assert error.group_id == b"pool"
    assert isinstance(error.cause, Exception) and error.__cause__ is error.cause
    assert b"pool" in a.get_groups().get()

    a.join_group(b"pool").get()  # tooz's default capabilities: b""
    b.join_group(b"pool", {"weight": 3, "tag": b"\x00\xff", b"raw": (1, "two")}).get()
    error = _raises(coordination.MemberAlreadyExist, a.join_group(b"pool"))
    assert (error.group_id, error.member_id) == (b"pool", b"alpha")
    assert a.get_members(b"pool").get() == {b"alpha", b"beta"}
    assert a.get_member_capabilities(b"pool", b"alpha").get() == b""
    assert a.get_member_capabilities(b"pool", b"beta").get() == {"weight": 3, "tag": b"\x00\xff", b"raw": (1, "two")}
    assert _raises(coordination.MemberNotJoined, a.get_member_capabilities(b"pool", b"nobody")).member_id == b"nobody"

    b.update_capabilities(b"pool", [b"new", None, 1.5]).get()
    assert a.get_member_info(b"pool", b"beta").get() == {"capabilities": [b"new", None, 1.5]}
    assert a.get_members_with_capabilities(b"pool").get() == {b"alpha": b"", b"beta": [b"new", None, 1.5]}

    assert _raises(coordination.GroupNotEmpty, a.delete_group(b"pool")).group_id == b"pool"
    a.leave_group(b"pool").get()
    error = _raises(coordination.MemberNotJoined, a.leave_group(b"pool"))
    assert (error.group_id, error.member_id) == (b"pool", b"alpha")
    assert _raises(coordination.MemberNotJoined, a.update_capabilities(b"pool", b"x")).member_id == b"alpha"
    b.leave_group(b"pool").get()
    assert a.delete_group(b"pool").get() is None
    assert b"pool" not in a.get_groups().get()

    a.join_group_create(b"made-on-join", capabilities=b"caps")
    b.join_group_create(b"made-on-join")
    assert b.get_members(b"made-on-join").get() == {b"alpha", b"beta"}
    assert isinstance(error, tooz.ToozError)


def test_membership_events_are_delivered_by_run_watchers_in_the_callers_thread(tooz_coordinator: Factory) -> None:
    watcher, other = tooz_coordinator(b"watcher"), tooz_coordinator(b"other")
    with pytest.raises(coordination.GroupNotCreated):
        watcher.watch_join_group(b"room", print)
    watcher.create_group(b"room").get()
    seen: list[tuple[str, Any, str]] = []

    def joined(event: coordination.MemberJoinedGroup) -> str:
        seen.append(("joined", event, threading.current_thread().name))
        return "join-result"

    def left(event: coordination.MemberLeftGroup) -> str:
        seen.append(("left", event, threading.current_thread().name))
        return "leave-result"

    watcher.watch_join_group(b"room", joined)
    watcher.watch_leave_group(b"room", left)
    other.join_group(b"room").get()
    results: list[Any] = []
    wait_until(lambda: results.extend(watcher.run_watchers()) or results, message=lambda: repr(seen))
    assert results == ["join-result"]
    kind, event, thread = seen[0]
    assert (kind, event) == ("joined", coordination.MemberJoinedGroup(b"room", b"other"))
    assert (event.group_id, event.member_id) == (b"room", b"other")
    assert thread == threading.current_thread().name

    other.leave_group(b"room").get()
    results = []
    wait_until(lambda: results.extend(watcher.run_watchers()) or results, message=lambda: repr(seen))
    assert results == ["leave-result"]
    assert seen[-1][:2] == ("left", coordination.MemberLeftGroup(b"room", b"other"))

    with pytest.raises(coordination.WatchCallbackNotFound) as info:
        watcher.unwatch_join_group(b"room", left)
    assert info.value.group_id == b"room" and info.value.callback is left
    with pytest.raises(coordination.WatchCallbackNotFound):
        watcher.unwatch_elected_as_leader(b"room", joined)
    watcher.unwatch_join_group(b"room", joined)
    watcher.unwatch_leave_group(b"room", left)
    other.join_group(b"room").get()
    wait_until(lambda: b"other" in watcher.get_members(b"room").get())
    assert watcher.run_watchers() == []


def test_exactly_one_member_is_elected_and_standing_down_hands_leadership_over(tooz_coordinator: Factory) -> None:
    a, b = tooz_coordinator(b"a"), tooz_coordinator(b"b")
    a.create_group(b"crew").get()
    elected: dict[bytes, list[Any]] = {b"a": [], b"b": []}
    a.watch_elected_as_leader(b"crew", elected[b"a"].append)
    a.run_watchers()
    assert elected[b"a"] == [coordination.LeaderElected(b"crew", b"a")]
    assert a.get_leader(b"crew").get() == b"a"
    b.watch_elected_as_leader(b"crew", elected[b"b"].append)
    b.run_watchers()
    a.run_watchers()
    assert elected[b"b"] == [] and len(elected[b"a"]) == 1
    assert b.get_leader(b"crew").get() == b"a"

    assert a.stand_down_group_leader(b"crew") is True
    wait_until(lambda: (b.run_watchers(), elected[b"b"])[1], message=lambda: repr(elected))
    assert elected[b"b"] == [coordination.LeaderElected(b"crew", b"b")]
    assert a.get_leader(b"crew").get() == b"b"
    assert b.stand_down_group_leader(b"nothing-here") is False


def test_locks_exclude_across_coordinators_with_tooz_return_values_and_fences(tooz_coordinator: Factory) -> None:
    a, b = tooz_coordinator(b"a"), tooz_coordinator(b"b")
    mine, theirs = a.get_lock(b"jobs"), b.get_lock("jobs")
    assert mine.name == b"jobs"
    assert mine.release() is False  # never acquired
    assert mine.acquire() is True
    first_fence = mine.fence
    assert isinstance(first_fence, int)
    assert mine.heartbeat() is True and mine.is_still_owner() is True
    assert theirs.acquire(blocking=False) is False
    assert theirs.acquire(blocking=0.05) is False
    assert theirs.acquire(True, timeout=0.05) is False
    with pytest.raises(coordination.LockAcquireFailed):
        with theirs(blocking=False):
            pass

    got = threading.Event()
    waiter = threading.Thread(target=lambda: theirs.acquire() and got.set(), daemon=True)
    waiter.start()
    assert mine.release() is True
    assert mine.release() is False
    assert got.wait(30)
    waiter.join(30)
    assert theirs.fence > first_fence
    assert theirs.release() is True

    with mine as held:
        assert held is mine and mine.fence > first_fence
        assert b.get_lock(b"jobs").acquire(False) is False
    assert mine.acquired is False
    with pytest.raises(ValueError):
        a.get_lock(b"")


def test_lifecycle_errors_and_stop_leaving_groups(tooz_coordinator: Factory, backend_url: str) -> None:
    a, b = tooz_coordinator(b"a"), tooz_coordinator(b"b")
    with pytest.raises(tooz.ToozError):
        a.start()
    assert isinstance(a.heartbeat(), float) and a.heartbeat() > 0
    a.join_group_create(b"g")
    a.stop()
    assert not a.is_started
    with pytest.raises(tooz.ToozError):
        a.stop()
    assert b.get_members(b"g").get() == set()
    idle = coordination.get_coordinator(backend_url, b"idle")
    with pytest.raises(tooz.ToozError):
        idle.get_members(b"g").get()


def test_after_a_lost_session_the_lock_reports_loss_and_regained_leadership_runs_the_callback_again(tooz_coordinator: Factory) -> None:
    coord = tooz_coordinator(b"solo")
    coord.create_group(b"team").get()
    elected: list[Any] = []
    coord.watch_elected_as_leader(b"team", elected.append)
    coord.run_watchers()
    assert len(elected) == 1
    lock = coord.get_lock(b"held")
    assert lock.acquire() is True
    coord.coordinator.inject_failure("drill")

    wait_until(lambda: not lock.heartbeat())
    assert lock.is_still_owner() is False
    assert lock.release() is False
    wait_until(lambda: (coord.run_watchers(), len(elected) == 2)[1], timeout=30, message=lambda: repr(elected))
    assert elected[1] == coordination.LeaderElected(b"team", b"solo")
    assert coord.get_leader(b"team").get() == b"solo"
    assert lock.acquire(blocking=5) is True and lock.release() is True


def test_a_member_that_joins_and_leaves_between_two_runs_gives_both_events_in_order(tooz_coordinator: Factory) -> None:
    # tooz diffs member lists at each run_watchers() and would show neither.
    watcher, other = tooz_coordinator(b"watcher"), tooz_coordinator(b"other")
    watcher.create_group(b"room").get()
    seen: list[tuple[str, bytes]] = []
    watcher.watch_join_group(b"room", lambda event: seen.append(("joined", event.member_id)))
    watcher.watch_leave_group(b"room", lambda event: seen.append(("left", event.member_id)))
    other.join_group(b"room").get()
    other.leave_group(b"room").get()
    wait_until(lambda: (watcher.run_watchers(), len(seen) >= 2)[1], message=lambda: repr(seen))
    assert seen == [("joined", b"other"), ("left", b"other")]
