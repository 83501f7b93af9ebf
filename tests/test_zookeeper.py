"""What only the ZooKeeper backend does: znode layout, fences, session states.

The behaviour suite runs on ``zookeeper://`` and ``kazoo://`` through the
``backend_url`` fixture; these tests look underneath, with a plain kazoo
client, and break the server on purpose (on a private server, so the shared
one stays healthy for everyone else).
"""

from __future__ import annotations

import struct
import threading
import types
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from helpers import BusySession, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

import coordactors
from coordactors import errors
from coordactors.backend_actors import zookeeper as zk
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder
from coordactors.testing.pytest_plugin import start_or_skip
from coordactors.testing.servers import ZooKeeperServer
from coordactors.urls import parse_url

NAMES = ["a/b", "/", ".", "..", "../..", "a.b", "%2E", "100%", "grüppe ✓", "日本語/名前", "x" * 256, "é" * 128]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of this module's own, for tests that kill or pause it."""
    server = start_or_skip(ZooKeeperServer())
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(zookeeper_server: ZooKeeperServer, namespace: str) -> str:
    return f"{zookeeper_server.url}?namespace={namespace}"


@pytest.fixture
def raw(zookeeper_server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A plain kazoo client on the shared server, to look at the znodes."""
    client = KazooClient(f"{zookeeper_server.host}:{zookeeper_server.port}", timeout=5)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def _session(coord: coordactors.Coordinator) -> Any:
    """The coordinator's current session actor object (for looking, from the test's thread)."""
    return coord._route.session._actor_weakref()


def _restored(events: list[Any]) -> bool:
    return any(isinstance(e, SessionRestored) for e in events)


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_name_becomes_one_plain_znode_name_and_comes_back(name):
    node = zk.encode_name(name)
    assert node not in (".", "..") and "/" not in node and "." not in node
    assert set(node) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-~%")
    assert zk.decode_name(node) == name


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=64))
def test_encoding_round_trips_and_keeps_distinct_names_distinct(name):
    node = zk.encode_name(name)
    assert zk.decode_name(node) == name
    assert "/" not in node and "." not in node


def _children_reply(children: list[str]) -> bytes:
    """A GetChildren reply as ZooKeeper sends it: a count, then each child's length and UTF-8 bytes."""
    reply = struct.pack(">i", len(children))
    for child in children:
        encoded = child.encode("utf-8")
        reply += struct.pack(">i", len(encoded)) + encoded
    return reply


def test_a_listing_reply_yields_the_member_nodes_only():
    long_name = zk.encode_name("w" * 300)  # a length whose prefix bytes are not all zero but one
    children = [zk.MEMBER + "a", "ev-join-a-0000000001", zk.MEMBER + zk.encode_name("wörker.1"), zk.MEMBER + long_name, "m", zk.MEMBER]
    reply = b"\x00\x00" + _children_reply(children)
    assert zk.member_nodes(reply, 2) == ["a", zk.encode_name("wörker.1"), long_name, ""]
    assert zk.member_nodes(_children_reply([]), 0) == []


def test_member_nodes_written_by_others_in_utf8_come_back_as_written():
    assert zk.member_nodes(_children_reply([zk.MEMBER + "wörker", zk.MEMBER + "a"]), 0) == ["wörker", "a"]


