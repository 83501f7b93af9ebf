"""Consul-specific behaviour, against the in-process fake agent (coordactors.testing.fake_consul).

No Consul server can be installed here: these tests, and the behaviour suite's
``consul`` row, run against FakeConsulAgent.  See its docstring for its limits.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import consul
import pytest
from helpers import check_a_watch_wakes_a_resting_reader, wait_until

import coordactors
from coordactors import errors
from coordactors.events import LeaderElected, LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder
from coordactors.testing.fake_consul import FakeConsulAgent


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def url(consul_agent, namespace):
    return f"{consul_agent.url}?namespace={namespace}"


@pytest.fixture
def raw(consul_agent):
    client = consul.Consul(host="127.0.0.1", port=consul_agent.port)
    yield client
    client.http.session.close()


def _keys(raw, namespace):
    return raw.kv.get(namespace + "/", keys=True)[1] or []


# -- URLs and options -------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "part"),
    [
        ("consul://127.0.0.1:8500/some/path", "path"),
        ("consul://127.0.0.1:8500?namespace=../up", "namespace"),
        ("consul://127.0.0.1:8500?namespace=a//b", "namespace"),
        ("consul://127.0.0.1:8500?namespace=with space", "namespace"),
        ("consul://127.0.0.1:8500?session_ttl=none", "session_ttl"),
        ("consul://127.0.0.1:8500?lease_ttl=5", "lease_ttl"),
        ("consul://:tok@127.0.0.1:8500?token=tok2", "token"),
        ("consul://127.0.0.1:8500?bogus=1", "bogus"),
        ("consul://127.0.0.1:99999", "port"),
    ],
)
def test_malformed_urls_and_options_are_invalid_arguments_naming_the_part(bad, part):
    with pytest.raises(errors.InvalidArgument, match=part):
        coordactors.connect(bad, "a")


def test_a_session_ttl_consul_refuses_is_a_clear_invalid_argument(consul_agent, namespace):
    with pytest.raises(errors.InvalidArgument, match="TTL"):
        coordactors.connect(f"{consul_agent.url}?namespace={namespace}&session_ttl=5", "a")


def test_a_wrong_token_is_refused_without_showing_it():
    with FakeConsulAgent(token="RightToken1") as agent:
        bad = f"consul://:Sup3rSecretTok@127.0.0.1:{agent.port}?connect_timeout=2"
        with pytest.raises(errors.BackendUnavailable) as caught:
            coordactors.connect(bad, "a")
        assert "Sup3rSecretTok" not in str(caught.value)
        assert "Sup3rSecretTok" not in repr(caught.value)
        assert "token" in str(caught.value)
        with pytest.raises(errors.BackendUnavailable) as caught:
            coordactors.connect(f"consul://127.0.0.1:{agent.port}?token=Sup3rSecretTok", "a")
        assert "Sup3rSecretTok" not in str(caught.value) and "Sup3rSecretTok" not in repr(caught.value)
        # the right token, either way, works
        coordactors.connect(bad.replace("Sup3rSecretTok", "RightToken1"), "a").stop()
        coord = coordactors.connect(f"consul://127.0.0.1:{agent.port}?token=RightToken1", "b")
        coord.join("g", create=True)
        assert coord.members("g") == {"b"}
        coord.stop()


def test_py_consul_over_the_kept_alive_session_reads_writes_and_fails_as_over_requests():
    import requests

    from coordactors.backend_actors._keepalive import KeepAliveSession

    with FakeConsulAgent(token="RightToken1") as agent:
        client = consul.Consul(host="127.0.0.1", port=agent.port, token="RightToken1")
        client.http.session = KeepAliveSession()
        assert client.kv.put("k/a", "1") is True
        assert client.kv.put("k/a", "2", cas=1) is False  # a refused compare is an answer, not an error
        index, entry = client.kv.get("k/a")
        assert entry["Value"] == b"1" and int(index) == entry["ModifyIndex"]  # X-Consul-Index, read case-insensitively
        writer = consul.Consul(host="127.0.0.1", port=agent.port, token="RightToken1")
        later = threading.Timer(0.1, lambda: writer.kv.put("k/b", ""))
        later.start()
        moved, keys = client.kv.get("k/", keys=True, index=index, wait="5s")  # a blocking query
        later.join(5)
        writer.http.session.close()
        assert int(moved) > int(index) and keys == ["k/a", "k/b"]
        assert client.kv.delete("k/", recurse=True) is True
        assert client.kv.get("k/", keys=True)[1] is None
        client.http.session.close()
        wrong = consul.Consul(host="127.0.0.1", port=agent.port, token="Sup3rSecretTok")
        wrong.http.session = KeepAliveSession()
        with pytest.raises(consul.exceptions.ACLPermissionDenied):
            wrong.kv.get("k/a")
        wrong.http.session.close()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.kv.get("k/a")  # the agent is gone


def test_an_unreachable_agent_is_a_clear_backend_unavailable():
    with pytest.raises(errors.BackendUnavailable, match="127.0.0.1:1"):
        coordactors.connect("consul://127.0.0.1:1?connect_timeout=1", "a")


# -- foreign data -----------------------------------------------------------------------


def test_a_foreign_epoch_key_is_refused_and_left_untouched(url, namespace, raw):
    raw.kv.put(f"{namespace}/epoch", "somebody else's string")
    with pytest.raises(errors.InvalidArgument, match="format"):
        coordactors.connect(url, "a")
    assert raw.kv.get(f"{namespace}/epoch")[1]["Value"] == b"somebody else's string"


def test_a_foreign_lock_key_is_refused_and_left_untouched(coordinators, url, namespace, raw):
    import base64

    key = f"{namespace}/l/" + base64.urlsafe_b64encode(b"jobs").rstrip(b"=").decode()
    raw.kv.put(key, "not ours")
    coord = coordinators("a", url)
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    entry = raw.kv.get(key)[1]
    assert entry["Value"] == b"not ours" and "Session" not in entry


# -- mechanism -------------------------------------------------------------------------------


def test_names_of_any_shape_round_trip_as_single_key_segments(coordinators, url, namespace, raw):
    names = ["a/b", "..", ".", "with space", "quo'te\"", "ünï/../cödé"]
    coord = coordinators("m/../x", url)
    for name in names:
        coord.join(name, {"n": name}, create=True)
        lease = coord.ask(Acquire(name), block=True, timeout=10)
        assert coord.ask(Release(lease), block=True, timeout=10) is None
    assert coord.groups() >= set(names)
    for name in names:
        assert coord.members(name) == {"m/../x"}
        assert coord.capabilities(name, "m/../x") == {"n": name}
    assert all(k.startswith(namespace + "/") for k in _keys(raw, namespace))


def test_fences_rise_across_holders_and_after_the_agent_loses_the_namespace(coordinators, url, namespace, raw):
    a, b = coordinators("a", url), coordinators("b", url)
    first = a.ask(Acquire("jobs"), block=True, timeout=10)
    a.ask(Release(first), block=True, timeout=10)
    second = b.ask(Acquire("jobs"), block=True, timeout=10)
    assert second.fence > first.fence
    b.ask(Release(second), block=True, timeout=10)
    raw.kv.delete(namespace + "/", recurse=True)  # as if the data were lost
    b.inject_failure("drill")  # a new connection re-seeds the epoch
    wait_until(lambda: b.statistics()["state"] == "CONNECTED" and b.statistics()["connections"] >= 2)
    third = b.ask(Acquire("jobs"), block=True, timeout=10)
    assert third.fence > second.fence


def test_a_lock_key_deleted_by_someone_else_is_reported_lost(coordinators, url, namespace, raw):
    import base64

    coord = coordinators("a", url + "&heartbeat_interval=0.05")
    own = EventRecorder()
    coord.subscribe(own)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    raw.kv.delete(f"{namespace}/l/" + base64.urlsafe_b64encode(b"jobs").rstrip(b"=").decode())
    own.wait_for(lambda events: any(isinstance(e, LockLost) and e.name == "jobs" for e in events))
    with pytest.raises(errors.LockLost):
        lease.check()


def test_an_invalidated_session_loses_its_members_then_restores_them(coordinators, url, raw):
    worker = coordinators("worker", url + "&heartbeat_interval=0.05&backoff_initial=0.05")
    watcher = coordinators("watcher", url)
    seen, own = EventRecorder(), EventRecorder()
    worker.join("g", {"v": 1}, create=True)
    worker.campaign("g")
    wait_until(lambda: watcher.leader("g") == "worker")
    watcher.watch("g", seen)
    worker.subscribe(own)
    session_id = worker._route.session.proxy().conn.get().session_id
    raw.session.destroy(session_id)  # as Consul does when the TTL runs out
    # Behavior=delete: everyone sees it leave (no log entry: seen by state);
    # the worker's renew gets 404, and the supervisor brings everything back.
    seen.wait_for_event(MemberLeft("g", "worker"))
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events))
    kinds = [type(e) for e in own.events]
    assert SessionLost in kinds and kinds.index(SessionLost) < kinds.index(SessionRestored)
    seen.wait_for_event(MemberJoined("g", "worker"))
    wait_until(lambda: watcher.members("g") == {"worker"} and watcher.leader("g") == "worker")
    assert watcher.capabilities("g", "worker") == {"v": 1}


def test_a_session_expires_after_its_ttl_without_renewal():
    with FakeConsulAgent(min_ttl=0.5) as agent:
        url = f"{agent.url}?namespace=t&session_ttl=0.6"
        watcher = coordactors.connect(url, "watcher")
        worker = coordactors.connect(url, "worker")
        try:
            seen = EventRecorder()
            worker.join("g", create=True)
            watcher.watch("g", seen)
            watcher.campaign("g")
            seen.wait_for_event(LeaderElected("g", "watcher"))
            # The worker's heartbeats stop renewing its Consul session.
            worker._route.session.proxy().conn.get().client.session.renew = lambda session_id: None
            seen.wait_for_event(MemberLeft("g", "worker"), timeout=10)
        finally:
            worker.stop()
            watcher.stop()


def test_a_stopped_coordinator_leaves_no_reader_thread(url):
    coord = coordactors.connect(url, "a")
    coord.join("g", create=True)
    coord.stop()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "ConsulEvents[a]"], timeout=5)


def _lock_key(namespace, name):
    import base64

    return f"{namespace}/l/" + base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def _conn(coord):
    return coord._route.session.proxy().conn.get()


class _Gate:
    """Parks a coordinator's reader before its next blocking query until
    ``open()``, so that the writes made meanwhile reach it in one answer;
    records how many new log entries each answer's view carried.  A reader
    that rests (its session neither watches nor waits) parks when woken:
    ``resting=True`` leaves it to the caller to wake it and ``wait_parked``."""

    def __init__(self, coord, raw, namespace, *, resting=False):
        conn = _conn(coord)
        self._go, parked = threading.Event(), threading.Event()
        self._parked = parked
        self.new_entries: list[int] = []
        listing, view = conn.reader.kv.get, conn.follower.view

        def gated_listing(*args, **kwargs):
            parked.set()
            assert self._go.wait(30), "the gate was never opened"
            return listing(*args, **kwargs)

        def counted_view(*args, **kwargs):
            result = view(*args, **kwargs)
            self.new_entries.append(len(result.log))
            return result

        conn.reader.kv.get, conn.follower.view = gated_listing, counted_view
        if not resting:
            # A key of no meaning ends the query under way: the reader parks.
            raw.kv.put(f"{namespace}/poke", "")
            self.wait_parked()

    def wait_parked(self):
        assert self._parked.wait(10), "the reader never came back for its next query"

    def open(self):
        self._go.set()


def test_a_release_deletes_the_lock_key_and_wakes_a_waiter_at_once(coordinators, url, namespace, raw):
    # Heartbeats (which retry every waiter) too rare to be what grants it.
    slow = "&session_ttl=60&heartbeat_interval=20"
    a, b = coordinators("a", url + slow), coordinators("b", url + slow)
    a.ask(Release(a.ask(Acquire("jobs"), block=True, timeout=10)), block=True, timeout=10)
    assert raw.kv.get(_lock_key(namespace, "jobs"))[1] is None
    lease = a.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = b.submit(Acquire("jobs"), timeout=15)
    a.ask(Release(lease), block=True, timeout=10)
    granted = waiting.result(timeout=5)
    assert granted.member_id == "b" and granted.fence > lease.fence


def test_a_lock_taken_and_freed_between_two_answers_still_wakes_the_waiter(coordinators, url, namespace, raw):
    slow = "&session_ttl=60&heartbeat_interval=20"
    a, b = coordinators("a", url + slow), coordinators("b", url + slow)
    lease = a.ask(Acquire("jobs"), block=True, timeout=10)
    # b's reader rests (b neither watches nor waits): it never sees the lock held.
    gate = _Gate(b, raw, namespace, resting=True)
    waiting = b.submit(Acquire("jobs"), timeout=15)
    gate.wait_parked()  # the waiter woke it; it asks from where it stopped
    a.ask(Release(lease), block=True, timeout=10)
    gate.open()
    assert waiting.result(timeout=5).member_id == "b"


def test_events_stay_in_order_when_several_transactions_land_between_two_answers(coordinators, url, namespace, raw):
    watcher, a, b = coordinators("watcher", url), coordinators("a", url), coordinators("b", url)
    seen = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", seen)
    gate = _Gate(watcher, raw, namespace)
    a.join("g")
    b.join("g")
    a.campaign("g")
    b.campaign("g")
    wait_until(lambda: a.leader("g") == "a")
    a.stand_down("g")
    wait_until(lambda: b.leader("g") == "b")
    a.leave("g")
    gate.open()
    events = seen.wait_for(lambda events: len(events) >= 5)
    assert events == [MemberJoined("g", "a"), MemberJoined("g", "b"), LeaderElected("g", "a"), LeaderElected("g", "b"), MemberLeft("g", "a")]
    assert 5 in gate.new_entries  # all in the one answer after the gate


def test_a_lone_change_is_delivered_from_its_log_keys_name_and_an_older_entry_is_read(coordinators, url, namespace, raw, monkeypatch):
    import json

    from coordactors.backend_actors.consul import ConsulSession

    fetched = []
    fetch = ConsulSession._fetch

    def counting(self, conn, keys):
        if self.member_id == "watcher":
            fetched.append(keys)
        return fetch(self, conn, keys)

    monkeypatch.setattr(ConsulSession, "_fetch", counting)
    watcher, a = coordinators("watcher", url), coordinators("a", url)
    seen = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", seen)
    a.join("g")
    seen.wait_for_event(MemberJoined("g", "a"))
    a.leave("g")
    seen.wait_for_event(MemberLeft("g", "a"))
    assert fetched == []  # each answer held one new entry: its name said it all
    # An entry as an older version wrote it: a bare uuid, the event in the value.
    raw.kv.put(f"{namespace}/log/{uuid.uuid4().hex}", json.dumps({"g": "g", "k": "join", "m": "old"}))
    seen.wait_for_event(MemberJoined("g", "old"))
    assert len(fetched) == 1


def test_log_entries_pruned_between_an_answer_and_their_fetch_still_give_the_events(coordinators, url, namespace, raw, monkeypatch):
    from coordactors.backend_actors.consul import ConsulSession

    watcher, a, b = coordinators("watcher", url), coordinators("a", url), coordinators("b", url)
    seen = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", seen)
    a.campaign("g")
    seen.wait_for_event(LeaderElected("g", "a"))
    gate = _Gate(watcher, raw, namespace)
    b.join("g")
    b.campaign("g")
    a.stand_down("g")
    wait_until(lambda: b.leader("g") == "b")
    fetch = ConsulSession._fetch

    def pruned_first(self, conn, keys):
        # As if the new entries were pruned after the watcher's answer listed them.
        if self.member_id == "watcher":
            for key in keys:
                if "/log/" in key:
                    raw.kv.delete(key)
        return fetch(self, conn, keys)

    monkeypatch.setattr(ConsulSession, "_fetch", pruned_first)
    gate.open()
    events = seen.wait_for(lambda events: len(events) >= 3)
    assert events == [LeaderElected("g", "a"), MemberJoined("g", "b"), LeaderElected("g", "b")]


def test_a_reader_that_missed_a_leader_entry_reads_the_holder_from_the_lock(coordinators, url, namespace, raw, monkeypatch):
    from coordactors.backend_actors import consul as backend

    monkeypatch.setattr(backend, "LOG_KEEP", 2)
    watcher, a, b, churn = (coordinators(name, url) for name in ("watcher", "a", "b", "churn"))
    seen = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", seen)
    a.campaign("g")
    seen.wait_for_event(LeaderElected("g", "a"))
    gate = _Gate(watcher, raw, namespace)
    b.campaign("g")
    a.stand_down("g")
    wait_until(lambda: b.leader("g") == "b")
    for _ in range(4):  # enough entries for the others to prune b's
        churn.join("g")
        churn.leave("g")
    log = f"{namespace}/log/"
    wait_until(lambda: len([k for k in _keys(raw, namespace) if k.startswith(log)]) <= 4)
    gate.open()
    seen.wait_for_event(LeaderElected("g", "b"))
    assert watcher.leader("g") == "b"


# -- the fake agent itself ----------------------------------------------------------------


def test_the_fake_answers_blocking_queries_when_the_prefix_moves_or_the_wait_ends():
    with FakeConsulAgent(min_ttl=0.2) as agent:
        client = consul.Consul(host="127.0.0.1", port=agent.port)
        index, _ = client.kv.get("p/", recurse=True)
        started = time.monotonic()
        assert client.kv.get("p/", recurse=True, index=index, wait="200ms")[0] == index
        assert time.monotonic() - started >= 0.15
        threading.Timer(0.1, lambda: client.kv.put("other/x", "1")).start()
        threading.Timer(0.2, lambda: client.kv.put("p/x", "1")).start()
        new_index, entries = client.kv.get("p/", recurse=True, index=index, wait="5s")
        assert int(new_index) > int(index) and [e["Key"] for e in entries] == ["p/x"]
        # sessions: acquire, expiry with Behavior=delete, 404 on renew
        from consul.callback import CB

        sid = client.http.put(CB.json(is_id=True), "/v1/session/create", data='{"TTL": "0.2s", "Behavior": "delete", "LockDelay": "0s"}')
        assert client.kv.put("p/l", "v", acquire=sid) is True
        assert client.kv.get("p/l")[1]["LockIndex"] == 1
        wait_until(lambda: client.kv.get("p/l")[1] is None, timeout=5)
        with pytest.raises(consul.exceptions.NotFound):
            client.session.renew(sid)
        client.http.session.close()
    assert not [t for t in threading.enumerate() if t.name.endswith(f"[{agent.port}]")]


def test_the_fakes_prefix_index_moves_with_writes_and_deletes_under_it_and_survives_churn():
    with FakeConsulAgent() as agent:
        client = consul.Consul(host="127.0.0.1", port=agent.port)
        client.kv.put("p/a/x", "1")
        index, _ = client.kv.get("p/", keys=True)
        client.kv.put("q/y", "1")
        assert client.kv.get("p/", keys=True)[0] == index  # a write elsewhere does not move it
        client.kv.delete("p/a/x")
        after, keys = client.kv.get("p/", keys=True)
        assert int(after) > int(index) and keys is None  # a delete does
        assert client.kv.get("p/a/", keys=True)[0] == after
        assert client.kv.get("p", keys=True)[0] == after  # (a prefix not ending in "/")
        # Keys that come and go by the thousand: the reads stay right, and
        # the index of keys kept does not grow with those gone.
        for start in range(0, 3000, 50):
            batch = range(start, start + 50)
            client.txn.put([{"KV": {"Verb": "set", "Key": f"c/{i:04d}", "Value": ""}} for i in batch])
            client.txn.put([{"KV": {"Verb": "delete", "Key": f"c/{i:04d}"}} for i in batch if i % 10])
        assert client.kv.get("c/", keys=True)[1] == [f"c/{i:04d}" for i in range(0, 3000, 10)]
        assert client.kv.get("p/", keys=True)[0] == after
        assert len(agent.store._keys) < 1500
        client.http.session.close()


def test_an_agent_that_goes_away_loses_the_locks_then_everything_is_restored():
    with FakeConsulAgent() as agent:
        url = f"{agent.url}?namespace=t&heartbeat_interval=0.2&backoff_initial=0.05&backoff_max=0.2&connect_timeout=1"
        coord = coordactors.connect(url, "worker")
        try:
            own = EventRecorder()
            coord.subscribe(own)
            coord.join("g", {"v": 2}, create=True)
            coord.campaign("g")
            wait_until(lambda: coord.leader("g") == "worker")
            lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
            agent.stop()
            own.wait_for(lambda events: any(isinstance(e, SessionLost) for e in events), timeout=10)
            assert lease.lost.is_set()
            agent.start()  # the same port, the same store
            own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=10)
            assert coord.members("g") == {"worker"}
            assert coord.capabilities("g", "worker") == {"v": 2}
            wait_until(lambda: coord.leader("g") == "worker")
            again = coord.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
            assert again.fence > lease.fence
        finally:
            coord.stop()


def test_the_event_log_is_pruned_and_events_stay_complete_and_in_order(coordinators, url, namespace, raw, monkeypatch):
    from coordactors.backend_actors import consul as backend

    monkeypatch.setattr(backend, "LOG_KEEP", 5)
    watcher, member = coordinators("watcher", url), coordinators("m", url)
    seen = EventRecorder()
    watcher.create_group("g")
    watcher.watch("g", seen)
    for _ in range(15):
        member.join("g")
        member.leave("g")
    events = seen.wait_for(lambda events: len(events) >= 30)
    assert events == [MemberJoined("g", "m"), MemberLeft("g", "m")] * 15
    wait_until(lambda: len([k for k in _keys(raw, namespace) if k.startswith(f"{namespace}/log/")]) <= 10)


def test_the_fake_rolls_back_a_failed_transaction_and_applies_lock_delay_and_behavior_release():
    from consul.callback import CB

    with FakeConsulAgent(min_ttl=0.2) as agent:
        client = consul.Consul(host="127.0.0.1", port=agent.port)
        try:
            ops = [{"KV": {"Verb": "set", "Key": "k/a", "Value": "MQ=="}}, {"KV": {"Verb": "get", "Key": "k/missing"}}]
            with pytest.raises(consul.exceptions.ClientError, match="409"):
                client.txn.put(ops)
            assert client.kv.get("k/a")[1] is None
            sid = client.http.put(CB.json(is_id=True), "/v1/session/create", data='{"TTL": "10s", "LockDelay": "0.3s"}')
            assert client.session.info(sid)[1]["Behavior"] == "release"
            assert client.kv.put("k/l", "v", acquire=sid) is True
            assert client.kv.put("k/l", "v", release="not-the-holder") is False
            client.session.destroy(sid)
            assert client.session.info(sid)[1] is None
            entry = client.kv.get("k/l")[1]
            assert entry is not None and "Session" not in entry  # Behavior=release keeps the key, unlocked
            other = client.http.put(CB.json(is_id=True), "/v1/session/create", data='{"TTL": "10s"}')
            started = time.monotonic()
            assert client.kv.put("k/l", "w", acquire=other) is False  # within the lock-delay
            wait_until(lambda: client.kv.put("k/l", "w", acquire=other), timeout=5)
            assert time.monotonic() - started >= 0.25
            assert client.kv.get("k/l")[1]["LockIndex"] == 2
        finally:
            client.http.session.close()


def test_the_fake_answers_transactions_reads_and_the_catalog_as_consul_does():
    from consul.callback import CB

    with FakeConsulAgent() as agent:
        client = consul.Consul(host="127.0.0.1", port=agent.port)
        try:
            client.kv.put("k/a", "1")
            client.kv.put("k/a/b", "2")
            client.kv.put("k/c", "3")
            # get-tree of a missing key gives nothing; get of one fails the transaction
            ok = client.txn.put([{"KV": {"Verb": "get-tree", "Key": "k/gone"}}, {"KV": {"Verb": "get-tree", "Key": "k/c"}}])
            assert [r["KV"]["Key"] for r in ok["Results"]] == ["k/c"]
            with pytest.raises(consul.exceptions.ClientError, match="413"):
                client.txn.put([{"KV": {"Verb": "get-tree", "Key": "k/"}}] * 65)
            assert client.kv.get("k/", keys=True, separator="/")[1] == ["k/a", "k/a/", "k/c"]
            # what tooz's driver does first: the agent's node, registered again, a session on it
            node = client.agent.self()["Member"]["Name"]
            assert client.catalog.register(node=node, address="127.0.0.1") is True
            assert client.session.info(client.session.create(node=node, ttl=10))[1]["Node"] == node
            assert client.catalog.register(node="other", address="10.0.0.2") is True
            assert client.session.info(client.session.create(node="other", ttl=10))[1]["Node"] == "other"
            with pytest.raises(consul.exceptions.ConsulException, match="Missing node registration"):
                client.http.put(CB.json(is_id=True), "/v1/session/create", data='{"Node": "nowhere"}')
        finally:
            client.http.session.close()


def test_toozs_consul_driver_locks_and_keeps_groups_on_the_fake():
    pytest.importorskip("tooz")
    from coordactors.bench.contenders import open_tooz

    with FakeConsulAgent() as agent:
        url = f"consul://127.0.0.1:{agent.port}?namespace=tooz"
        first, second = open_tooz(url, "m1"), open_tooz(url, "m2")
        try:
            lock, contender = first.get_lock(b"x"), second.get_lock(b"x")
            assert lock.acquire(blocking=False) and not contender.acquire(blocking=False)
            assert lock.release() and contender.acquire(blocking=False) and contender.release()
            first.create_group(b"g").get()
            first.join_group(b"g", b"caps").get()
            second.join_group(b"g").get()
            first.update_capabilities(b"g", b"new").get()
            assert second.get_member_capabilities(b"g", b"m1").get() == b"new"
            first.leave_group(b"g").get()
            assert second.get_members(b"g").get() == {b"m2"}
        finally:
            first.stop()
            second.stop()


def test_a_reader_rests_while_nothing_watches_or_waits_and_a_watch_wakes_it(coordinators, url):
    holder, watcher = coordinators("holder", url), coordinators("watcher", url)
    session = watcher._route.session._actor_weakref()
    wait_until(lambda: session.conn is not None and session.conn.rest.resting, timeout=10)
    queries = []
    listing = session.conn.reader.kv.get
    session.conn.reader.kv.get = lambda *args, **kwargs: queries.append(1) or listing(*args, **kwargs)
    for _ in range(3):  # writes in the namespace: a resting reader lists nothing
        holder.ask(Release(holder.ask(Acquire("jobs"), block=True, timeout=10)), block=True, timeout=10)
    assert not queries
    session.conn.reader.kv.get = listing
    check_a_watch_wakes_a_resting_reader(holder, watcher, session)


def test_the_heartbeat_prunes_the_log_when_no_reader_does(coordinators, url, namespace, raw, monkeypatch):
    from coordactors.backend_actors import consul as backend

    monkeypatch.setattr(backend, "LOG_KEEP", 3)
    monkeypatch.setattr(backend, "PRUNE_EVERY", 4)
    a = coordinators("a", url + "&heartbeat_interval=0.2")  # nothing watches: every reader rests
    a.create_group("g")
    for _ in range(6):  # twelve log entries
        a.join("g")
        a.leave("g")
    log = f"{namespace}/log/"
    wait_until(lambda: len([k for k in _keys(raw, namespace) if k.startswith(log)]) == 3, timeout=10)


@pytest.mark.timeout(60)
def test_the_benchmarks_agent_process_serves_and_leaves_nothing_behind():
    from coordactors.bench.backends import Backends

    with Backends() as backends:
        backends.start(["consul"])
        [backend] = backends.backends
        agent = backends._started[0]
        pid = agent._process.pid
        with coordactors.connect(backend.base_url, "m") as coord:
            coord.join("g", create=True)
            assert coord.members("g") == {"m"}
    assert agent._process is None
    with pytest.raises(ProcessLookupError):  # reaped: not even a zombie left
        os.kill(pid, 0)
