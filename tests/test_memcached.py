"""memcached://: what only memcached can do to a session -- evict, restart, expire.

The behaviour suite (test_groups, test_locks, ...) runs on memcached through
conftest's ``memcached`` row; these tests reach behind the session with a raw
pymemcache client to play the part of memcached losing or overwriting keys.
Tests that kill memcached use a private server of their own, so the shared
one never goes away under other tests.
"""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any, Callable, Iterator

import pytest
from pymemcache.client.base import Client

import coordactors
from coordactors import errors
from coordactors.backend_actors.memcached import MAX_KEY_BYTES, MemcachedSession, keys_for
from coordactors.events import LeaderElected, LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder
from coordactors.testing.pytest_plugin import memcached_server, start_or_skip  # noqa: F401  (fixture, used by name)
from coordactors.testing.servers import MemcachedServer
from helpers import BusySession, wait_until

FAST = "heartbeat_interval=0.05&backoff_initial=0.05&backoff_max=0.2"


def _with(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options


@pytest.fixture
def url(memcached_server: MemcachedServer) -> str:  # noqa: F811
    """A private namespace on the shared memcached."""
    return f"{memcached_server.url}?namespace=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(memcached_server: MemcachedServer) -> Iterator[Client]:  # noqa: F811
    """A plain pymemcache client: memcached itself, evicting and overwriting."""
    client = Client((memcached_server.host, memcached_server.port), default_noreply=False, timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="module")
def private_server() -> Iterator[MemcachedServer]:
    """A memcached of this module's own, for tests that kill and restart it."""
    server = start_or_skip(MemcachedServer())
    yield server
    server.stop()


def _own_events(coord: coordactors.Coordinator) -> EventRecorder:
    recorder = EventRecorder()
    coord.subscribe(recorder)
    return recorder


def _restored(recorder: EventRecorder) -> Callable[[list[Any]], bool]:
    return lambda events: any(isinstance(e, SessionRestored) for e in events)


# -- fences ---------------------------------------------------------------------


def test_fences_keep_increasing_after_the_fence_counter_is_evicted(coordinators, url, raw):
    coord = coordinators("a", url)
    keys = keys_for(url)
    fences = []
    for _ in range(3):
        lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
        fences.append(lease.fence)
        coord.ask(Release(lease), block=True, timeout=10)
        assert raw.delete(keys.fence("jobs"))  # as memcached's LRU would
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    fences.append(lease.fence)
    assert fences == sorted(set(fences)), fences


def test_fences_keep_increasing_after_memcached_restarts(coordinators, private_server):
    url = _with(f"{private_server.url}?namespace=t{uuid.uuid4().hex[:12]}", FAST)
    coord = coordinators("a", url)
    own = _own_events(coord)
    coord.join("g", {"slots": 2}, create=True)
    held = coord.ask(Acquire("jobs"), block=True, timeout=10)

    private_server.kill()
    private_server.restart()  # same port, and memcached forgets everything

    own.wait_for(_restored(own))
    kinds = [type(e) for e in own.events]
    assert kinds == [SessionLost, LockLost, SessionRestored], own.events
    assert held.lost.is_set()
    with pytest.raises(errors.LockLost):
        held.check()
    assert coord.members("g") == {"a"}  # restored into a memcached that had forgotten the group
    assert coord.capabilities("g", "a") == {"slots": 2}
    again = coord.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
    assert again.fence > held.fence


def test_locks_a_broken_connection_could_not_free_are_freed_by_the_next_one(coordinators, private_server):
    url = f"{private_server.url}?namespace=t{uuid.uuid4().hex[:12]}"
    holder = coordinators("a", _with(url, FAST + "&timeout=0.3"))
    other = coordinators("b", url)
    own = _own_events(holder)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    private_server.pause()  # memcached answers nothing: the session fails, and cannot free the lock
    try:
        own.wait_for(lambda events: any(isinstance(e, LockLost) for e in events))
    finally:
        private_server.resume()
    own.wait_for(_restored(own))
    # Freed by the restored session at once, not ceil(session_ttl) + 1 = 11 s later.
    assert other.ask(Acquire("jobs", timeout=0), block=True, timeout=10).fence > lease.fence


def test_a_lease_given_up_during_a_pause_stays_lost_when_a_late_refresh_lands(coordinators, private_server):
    # memcached paused for less than the request timeout: the refresh sent
    # during the pause is answered (successfully) after the holder's own
    # clock gave the lease up.  It must stay lost, and the lock be free.
    url = _with(f"{private_server.url}?namespace=t{uuid.uuid4().hex[:12]}", FAST + "&timeout=5")
    holder, other = coordinators("a", url), coordinators("b", url)
    lease = holder.ask(Acquire("jobs", ttl=1), block=True, timeout=10)
    private_server.pause()
    try:
        wait_until(lambda: not lease.held, timeout=10)
    finally:
        private_server.resume()
    wait_until(lambda: lease.lost.is_set(), timeout=10)
    assert not lease.held
    granted = other.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
    assert granted.fence > lease.fence
    assert not lease.held


def test_lock_delay_grants_nothing_until_the_restarted_server_has_been_up_that_long(coordinators, private_server):
    # lock_delay=2: memcached counts whole seconds, so this still finishes within a few seconds.
    url = _with(f"{private_server.url}?namespace=t{uuid.uuid4().hex[:12]}", FAST + "&lock_delay=2")
    private_server.kill()
    private_server.restart()
    coord = coordinators("a", url)
    with pytest.raises(errors.LockTimeout):
        coord.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    # A waiting acquire is granted once the delay is over (retried on every poll).
    assert coord.ask(Acquire("jobs", timeout=10), block=True, timeout=15).member_id == "a"


# -- locks: loss noticed on refresh ----------------------------------------------


@pytest.mark.parametrize("what", ["overwritten", "evicted"])
def test_a_lock_key_overwritten_or_evicted_is_lost_on_the_next_refresh(coordinators, url, raw, what):
    coord = coordinators("a", _with(url, FAST))
    own = _own_events(coord)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    key = keys_for(url).lock("jobs")
    if what == "overwritten":
        raw.set(key, b"someone-else:1:intruder", expire=60)
    else:
        raw.delete(key)

    event = own.wait_for(lambda events: any(isinstance(e, LockLost) for e in events))[0]
    assert event == LockLost("jobs", lease.fence, event.cause)
    assert "refresh" in event.cause
    assert lease.lost.is_set()
    with pytest.raises(errors.LockLost):
        lease.check()
    with pytest.raises(errors.LockNotHeld):
        coord.ask(Release(lease), block=True, timeout=10)
    if what == "overwritten":
        assert raw.get(key) == b"someone-else:1:intruder"  # the loser never touches the new value
    assert not any(isinstance(e, SessionLost) for e in own.events)  # the session itself lives on


def test_a_lock_is_stored_for_its_ttl_rounded_up_to_whole_seconds_plus_one(coordinators, url, raw):
    # memcached's clock ticks once a second, so a key stored for N seconds
    # lives N-1 to N: 1.5 s must be stored as 3 for the key to outlive the lease.
    coord = coordinators("a", url)
    clock_before = raw.stats()[b"time"]
    coord.ask(Acquire("jobs", ttl=1.5), block=True, timeout=10)
    reply = raw.raw_command(b"mg " + keys_for(url).lock("jobs").encode() + b" t")  # "HD t<seconds left>"
    clock_after = raw.stats()[b"time"]
    assert reply.split()[0] == b"HD"
    left = int(reply.split()[1][1:])
    assert left == 3 if clock_before == clock_after else left in (2, 3), (reply, clock_before, clock_after)


def test_releasing_a_lock_that_changed_hands_leaves_the_new_holder_alone(coordinators, url, raw):
    coord = coordinators("a", url)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    key = keys_for(url).lock("jobs")
    raw.set(key, b"other-session:99:60000:b", expire=60)  # a's key expired and b took the lock
    with pytest.raises(errors.LockNotHeld):
        coord.ask(Release(lease), block=True, timeout=10)
    assert raw.get(key) == b"other-session:99:60000:b"


# -- locks: a waiter judges a dead holder by itself --------------------------------------


def test_a_waiter_takes_a_lock_nobody_refreshed_for_its_ttl_without_waiting_for_memcached(coordinators, url, raw):
    # A holder that died just after writing its lock: the value stays (here it
    # never expires at all) but nobody rewrites it.  The waiter has seen it
    # unchanged for the TTL it carries (0.5 s) and takes it over with cas.
    key = keys_for(url).lock("jobs")
    raw.set(key, b"dead-session:7:500:ghost", expire=0)
    waiter = coordinators("b", url)
    with pytest.raises(errors.LockTimeout):
        waiter.ask(Acquire("jobs", timeout=0), block=True, timeout=10)  # taken, at first sight

    lease = waiter.ask(Acquire("jobs", timeout=10), block=True, timeout=15)

    assert lease.fence > 7
    token, fence, _, member = raw.get(key).decode().split(":", 3)
    assert (token, int(fence), member) != ("dead-session", 7, "ghost") and int(fence) == lease.fence and member == "b"


def test_a_live_holder_keeps_its_lock_however_long_a_waiter_watches_it(coordinators, url, raw):
    holder, waiter = coordinators("a", _with(url, FAST)), coordinators("b", url)
    lease = holder.ask(Acquire("jobs", ttl=0.5), block=True, timeout=10)
    # Four TTLs of waiting: the holder's refreshes keep rewriting the value, so it never looks abandoned.
    with pytest.raises(errors.LockTimeout):
        waiter.ask(Acquire("jobs", timeout=2.0), block=True, timeout=10)
    lease.check()
    assert raw.get(keys_for(url).lock("jobs")).decode().split(":", 3)[1::2] == [str(lease.fence), "a"]
    holder.ask(Release(lease), block=True, timeout=10)
    assert waiter.ask(Acquire("jobs", timeout=10), block=True, timeout=15).fence > lease.fence


def test_a_lock_value_in_another_format_is_never_taken_over(coordinators, url, raw):
    key = keys_for(url).lock("jobs")
    raw.set(key, b"written by something else", expire=0)
    with pytest.raises(errors.LockTimeout):
        coordinators("b", url).ask(Acquire("jobs", timeout=1.5), block=True, timeout=10)
    assert raw.get(key) == b"written by something else"


# -- members: expiry ------------------------------------------------------------------


def test_a_member_whose_process_dies_leaves_when_its_key_expires(coordinators, url):
    from test_cross_process import Child

    short = _with(url, "session_ttl=1")  # member keys live 1-2 s past the last heartbeat
    observer = coordinators("observer", _with(url, FAST))
    observed = EventRecorder()
    observer.join("g", create=True)
    observer.watch("g", observed)
    child = Child(short, "doomed")
    try:
        child.do("join", group="g")
        child.do("campaign", group="g")
        observer.campaign("g")
        observed.wait_for_event(LeaderElected("g", "doomed"))
        os.kill(child.process.pid, signal.SIGKILL)  # no goodbye: only expiry can tell
        child.process.wait(10)
    finally:
        child.close()

    observed.wait_for_event(MemberLeft("g", "doomed"))
    observed.wait_for_event(LeaderElected("g", "observer"))
    assert observer.members("g") == {"observer"}
    assert observer.leader("g") == "observer"


def test_a_member_key_evicted_under_a_live_session_makes_it_rejoin(coordinators, url, raw):
    member = coordinators("m", _with(url, FAST))
    observer = coordinators("observer", _with(url, FAST))
    own, observed = _own_events(member), EventRecorder()
    member.join("g", {"v": 1}, create=True)
    observer.watch("g", observed)
    raw.delete(keys_for(url).member("g", "m"))  # evicted: the membership is gone

    own.wait_for(_restored(own))  # the heartbeat noticed; the supervisor restored it
    observed.wait_for(lambda events: events[:2] == [MemberLeft("g", "m"), MemberJoined("g", "m")])
    assert observer.members("g") == {"m"}
    assert observer.capabilities("g", "m") == {"v": 1}


def test_a_session_whose_registration_vanished_fails_and_is_restored(coordinators, url, raw):
    coord = coordinators("a", _with(url, FAST))
    own = _own_events(coord)
    coord.join("g", create=True)
    raw.delete(keys_for(url).session(coord._route.token))
    own.wait_for(_restored(own))
    assert "lost the session" in own.of_type(SessionLost)[0].cause
    assert coord.members("g") == {"a"}


# -- events from the group's log ----------------------------------------------------------


class _Watcher:
    """Just enough of a session to run MemcachedSession's catch-up logic on documents made by hand."""

    def __init__(self, leader: str | None = None) -> None:
        self.emitted: list[Any] = []
        self._views: dict[str, Any] = {}
        self.leader = leader

    def emit(self, event: Any) -> None:
        self.emitted.append(event)

    def do_lock_holder(self, name: str) -> str | None:
        return self.leader

    def _resync(self, group: str, view: Any, doc: dict[str, Any]) -> None:
        MemcachedSession._resync(self, group, view, doc)  # type: ignore[arg-type]

    def see(self, doc: dict[str, Any] | None, cas: bytes) -> list[Any]:
        self.emitted = []
        MemcachedSession._catch_up(self, "g", doc, cas)  # type: ignore[arg-type]
        return self.emitted


def _doc(epoch: str, log: list[list[Any]], members: list[str]) -> dict[str, Any]:
    return {"name": "g", "epoch": epoch, "members": {m: "token" for m in members}, "seq": log[-1][0] if log else 0, "log": log}


def test_a_watcher_replays_every_logged_event_in_order_even_between_two_polls():
    watcher = _Watcher()
    log = [[1, "join", "a"], [2, "leave", "a"], [3, "join", "a"], [4, "leader", "a"], [5, "join", "b"]]
    assert watcher.see(_doc("e1", log[:2], []), b"1") == [MemberJoined("g", "a"), MemberLeft("g", "a")]
    assert watcher.see(_doc("e1", log, ["a", "b"]), b"2") == [MemberJoined("g", "a"), LeaderElected("g", "a"), MemberJoined("g", "b")]
    assert watcher.see(_doc("e1", log, ["a", "b"]), b"2") == []  # unchanged (same cas): nothing read


def test_a_watcher_further_behind_than_the_log_reports_the_difference():
    watcher = _Watcher(leader="c")
    watcher.see(_doc("e1", [[1, "join", "a"], [2, "join", "b"]], ["a", "b"]), b"1")
    # Events 3..9 happened; the log kept only 8 and 9: a left, c joined and leads.
    later = _doc("e1", [[8, "join", "c"], [9, "leader", "c"]], ["b", "c"])
    assert watcher.see(later, b"2") == [MemberLeft("g", "a"), MemberJoined("g", "c"), LeaderElected("g", "c")]


def test_a_watcher_sees_the_members_of_a_deleted_or_recreated_group_leave():
    watcher = _Watcher()
    watcher.see(_doc("e1", [[1, "join", "a"]], ["a"]), b"1")
    assert watcher.see(None, b"") == [MemberLeft("g", "a")]
    assert watcher.see(_doc("e2", [[1, "join", "b"]], ["b"]), b"3") == [MemberJoined("g", "b")]
    assert watcher.see(_doc("e3", [], []), b"4") == [MemberLeft("g", "b")]  # re-created between two polls


# -- names and keys -----------------------------------------------------------------------


NEEDS_HASHING = ["with space", "grüppe ✓", "#starts-with-hash", "é" * 128, "x" * 250]


@pytest.mark.parametrize("name", NEEDS_HASHING)
def test_names_that_need_hashing_round_trip(coordinators, url, raw, name):
    keys = keys_for(url)
    key = keys.group(name)
    assert "#" in key and len(key.encode()) <= MAX_KEY_BYTES
    a, b = coordinators(name, url), coordinators("b", url)
    a.join(name, {"n": name}, create=True)
    a.campaign(name)
    lease = a.ask(Acquire(name), block=True, timeout=10)

    assert name in b.groups()
    assert b.members(name) == {name}
    assert b.capabilities(name, name) == {"n": name}
    assert b.leader(name) == name
    assert raw.get(keys.lock(name)).decode().split(":", 3)[1::2] == [str(lease.fence), name]  # token:fence:ttl:member
    with pytest.raises(errors.LockTimeout):
        b.ask(Acquire(name, timeout=0), block=True, timeout=10)
    a.ask(Release(lease), block=True, timeout=10)
    a.leave(name)
    a.delete_group(name)
    assert name not in b.groups()


def test_safe_names_are_used_as_keys_as_they_are(url):
    keys = keys_for(url)
    assert keys.group("a/b.c").endswith(":g:a/b.c")
    assert keys.lock("jobs").endswith(":l:jobs")
    assert keys.group("a b") != keys.group("a_b")


# -- URLs and connecting -------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["session_ttl=none", "namespace=has%20space", "namespace=", "timeout=0", "lock_delay=-1", "bogus=1"],
)
def test_malformed_options_are_refused_naming_them(memcached_server, query):  # noqa: F811
    with pytest.raises(errors.InvalidArgument) as caught:
        coordactors.connect(f"{memcached_server.url}?{query}", "a")
    assert query.partition("=")[0] in str(caught.value)