def test_names_with_slashes_dots_and_unicode_round_trip_through_zookeeper(coordinators, url, raw, namespace, recorder):
    member = "wörker/../1"
    a, observer = coordinators(member, url), coordinators("observer", url)
    for group in NAMES:
        observer.watch(group, recorder)
        a.join(group, {"name": group}, create=True)
        a.campaign(group)
    assert set(NAMES) <= observer.groups()
    for group in NAMES:
        assert observer.members(group) == {member}
        assert observer.capabilities(group, member) == {"name": group}
        assert observer.leader(group) == member
    for name in NAMES:
        lease = a.ask(Acquire(name, timeout=0), block=True, timeout=10)
        assert lease.name == name
        with pytest.raises(errors.LockTimeout):
            observer.ask(Acquire(name, timeout=0), block=True, timeout=10)
        a.ask(Release(lease), block=True, timeout=10)
    expected = {event for group in NAMES for event in (MemberJoined(group, member), LeaderElected(group, member))}
    recorder.wait_for(lambda events: expected <= set(events))
    # Underneath: one flat znode per group and per lock, all named by encoding.
    groups = raw.get_children(f"/{namespace}/groups")
    assert sorted(groups) == sorted(zk.encode_name(g) for g in NAMES)
    for group in NAMES:
        children = raw.get_children(f"/{namespace}/groups/{zk.encode_name(group)}")
        assert zk.MEMBER + zk.encode_name(member) in children
    locks = set(raw.get_children(f"/{namespace}/locks"))
    assert {zk.encode_name(n) for n in NAMES} <= locks


# -- fences ---------------------------------------------------------------------------------------


def test_the_fence_is_the_sequence_number_of_the_holders_claim(coordinators, url, raw, namespace):
    a = coordinators("a", url)
    lease = a.ask(Acquire("jobs"), block=True, timeout=10)
    directory = f"/{namespace}/locks/{zk.encode_name('jobs')}"
    (claim,) = raw.get_children(directory)
    assert zk.LOCK_MARK in claim and int(claim[-10:]) == lease.fence
    data, stat = raw.get(f"{directory}/{claim}")
    assert data.decode() == "a" and stat.ephemeralOwner != 0
    a.ask(Release(lease), block=True, timeout=10)
    assert raw.get_children(directory) == []  # the directory stays: it carries the counter


def test_fences_strictly_increase_across_holders_and_a_server_restart(coordinators, own_server):
    url = f"{own_server.url}?namespace=t{uuid.uuid4().hex[:12]}&session_ttl=2&backoff_initial=0.05&backoff_max=0.2"
    a, b = coordinators("a", url), coordinators("b", url)
    fences = []
    for coord in (a, b, a, b):
        lease = coord.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
        fences.append(lease.fence)
        coord.ask(Release(lease), block=True, timeout=10)
    held = a.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
    fences.append(held.fence)
    own, other = EventRecorder(), EventRecorder()
    a.subscribe(own)
    b.subscribe(other)

    own_server.kill()  # SIGKILL: the data directory stays
    try:
        own.wait_for(lambda events: any(isinstance(e, LockLost) for e in events))
        other.wait_for(lambda events: any(isinstance(e, SessionLost) for e in events))
    finally:
        own_server.restart()
    own.wait_for(_restored, timeout=20)
    other.wait_for(_restored, timeout=20)
    assert held.lost.is_set()
    assert [type(e) for e in own.events[:2]] == [SessionLost, LockLost]

    for coord in (b, a, b):
        lease = coord.ask(Acquire("jobs", timeout=15), block=True, timeout=20)
        fences.append(lease.fence)
        coord.ask(Release(lease), block=True, timeout=10)
    assert fences == sorted(fences) and len(set(fences)) == len(fences), fences


# -- session states -------------------------------------------------------------------------------


def test_a_suspended_session_loses_its_leases_and_comes_back_with_its_memberships_and_campaign(coordinators, own_server):
    ns = f"t{uuid.uuid4().hex[:12]}"
    # session_ttl=1: kazoo calls the connection SUSPENDED after ~0.67 s of silence.
    url = f"{own_server.url}?namespace={ns}&session_ttl=1&backoff_initial=0.05&backoff_max=0.2"
    worker = coordinators("worker", url)
    own = EventRecorder()
    worker.subscribe(own)
    worker.join("g", {"slots": 4}, create=True)
    worker.campaign("g")
    wait_until(lambda: worker.leader("g") == "worker")
    lease = worker.ask(Acquire("jobs"), block=True, timeout=10)

    own_server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        own.wait_for(lambda events: len(events) >= 3)
    finally:
        own_server.resume()
    assert [type(e) for e in own.events[:3]] == [SessionLost, LockLost, LockLost]
    assert "suspended" in own.of_type(SessionLost)[0].cause
    assert {e.name for e in own.of_type(LockLost)} == {"jobs", "__leader__/g"}
    assert lease.lost.is_set()
    with pytest.raises(errors.LockLost):
        lease.check()

    own.wait_for(_restored, timeout=20)
    observer = coordinators("observer", url)
    wait_until(lambda: observer.members("g") == {"worker"}, timeout=10)
    assert observer.capabilities("g", "worker") == {"slots": 4}
    wait_until(lambda: observer.leader("g") == "worker", timeout=10)
    again = observer.ask(Acquire("jobs", timeout=10), block=True, timeout=15)  # the old claim is gone
    assert again.fence > lease.fence


