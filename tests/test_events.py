"""Pushed events, on every backend: no application polling."""

from __future__ import annotations

import threading

import pykka
import pytest

from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.testing import EventRecorder
from helpers import wait_until


def test_joins_and_leaves_are_pushed_in_order(connect, recorder):
    watcher, member = connect("watcher"), connect("m")
    watcher.create_group("g")
    watcher.watch("g", recorder)
    for _ in range(5):
        member.join("g")
        member.leave("g")
    expected = [MemberJoined("g", "m"), MemberLeft("g", "m")] * 5
    events = recorder.wait_for(lambda events: len(events) >= 10)
    assert events == expected


def test_events_of_many_members_keep_the_order_the_backend_applied(connect, recorder):
    watcher = connect("watcher")
    watcher.create_group("g")
    watcher.watch("g", recorder)
    members = [connect(f"m{i}") for i in range(4)]
    for coord in members:
        coord.join("g")
    for coord in reversed(members):
        coord.leave("g")
    expected = [MemberJoined("g", f"m{i}") for i in range(4)] + [MemberLeft("g", f"m{i}") for i in reversed(range(4))]
    assert recorder.wait_for(lambda events: len(events) >= 8) == expected


def test_an_event_filter_delivers_only_the_chosen_kinds(connect, recorder):
    watcher, member = connect("watcher"), connect("m")
    watcher.create_group("g")
    watcher.watch("g", recorder, events={MemberLeft})
    member.join("g")
    member.leave("g")
    assert recorder.wait_for(lambda events: events) == [MemberLeft("g", "m")]


def test_unwatch_stops_the_events(connect, recorder):
    watcher, member = connect("watcher"), connect("m")
    other = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", recorder)
    watcher.watch("g", other)
    watcher.unwatch("g", recorder)
    member.join("g")
    other.wait_for_event(MemberJoined("g", "m"))
    assert recorder.events == []


def test_events_of_other_groups_are_not_delivered(connect, recorder):
    watcher, member = connect("watcher"), connect("m")
    watcher.create_group("g")
    watcher.watch("g", recorder)
    member.join("elsewhere", create=True)
    member.join("g")
    assert recorder.wait_for(lambda events: events) == [MemberJoined("g", "m")]


class _Collector(pykka.ThreadingActor):
    def __init__(self, seen: list, arrived: threading.Event) -> None:
        super().__init__()
        self.seen = seen
        self.arrived = arrived

    def on_receive(self, message):
        self.seen.append(message)
        if len(self.seen) >= 3:
            self.arrived.set()


def test_an_actor_subscriber_receives_events_by_tell(connect):
    seen: list = []
    arrived = threading.Event()
    actor = _Collector.start(seen, arrived)
    try:
        watcher, member = connect("watcher"), connect("m")
        watcher.join("g", create=True)
        watcher.watch("g", actor)
        member.join("g")
        member.campaign("g")
        member.leave("g")
        assert arrived.wait(10), seen
        assert seen == [MemberJoined("g", "m"), LeaderElected("g", "m"), MemberLeft("g", "m")]
    finally:
        actor.stop()


def test_a_failing_subscriber_is_dropped_and_others_still_get_events(connect, recorder, caplog):
    calls = []

    def broken(event):
        calls.append(event)
        raise RuntimeError("subscriber bug")

    watcher, member = connect("watcher"), connect("m")
    watcher.create_group("g")
    watcher.watch("g", broken)
    watcher.watch("g", recorder)
    member.join("g")
    member.leave("g")
    member.join("g")
    recorder.wait_for(lambda events: len(events) >= 3)
    # The failure is logged from the subscriber's own callback thread.
    wait_until(lambda: "failed and was dropped" in caplog.text, message=lambda: caplog.text)
    assert calls == [MemberJoined("g", "m")]
    assert watcher.members("g") == {"m"}  # the supervisor and session live on


def test_callable_subscribers_never_run_on_an_actor_thread(connect):
    threads = []
    arrived = threading.Event()

    def subscriber(event):
        threads.append(threading.current_thread().name)
        arrived.set()

    watcher, member = connect("watcher"), connect("m")
    watcher.create_group("g")
    watcher.watch("g", subscriber)
    member.join("g")
    assert arrived.wait(10)
    assert not any(name.startswith(("MemorySession", "FileSession", "IpcSession", "SupervisorActor")) for name in threads), threads


def test_watching_a_group_before_it_exists_delivers_its_events(connect, recorder):
    watcher, member = connect("watcher"), connect("m")
    watcher.watch("later", recorder)
    member.join("later", create=True)
    recorder.wait_for_event(MemberJoined("later", "m"))


def test_heartbeat_replies_seconds_until_the_next_one(connect):
    from coordactors.messages import Heartbeat

    interval = connect().ask(Heartbeat(), block=True, timeout=10)
    assert isinstance(interval, float) and interval > 0


@pytest.mark.parametrize("bad", [object(), 3, "text"])
def test_a_subscriber_must_be_an_actor_or_a_callable(connect, bad):
    from coordactors import errors

    with pytest.raises(errors.InvalidArgument):
        connect().watch("g", bad)