def test_a_path_is_refused(memcached_server):  # noqa: F811
    with pytest.raises(errors.InvalidArgument):
        coordactors.connect(f"{memcached_server.url}/db", "a")


def test_connecting_to_a_server_that_is_down_fails_at_once():
    from coordactors.testing.servers import free_ports

    port = free_ports()[0]
    with pytest.raises(errors.BackendUnavailable) as caught:
        coordactors.connect(f"memcached://127.0.0.1:{port}?connect_timeout=2", "a")
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_the_declared_characteristics_make_no_linearizability_claim(coordinators, url):
    from coordactors.characteristics import Characteristics as C

    assert coordinators("a", url).characteristics == {
        C.DISTRIBUTED_ACROSS_THREADS,
        C.DISTRIBUTED_ACROSS_PROCESSES,
        C.DISTRIBUTED_ACROSS_HOSTS,
    }


def test_queued_acquires_and_releases_are_pipelined_and_answered_one_by_one(coordinators, url, raw):
    coord, other = coordinators("a", url), coordinators("b", url)
    names = [f"job-{i}" for i in range(6)]
    earlier = {}
    for name in names:  # their fence counters exist: the pipelined grant, not the seeding usual path
        lease = coord.ask(Acquire(name), block=True, timeout=10)
        earlier[name] = lease.fence
        coord.ask(Release(lease), block=True, timeout=10)
    taken = other.ask(Acquire("taken"), block=True, timeout=10)
    mine = {name: coord.ask(Acquire(name), block=True, timeout=10) for name in ("kept", "tampered")}
    tampered_key = keys_for(url).lock("tampered")
    raw.set(tampered_key, b"other-session:99:60000:b", expire=60)  # a's key expired and b took the lock

    session = coord._route.session._actor_weakref()
    pipelines = []
    pipeline = session._pipeline
    session._pipeline = lambda commands: pipelines.append([c.split()[0] for c in commands]) or pipeline(commands)
    busy = BusySession(session)
    acquires = {name: coord.submit(Acquire(name)) for name in names}
    refused = coord.submit(Acquire("taken", timeout=0))
    releases = {name: coord.submit(Release(lease)) for name, lease in mine.items()}
    busy.release()

    for name, future in acquires.items():
        assert future.result(timeout=10).fence > earlier[name]
        with pytest.raises(errors.LockTimeout):
            other.ask(Acquire(name, timeout=0), block=True, timeout=10)
    with pytest.raises(errors.LockTimeout):
        refused.result(timeout=10)
    assert releases["kept"].result(timeout=10) is None
    with pytest.raises(errors.LockNotHeld):
        releases["tampered"].result(timeout=10)
    assert raw.get(tampered_key) == b"other-session:99:60000:b"  # the new holder is left alone
    other.ask(Release(other.ask(Acquire("kept", timeout=0), block=True, timeout=10)), block=True, timeout=10)
    # Two pipelines: the six fences, then the six adds with both releases.
    assert pipelines == [[b"ma"] * 6, [b"ms"] * 6 + [b"md"] * 2]
    other.ask(Release(taken), block=True, timeout=10)