def test_an_expired_session_is_lost_then_restored_and_others_see_it_leave_and_return(coordinators, own_server):
    ns = f"t{uuid.uuid4().hex[:12]}"
    url = f"{own_server.url}?namespace={ns}&session_ttl=2&backoff_initial=0.05&backoff_max=0.2"
    worker, observer = coordinators("worker", url), coordinators("observer", url)
    own, seen = EventRecorder(), EventRecorder()
    worker.subscribe(own)
    worker.join("g", create=True)
    observer.watch("g", seen)
    lease = worker.ask(Acquire("jobs"), block=True, timeout=10)

    # Expire the worker's session from outside, as kazoo's own test harness
    # does: a second client resumes the session and closes it.
    session_id, password = _session(worker).conn.client.client_id
    thief = KazooClient(f"{own_server.host}:{own_server.port}", client_id=(session_id, password), timeout=2)
    thief.start(timeout=10)
    thief.stop()
    thief.close()

    own.wait_for(_restored, timeout=20)
    kinds = [type(e) for e in own.events]
    assert kinds == [SessionLost, LockLost, SessionRestored], own.events
    assert lease.lost.is_set()
    # The membership ended with the session (no log entry) and came back.
    seen.wait_for(lambda events: events[-2:] == [MemberLeft("g", "worker"), MemberJoined("g", "worker")])
    assert observer.ask(Acquire("jobs", timeout=5), block=True, timeout=10).fence > lease.fence


def test_a_lost_session_state_fails_the_session(coordinators, url):
    coord = coordinators("worker", url + "&backoff_initial=0.05&backoff_max=0.2")
    own = EventRecorder()
    coord.subscribe(own)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    session = _session(coord)
    session._on_state(session.conn, KazooState.LOST)  # as kazoo's connection thread would
    own.wait_for(_restored)
    assert "lost (expired or closed)" in own.of_type(SessionLost)[0].cause
    assert own.of_type(LockLost) == [LockLost("jobs", lease.fence, own.of_type(LockLost)[0].cause)]


def test_a_waiter_is_woken_by_its_watch_long_before_the_next_heartbeat(coordinators, url):
    slow = url + "&session_ttl=60"  # heartbeats every 20 s: only the watch can wake b in time
    a, b = coordinators("a", slow), coordinators("b", slow)
    a.join("g", create=True)
    b.join("g")
    held = a.ask(Acquire("jobs"), block=True, timeout=10)
    a.campaign("g")
    b.campaign("g")
    waiting = b.submit(Acquire("jobs", timeout=30))
    leader_events = EventRecorder()
    b.watch("g", leader_events)
    a.ask(Release(held), block=True, timeout=10)
    a.stand_down("g")
    assert waiting.result(timeout=5).member_id == "b"
    leader_events.wait_for_event(LeaderElected("g", "b"), timeout=5)


