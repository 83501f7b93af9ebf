"""etcd3+http://-specific behaviour, against a real etcd (v3 JSON gateway) started by the harness."""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid

import pytest
import requests

import coordactors
from coordactors import errors
from coordactors.events import LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder, servers
from helpers import wait_until


@pytest.fixture
def namespace():
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(etcd_server, namespace):
    return f"{etcd_server.url_v3}?namespace={namespace}"


class Raw:
    """A few raw v3 gateway calls, to look behind the backend's back."""

    def __init__(self, server, headers=None):
        self.base = f"http://{server.host}:{server.port}/v3"
        self.headers = headers or {}

    def post(self, path, body):
        reply = requests.post(self.base + path, json=body, headers=self.headers, timeout=5)
        reply.raise_for_status()
        return reply.json()

    def get(self, key):
        kvs = self.post("/kv/range", {"key": _b64(key)}).get("kvs", [])
        return kvs[0] if kvs else None

    def value(self, key):
        kv = self.get(key)
        return None if kv is None else base64.b64decode(kv.get("value", "")).decode()

    def put(self, key, value):
        self.post("/kv/put", {"key": _b64(key), "value": _b64(value)})

    def delete(self, key):
        self.post("/kv/deleterange", {"key": _b64(key)})


def _b64(text):
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def raw(etcd_server):
    return Raw(etcd_server)


# -- URLs and options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "part"),
    [
        ("etcd3+http://127.0.0.1:2379/some/path", "path"),
        ("etcd3+http://127.0.0.1:2379?lease_ttl=5", "lease_ttl"),
        ("etcd3+http://127.0.0.1:2379?session_ttl=none", "session_ttl"),
        ("etcd3+http://127.0.0.1:2379?request_timeout=soon", "request_timeout"),
        ("etcd3+http://127.0.0.1:2379?api_path=?x", "api_path"),
        ("etcd3+http://127.0.0.1:2379?nonsense=1", "nonsense"),
        ("etcd3+http://127.0.0.1:2379?namespace=", "namespace"),
        ("etcd3+http://root@127.0.0.1:2379", "password"),
        ("etcd3+http://127.0.0.1:99999", "port"),
    ],
)
def test_malformed_urls_and_options_name_the_part(bad, part):
    with pytest.raises(errors.InvalidArgument, match=part):
        coordactors.connect(bad, "a")


def test_an_unreachable_server_is_a_clear_backend_unavailable():
    with pytest.raises(errors.BackendUnavailable, match="127.0.0.1:1"):
        coordactors.connect("etcd3+http://127.0.0.1:1?connect_timeout=1", "a")


def test_a_per_lease_ttl_is_refused_not_ignored(coordinators, url):
    coord = coordinators("a", url)
    with pytest.raises(errors.NotSupported, match="session_ttl"):
        coord.ask(Acquire("jobs", ttl=5), block=True, timeout=10)


# -- credentials -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server():
    try:
        server = servers.EtcdServer().start()
    except servers.ServerUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        raw = Raw(server)
        raw.post("/auth/user/add", {"name": "root", "password": "Sup3rSecretPw"})
        raw.post("/auth/user/grant", {"user": "root", "role": "root"})
        raw.post("/auth/enable", {})
        yield server
    finally:
        server.stop()


def test_a_wrong_password_is_refused_clearly_and_never_shown(auth_server):
    url = f"etcd3+http://root:Wr0ngPassw0rd@{auth_server.host}:{auth_server.port}?namespace=x"
    with pytest.raises(errors.BackendUnavailable) as caught:
        coordactors.connect(url, "a")
    assert "Wr0ngPassw0rd" not in str(caught.value)
    assert "Wr0ngPassw0rd" not in repr(caught.value)
    assert "credentials" in str(caught.value)