# -- pipelined meta replies ---------------------------------------------------------


class _Trickle:
    """A socket that hands out what the server sent a few bytes at a time."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    def recv(self, _size: int) -> bytes:
        chunk, self.data = self.data[: self.step], self.data[self.step :]
        return chunk


@pytest.mark.parametrize("step", [1, 5, 4096, 1 << 20])
def test_pipelined_meta_replies_are_read_whole_however_the_bytes_arrive(step: int) -> None:
    from coordactors.backend_actors.memcached import _read_meta_replies

    replies = [b"HD c%d" % i for i in range(2000)] + [b"VA 5", b"12\r\n3", b"NS", b"EX", b"NF"]
    data = b"\r\n".join(replies) + b"\r\nMN\r\n"
    got = _read_meta_replies(_Trickle(data, step), 2004)  # type: ignore[arg-type]
    assert got[:2000] == [[b"HD c%d" % i] for i in range(2000)]
    assert got[2000:] == [[b"VA 5", b"12\r\n3"], [b"NS"], [b"EX"], [b"NF"]]


def test_a_pipeline_answered_with_more_or_fewer_replies_than_sent_is_an_error() -> None:
    from pymemcache.exceptions import MemcacheServerError, MemcacheUnexpectedCloseError

    from coordactors.backend_actors.memcached import _read_meta_replies

    with pytest.raises(MemcacheServerError, match="more than the 1"):
        _read_meta_replies(_Trickle(b"HD\r\nHD\r\nMN\r\n", 3), 1)  # type: ignore[arg-type]
    with pytest.raises(MemcacheUnexpectedCloseError):
        _read_meta_replies(_Trickle(b"HD\r\n", 3), 2)  # type: ignore[arg-type]


def test_member_liveness_is_read_without_values_and_an_error_is_never_taken_for_a_member_gone(coordinators: Callable[..., Any], url: str) -> None:
    a, b = coordinators("a", url), coordinators("b", url)
    a.join("g", create=True)
    b.join("g")
    session = a._route.session._actor_weakref()
    sent: list[bytes] = []
    pipeline = session._pipeline

    def recording(commands: list[bytes]) -> list[list[bytes]]:
        sent.extend(commands)
        return pipeline(commands)

    session._pipeline = recording
    assert a.members("g") == {"a", "b"}
    assert sent and all(command.startswith(b"mg ") and command.count(b" ") == 1 for command in sent)  # no flags: no value back
    session._pipeline = lambda commands: [[b"CLIENT_ERROR bad data chunk"] for _ in commands]
    with pytest.raises(errors.BackendUnavailable, match="unexpected reply to mg"):
        a.members("g")