def test_a_heartbeat_checks_claims_in_multis_and_finds_exactly_the_lost_ones(coordinators, url, raw, namespace, monkeypatch):
    monkeypatch.setattr(zk, "CHECKS_PER_MULTI", 4)  # six claims: two multis, and more after each failure
    a = coordinators("a", url + "&session_ttl=3")  # a heartbeat each second
    session = a._route.session._actor_weakref()
    leases = {f"l{i}": a.ask(Acquire(f"l{i}"), block=True, timeout=10) for i in range(6)}
    refreshed: list[set[tuple[str, int]]] = []
    real_refresh = session.do_refresh

    def recording(held: list[Any]) -> set[tuple[str, int]]:
        lost = real_refresh(held)
        refreshed.append(lost)
        return lost

    session.do_refresh = recording
    wait_until(lambda: refreshed, timeout=10)
    refreshed.clear()
    claim = {name: f"/{namespace}/locks/{zk.encode_name(name)}/{raw.get_children(f'/{namespace}/locks/{zk.encode_name(name)}')[0]}"
             for name in leases}
    raw.delete(claim["l1"])
    raw.delete(claim["l4"])
    raw.set(claim["l2"], b"written from outside")  # changed, but still there: still held
    wait_until(lambda: any(refreshed), timeout=10)
    assert next(lost for lost in refreshed if lost) == {("l1", leases["l1"].fence), ("l4", leases["l4"].fence)}
    wait_until(lambda: not leases["l1"].held and not leases["l4"].held, timeout=10)
    assert all(leases[name].held for name in ("l0", "l2", "l3", "l5"))


def test_a_try_lock_sets_no_watch_but_an_acquire_that_waits_does(coordinators, url):
    slow = url + "&session_ttl=60"  # heartbeats every 20 s: only the watch can wake b in time
    a, b = coordinators("a", slow), coordinators("b", slow)
    session = b._route.session._actor_weakref()
    held = a.ask(Acquire("jobs"), block=True, timeout=10)
    with pytest.raises(errors.LockTimeout):
        b.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    assert "jobs" not in session.conn.lock_watchers  # a round trip saved: nobody here waits
    waiting = b.submit(Acquire("jobs", timeout=30))
    wait_until(lambda: "jobs" in session.conn.lock_watchers)
    a.ask(Release(held), block=True, timeout=10)
    assert waiting.result(timeout=5).member_id == "b"


def test_a_membership_without_a_log_entry_is_still_reported(coordinators, url, namespace, zookeeper_server):
    watcher = coordinators("watcher", url)
    recorder = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", recorder)
    # A foreign writer (or an older coordactors) adds and drops a member znode
    # without logging it: the watcher reports it from the member list.
    foreign = KazooClient(f"{zookeeper_server.host}:{zookeeper_server.port}", timeout=5)
    foreign.start(timeout=10)
    try:
        foreign.create(f"/{namespace}/groups/g/{zk.MEMBER}{zk.encode_name('ghost/1')}", b"{}", ephemeral=True)
        recorder.wait_for_event(MemberJoined("g", "ghost/1"))
        assert watcher.members("g") == {"ghost/1"}
    finally:
        foreign.stop()
        foreign.close()
    recorder.wait_for_event(MemberLeft("g", "ghost/1"))
    assert recorder.events == [MemberJoined("g", "ghost/1"), MemberLeft("g", "ghost/1")]


def test_the_event_log_is_kept_short(coordinators, url, raw, namespace, recorder):
    coord = coordinators("m", url)
    coord.create_group("g")
    coord.watch("g", recorder)
    cycles = zk.EVENTS_KEPT  # 2 entries a cycle
    for _ in range(cycles):
        coord.join("g")
        coord.leave("g")
    entries = [c for c in raw.get_children(f"/{namespace}/groups/g") if c.startswith(zk.EVENT)]
    assert len(entries) <= zk.EVENTS_KEPT + zk.TRIM_EVERY
    recorder.wait_for(lambda events: len(events) >= 2 * cycles)
    assert recorder.events == [MemberJoined("g", "m"), MemberLeft("g", "m")] * cycles
    coord.delete_group("g")  # the log goes with the group
    assert "g" not in coord.groups()


# -- URLs, options, lifecycle ---------------------------------------------------------------------