def test_the_right_password_works_for_everything_including_the_watch(auth_server, coordinators):
    url = f"etcd3+http://root:Sup3rSecretPw@{auth_server.host}:{auth_server.port}?namespace=auth{uuid.uuid4().hex[:6]}"
    first, second = coordinators("first", url), coordinators("second", url)
    assert "Sup3rSecretPw" not in repr(first)
    seen = EventRecorder()
    first.watch("g", seen)
    first.join("g", create=True)
    second.join("g")
    seen.wait_for(lambda events: MemberJoined("g", "second") in events, timeout=10)
    lease = first.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = second.submit(Acquire("jobs", timeout=10))
    first.ask(Release(lease), block=True, timeout=10)
    assert waiting.result(timeout=10).fence > lease.fence


# -- keys left by someone else -------------------------------------------------------------


def test_a_foreign_lock_key_is_reported_and_left_untouched(coordinators, url, raw, namespace):
    raw.put(f"{namespace}/locks/jobs", "somebody else's lock")
    coord = coordinators("a", url)
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    assert raw.value(f"{namespace}/locks/jobs") == "somebody else's lock"


def test_a_foreign_group_key_is_reported_and_left_untouched(coordinators, url, raw, namespace):
    raw.put(f"{namespace}/groups/g", "somebody else's group")
    coord = coordinators("a", url)
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.join("g", create=True)
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.members("g")
    assert raw.value(f"{namespace}/groups/g") == "somebody else's group"
    assert raw.get(f"{namespace}/members/g/a") is None


def test_a_foreign_member_key_is_reported_and_left_untouched(coordinators, url, raw, namespace):
    coord = coordinators("a", url)
    coord.create_group("g")
    raw.put(f"{namespace}/members/g/a", "not json")
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.join("g")
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.capabilities("g", "a")
    assert raw.value(f"{namespace}/members/g/a") == "not json"


# -- the mechanism ---------------------------------------------------------------------------


def test_the_fence_is_the_epoch_plus_the_keys_create_revision_and_the_key_lives_by_the_session_lease(coordinators, url, raw, namespace):
    coord = coordinators("a", url)
    coord.join("g", create=True)
    first = coord.ask(Acquire("jobs"), block=True, timeout=10)
    kv = raw.get(f"{namespace}/locks/jobs")
    assert int(raw.value(f"{namespace}/epoch")) + int(kv["create_revision"]) == first.fence
    member = raw.get(f"{namespace}/members/g/a")
    assert kv["lease"] == member["lease"] != "0"
    coord.ask(Release(first), block=True, timeout=10)
    raw.put(f"{namespace}/unrelated", "x")  # revisions move on between holders
    second = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert second.fence > first.fence


def test_names_that_look_like_paths_do_not_collide(coordinators, url):
    coord = coordinators("a", url)
    names = ["a/b", "a", "a%2Fb", "..", ".", "x y \"q\" 'q'", "ünï/cödé"]
    for name in names:
        coord.join(name, create=True)
    assert coord.groups() >= set(names)
    for name in names:
        assert coord.members(name) == {"a"}
    leases = [coord.ask(Acquire(name), block=True, timeout=10) for name in names]
    assert len({lease.fence for lease in leases}) == len(names)


def test_a_stop_revokes_the_lease_so_others_do_not_wait_for_the_ttl(coordinators, url, raw, namespace):
    holder = coordinators("holder", url + "&session_ttl=60")
    other = coordinators("other", url)
    holder.join("g", create=True)
    holder.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = other.submit(Acquire("jobs", timeout=10))
    seen = EventRecorder()
    other.watch("g", seen)
    began = time.monotonic()
    holder.stop()
    waiting.result(timeout=10)
    assert time.monotonic() - began < 5  # far less than the 60 s TTL
    assert raw.get(f"{namespace}/members/g/holder") is None


def test_a_freed_lock_wakes_its_waiter_through_the_watch_not_the_heartbeat(coordinators, url, raw, namespace):
    # Heartbeats every 20 s: a grant within 2 s can only come from the watch stream.
    first = coordinators("first", url + "&session_ttl=60&heartbeat_interval=20")
    second = coordinators("second", url + "&session_ttl=60&heartbeat_interval=20")
    first.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = second.submit(Acquire("jobs", timeout=10))
    wait_until(lambda: second.statistics()["waiting"] == 1)
    raw.delete(f"{namespace}/locks/jobs")
    assert waiting.result(timeout=2).name == "jobs"