def test_characteristics_are_those_of_a_linearizable_session_based_store(coordinators, url):
    assert coordinators("a", url).characteristics == {
        C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS,
        C.LINEARIZABLE, C.SEQUENTIAL, C.CAUSAL, C.SAME_VIEW_UNDER_PARTITIONS,
    }


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("lease_ttl=5", errors.NotSupported),
        ("session_ttl=none", errors.InvalidArgument),
        ("namespace=a/../b", errors.InvalidArgument),
        ("namespace=zookeeper", errors.InvalidArgument),
        ("colour=blue", errors.InvalidArgument),
    ],
)
def test_options_that_make_no_sense_here_are_refused(query, error):
    with pytest.raises(error):
        parse_url(f"zookeeper://127.0.0.1:2181?{query}")


def test_a_chroot_in_the_url_holds_the_namespace(coordinators, zookeeper_server, raw, namespace):
    chroot = f"/apps/{namespace}"
    coord = coordinators("a", f"kazoo://{zookeeper_server.host}:{zookeeper_server.port}{chroot}?namespace=ns")
    coord.join("g", create=True)
    assert raw.get_children(f"{chroot}/ns/groups") == ["g"]


def test_several_hosts_are_handed_to_kazoo():
    options = parse_url("zookeeper://u:secret@zk1:2181/app?namespace=x")[1]
    several = attrs.evolve(options, redacted="zookeeper://u:***@zk1,zk2:2182,[::1]:2183/app?namespace=x")
    assert zk.kazoo_hosts(several) == "zk1:2181,zk2:2182,[::1]:2183"


def test_a_url_with_several_hosts_fails_over_to_one_that_answers(coordinators, zookeeper_server, namespace):
    from coordactors.testing.servers import free_ports

    (dead,) = free_ports(1)
    url = f"zookeeper://127.0.0.1:{dead},{zookeeper_server.host}:{zookeeper_server.port}?namespace={namespace}"
    coord = coordinators("a", url)
    coord.join("g", create=True)
    assert coord.members("g") == {"a"}


def test_unexpected_kazoo_errors_are_translated_by_one_table():
    import kazoo.exceptions as kx
    from kazoo.handlers.threading import KazooTimeoutError

    fake = types.SimpleNamespace(url="zookeeper://127.0.0.1:2181", _root="/coordactors")
    translate = zk.ZooKeeperSession.translate_error
    for exc in (kx.ConnectionLoss(), kx.SessionExpiredError(), KazooTimeoutError(), kx.NoNodeError(), kx.NoAuthError(), OSError("refused")):
        assert isinstance(translate(fake, exc), errors.BackendUnavailable), exc
    assert isinstance(translate(fake, kx.NotEmptyError()), errors.InvalidArgument)
    assert "expired" in str(translate(fake, kx.SessionExpiredError()))


def test_connect_stop_cycles_leave_no_thread_behind(url):
    before = set(threading.enumerate())
    for i in range(200):
        with coordactors.connect(url, f"m{i}") as coord:
            coord.join("g", create=True)
            coord.ask(Release(coord.ask(Acquire("l", timeout=5), block=True, timeout=10)), block=True, timeout=10)
    wait_until(
        lambda: set(threading.enumerate()) <= before,
        timeout=10,
        message=lambda: f"left behind: {sorted(t.name for t in set(threading.enumerate()) - before)}",
    )


def test_the_password_never_shows(zookeeper_server, namespace):
    url = f"zookeeper://user:s3cret@{zookeeper_server.host}:{zookeeper_server.port}?namespace={namespace}"
    with coordactors.connect(url, "a") as coord:
        assert "s3cret" not in repr(coord) and "s3cret" not in coord.url
        with pytest.raises(errors.GroupNotFound) as caught:
            coord.members("nope")
        assert "s3cret" not in str(caught.value)


def test_a_release_whose_delete_was_lost_frees_the_lock_once_the_session_resumes(coordinators, own_server):
    from coordactors.testing.faults import Proxy

    # session_ttl=6: kazoo calls the connection lost after 4 s of silence, and the
    # session (heartbeats every 0.2 s) outlives that: it resumes, the same session.
    base = f"{own_server.url}?namespace=t{uuid.uuid4().hex[:12]}&session_ttl=6&heartbeat_interval=0.2&backoff_initial=0.05&backoff_max=0.2"
    proxy = Proxy(own_server.host, own_server.port).start()
    try:
        holder, other = coordinators("holder", proxy.url_for(base)), coordinators("other", base)
        own = EventRecorder()
        holder.subscribe(own)
        lease = holder.ask(Acquire("jobs"), block=True, timeout=10)

        proxy.drop()  # the release's delete never reaches the server
        with pytest.raises(errors.BackendUnavailable):
            holder.ask(Release(lease), block=True, timeout=20)
        wait_until(lambda: holder.statistics()["state"] == "SUSPENDED", timeout=10)
        proxy.heal()
        wait_until(lambda: holder.statistics()["state"] == "CONNECTED", timeout=15)
        assert not own.of_type(SessionLost)  # the same session came back

        # The claim the lost delete left behind is gone: the lock is free.
        again = other.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
        assert again.fence > lease.fence
    finally:
        proxy.stop()


def test_the_kazoo_handler_selects_as_select_does():
    import socket

    from coordactors.backend_actors._kazoo_handler import poll_select

    a, b = socket.socketpair()
    try:
        assert poll_select([a, b], [], [], 0) == ([], [], [])
        assert poll_select([a], [a], [], 0) == ([], [a], [])  # nothing to read, room to write
        b.send(b"x")
        assert poll_select([a, b.fileno()], [], [], 1) == ([a], [], [])
        assert a.recv(1) == b"x"
        b.close()
        assert poll_select([a], [], [], 1) == ([a], [], [])  # the peer hung up: a read would say so
        with pytest.raises(ValueError, match="non-negative"):
            poll_select([a], [], [], -1)
    finally:
        a.close()
        b.close()


def test_queued_lock_requests_share_a_multi_and_one_failure_costs_the_others_nothing(coordinators, url, raw, namespace):
    # Queued releases (and acquires) go to ZooKeeper in one multi; ZooKeeper
    # applies all of a multi or none, so when one claim was deleted from
    # outside, the others are released on their own and only the lost one says so.
    a, b = coordinators("a", url), coordinators("b", url)
    session = _session(a)
    leases = {name: a.ask(Acquire(name), block=True, timeout=10) for name in ("l0", "l1", "l2")}
    directory = f"/{namespace}/locks/{zk.encode_name('l1')}"
    raw.delete(f"{directory}/{raw.get_children(directory)[0]}")
    client = session.conn.client
    multis = []
    transaction = client.transaction
    client.transaction = lambda: multis.append(1) or transaction()
    busy = BusySession(session)
    releases = {name: a.submit(Release(lease)) for name, lease in leases.items()}
    busy.release()
    assert releases["l0"].result(timeout=10) is None and releases["l2"].result(timeout=10) is None
    with pytest.raises(errors.LockNotHeld):
        releases["l1"].result(timeout=10)
    assert multis, "the queued releases went in a multi"
    for name in leases:  # nothing of a's is left behind in any lock
        b.ask(Release(b.ask(Acquire(name, timeout=0), block=True, timeout=10)), block=True, timeout=10)
        assert raw.get_children(f"/{namespace}/locks/{zk.encode_name(name)}") == []
    # Acquires queued together, one of a lock never used (its directory does
    # not exist yet, so the multi fails): each is granted exactly one claim.
    busy = BusySession(session)
    acquires = {name: a.submit(Acquire(name)) for name in ("l0", "new", "l2")}
    busy.release()
    for name, future in acquires.items():
        lease = future.result(timeout=10)
        (claim,) = raw.get_children(f"/{namespace}/locks/{zk.encode_name(name)}")
        assert int(claim[-10:]) == lease.fence