def test_the_watch_reader_hands_the_session_only_what_it_acts_on(coordinators, url, monkeypatch):
    from coordactors.backend_actors.etcd3 import Etcd3Session

    handed: list[tuple[str, list[tuple[str, str, bytes, int]]]] = []
    real = Etcd3Session._on_events

    def counting(self, conn, events):
        handed.append((self.member_id, events))
        return real(self, conn, events)

    monkeypatch.setattr(Etcd3Session, "_on_events", counting)
    holder, watcher = coordinators("holder", url), coordinators("watcher", url)
    # Nobody waits or watches: the session's own acquires and releases (and
    # the other's) reach no actor.
    for _ in range(3):
        holder.ask(Release(holder.ask(Acquire("jobs"), block=True, timeout=10)), block=True, timeout=10)
    holder.create_group("g")
    holder.join("g")
    holder.leave("g")
    assert handed == []
    # A watcher gets its group's events; a waiter the release it waits for.
    seen = EventRecorder()
    watcher.watch("g", seen)
    holder.join("g")
    seen.wait_for(lambda events: MemberJoined("g", "holder") in events, timeout=10)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = watcher.submit(Acquire("jobs", timeout=10))
    wait_until(lambda: watcher.statistics()["waiting"] == 1)
    holder.ask(Release(lease), block=True, timeout=10)
    assert waiting.result(timeout=10).name == "jobs"
    assert {member for member, _events in handed} == {"watcher"}


def test_a_lock_key_deleted_behind_the_holders_back_is_lost_at_the_next_refresh(coordinators, url, raw, namespace):
    coord = coordinators("a", url + "&heartbeat_interval=0.05")
    own = EventRecorder()
    coord.subscribe(own)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    raw.delete(f"{namespace}/locks/jobs")
    own.wait_for(lambda events: any(isinstance(e, LockLost) and e.name == "jobs" for e in events), timeout=10)
    with pytest.raises(errors.LockLost):
        lease.check()


def test_a_revoked_lease_fails_the_session_which_comes_back_with_everything(coordinators, url, raw, namespace):
    worker = coordinators("worker", url + "&heartbeat_interval=0.05&backoff_initial=0.05")
    own, seen = EventRecorder(), EventRecorder()
    worker.subscribe(own)
    worker.join("g", {"slots": 2}, create=True)
    watcher = coordinators("watcher", url)
    watcher.watch("g", seen)
    lease_id = raw.get(f"{namespace}/members/g/worker")["lease"]
    raw.post("/kv/lease/revoke", {"ID": lease_id})
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=10)
    assert any(isinstance(e, SessionLost) for e in own.events)
    seen.wait_for(lambda events: MemberJoined("g", "worker") in events, timeout=10)
    assert MemberLeft("g", "worker") in seen.events  # the revocation, then the rejoin, in order
    assert watcher.capabilities("g", "worker") == {"slots": 2}
    assert raw.get(f"{namespace}/members/g/worker")["lease"] != lease_id


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_connect_stop_cycles_leave_no_thread_or_fd_behind(url):
    before, fds_before = set(threading.enumerate()), _fd_count()
    for i in range(200):
        with coordactors.connect(url, f"m{i}") as coord:
            coord.join("g", create=True)
            coord.watch("g", EventRecorder())
            coord.ask(Release(coord.ask(Acquire("l", timeout=5), block=True, timeout=10)), block=True, timeout=10)
    wait_until(
        lambda: set(threading.enumerate()) <= before,
        timeout=10,
        message=lambda: f"left behind: {sorted(t.name for t in set(threading.enumerate()) - before)}",
    )
    wait_until(lambda: _fd_count() <= fds_before, timeout=10, message=lambda: f"{_fd_count()} fds open, {fds_before} before")


def test_a_restored_session_revokes_its_old_lease_and_keeps_its_membership(coordinators, url, raw, namespace):
    worker = coordinators("worker", url + "&heartbeat_interval=0.05&backoff_initial=0.05")
    own = EventRecorder()
    worker.subscribe(own)
    worker.join("g", {"slots": 1}, create=True)
    old_lease = raw.get(f"{namespace}/members/g/worker")["lease"]
    worker.inject_failure("drill")
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=10)
    wait_until(lambda: int(raw.post("/kv/lease/timetolive", {"ID": old_lease}).get("TTL", -1)) <= 0, timeout=10)
    assert raw.get(f"{namespace}/members/g/worker")["lease"] != old_lease
    assert worker.members("g") == {"worker"}


def test_fences_keep_rising_after_etcd_loses_all_its_data(coordinators):
    try:
        server = servers.EtcdServer().start()
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        url = f"{server.url_v3}?namespace=wipe&session_ttl=2&backoff_initial=0.05&backoff_max=0.2"
        coord = coordinators("a", url)
        own = EventRecorder()
        coord.subscribe(own)
        first = coord.ask(Acquire("jobs"), block=True, timeout=10)
        coord.ask(Release(first), block=True, timeout=10)
        server.stop()  # removes the data directory: revisions restart from 1
        server.restart()
        own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=20)
        second = coord.ask(Acquire("jobs"), block=True, timeout=10)
        assert second.fence > first.fence
    finally:
        server.stop()


def test_a_recreated_epoch_is_noticed_within_the_acquiring_transaction(coordinators, url, raw, namespace):
    coord = coordinators("a", url)
    first = coord.ask(Acquire("jobs"), block=True, timeout=10)
    coord.ask(Release(first), block=True, timeout=10)
    old_epoch = raw.get(f"{namespace}/epoch")
    raw.delete(f"{namespace}/epoch")  # as an etcd that lost its data would have lost it
    second = coord.ask(Acquire("jobs"), block=True, timeout=10)
    new_epoch = raw.get(f"{namespace}/epoch")
    assert new_epoch["create_revision"] != old_epoch["create_revision"]
    assert second.fence == int(raw.value(f"{namespace}/epoch")) + int(raw.get(f"{namespace}/locks/jobs")["create_revision"])
    assert second.fence > first.fence


def test_a_foreign_epoch_key_is_reported_and_left_untouched(coordinators, url, raw, namespace):
    raw.put(f"{namespace}/epoch", "not a number")
    with pytest.raises(errors.InvalidArgument, match="format"):
        coordactors.connect(url, "a")
    assert raw.value(f"{namespace}/epoch") == "not a number"


# -- the kept-alive transport etcd3gw is given ------------------------------------------------------


def test_the_transport_keeps_one_connection_and_remakes_it_after_the_server_closed_it(etcd_server):
    from coordactors.backend_actors._keepalive import CONNECT_FAILED, KeepAliveSession
    from coordactors.testing.faults import Proxy

    with Proxy(etcd_server.host, etcd_server.port) as proxy:
        session = KeepAliveSession()
        url = f"http://127.0.0.1:{proxy.port}/v3/kv/range"
        try:
            for _ in range(3):
                reply = session.post(url, json={"key": _b64("nothing")}, timeout=(2, 2))
                assert reply.status_code == 200 and "header" in reply.json()
            assert proxy.connections == 1
            proxy.reset_connections()  # the idle connection is closed under it
            wait_until(lambda: proxy.connections == 0, timeout=5)
            assert session.post(url, json={"key": _b64("nothing")}, timeout=(2, 2)).status_code == 200
            proxy.stall()
            with pytest.raises(requests.exceptions.ReadTimeout):
                session.post(url, json={"key": _b64("nothing")}, timeout=(2, 0.3))
            proxy.heal()
            assert session.post(url, json={"key": _b64("nothing")}, timeout=(2, 2)).status_code == 200
        finally:
            session.close()
    # The proxy is gone: nothing listens there any more.
    with pytest.raises(requests.exceptions.ConnectionError, match=CONNECT_FAILED):
        session.post(url, json={"key": _b64("nothing")}, timeout=(2, 2))
