"""Redis-specific behaviour, against a real redis-server started by the harness."""

from __future__ import annotations

import uuid

import pytest
import redis

import coordactors
from coordactors import errors
from coordactors.events import MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder
from helpers import wait_until



@pytest.fixture
def url(redis_server):
    return f"{redis_server.url}?namespace=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def _namespace(url: str) -> str:
    return url.rpartition("namespace=")[2].partition("&")[0]


def test_fences_keep_rising_after_the_server_loses_its_data(coordinators, url, raw):
    coord = coordinators("a", url)
    first = coord.ask(Acquire("jobs"), block=True, timeout=10)
    coord.ask(Release(first), block=True, timeout=10)
    for key in raw.scan_iter(f"{_namespace(url)}:*"):
        raw.delete(key)  # as a restart without persistence would
    second = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert second.fence > first.fence


def test_fences_keep_rising_when_the_counter_falls_behind(coordinators, url, raw):
    # As after a failover to a replica that had not received the last INCRs.
    coord = coordinators("a", url)
    first = coord.ask(Acquire("jobs"), block=True, timeout=10)
    coord.ask(Release(first), block=True, timeout=10)
    raw.set(f"{_namespace(url)}:fence:jobs", first.fence - 10)
    second = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert second.fence > first.fence


def test_a_lock_key_taken_by_someone_else_is_reported_lost_on_refresh(coordinators, url, raw):
    coord = coordinators("a", url + "&heartbeat_interval=0.05")
    own = EventRecorder()
    coord.subscribe(own)
    lease = coord.ask(Acquire("jobs", ttl=5), block=True, timeout=10)
    raw.set(f"{_namespace(url)}:lock:jobs", "intruder|1|x")
    own.wait_for(lambda events: any(getattr(e, "name", None) == "jobs" for e in events))
    assert lease.lost.is_set()
    with pytest.raises(errors.LockLost):
        lease.check()


def test_a_member_whose_liveness_vanished_is_reaped_and_then_restores_itself(coordinators, url, raw):
    worker = coordinators("worker", url + "&heartbeat_interval=0.05&backoff_initial=0.05")
    watcher = coordinators("watcher", url)
    seen, own = EventRecorder(), EventRecorder()
    worker.join("g", {"v": 1}, create=True)
    watcher.watch("g", seen)
    worker.subscribe(own)
    raw.delete(f"{_namespace(url)}:alive:g\x1fworker")  # as if it had expired
    # Everyone sees it leave; its own heartbeat finds the session gone and the
    # supervisor brings the membership back.
    seen.wait_for_event(MemberLeft("g", "worker"))
    own.wait_for(lambda events: [type(e) for e in events][:1] == [SessionLost] and any(isinstance(e, SessionRestored) for e in events))
    wait_until(lambda: watcher.members("g") == {"worker"})
    assert watcher.capabilities("g", "worker") == {"v": 1}


def test_data_in_a_foreign_format_is_refused_and_left_untouched(coordinators, url, raw):
    raw.set(f"{_namespace(url)}:groups", "somebody else's string")
    coord = coordinators("a", url)
    with pytest.raises(errors.InvalidArgument, match="format"):
        coord.join("g", create=True)
    assert raw.get(f"{_namespace(url)}:groups") == "somebody else's string"


def test_a_wrong_password_is_refused_without_showing_it(redis_server, raw):
    user = f"u{uuid.uuid4().hex[:8]}"
    raw.acl_setuser(user, enabled=True, passwords=["+RightPassword1"], keys=["*"], commands=["+@all"])
    try:
        url = f"redis://{user}:Sup3rSecretPw@{redis_server.host}:{redis_server.port}?connect_timeout=2"
        with pytest.raises(errors.BackendUnavailable) as caught:
            coordactors.connect(url, "a")
        assert "Sup3rSecretPw" not in str(caught.value)
        assert "Sup3rSecretPw" not in repr(caught.value)
        assert "credentials" in str(caught.value)
        # and with the right one, it works
        coordactors.connect(url.replace("Sup3rSecretPw", "RightPassword1"), "a").stop()
    finally:
        raw.acl_deluser(user)


def test_an_unreachable_server_is_a_clear_backend_unavailable():
    with pytest.raises(errors.BackendUnavailable, match="127.0.0.1:1"):
        coordactors.connect("redis://127.0.0.1:1?connect_timeout=1", "a")


@pytest.mark.parametrize(
    "bad",
    [
        "redis://127.0.0.1:6379/notanumber",
        "redis://127.0.0.1:6379?ssl_ca_certs=/x",
        "redis://127.0.0.1:6379?sentinel_fallback=nohost",
        "redis://127.0.0.1:6379?session_ttl=none",
        "redis://127.0.0.1:6379?bogus=1",
    ],
)
def test_malformed_urls_and_options_are_invalid_arguments(bad):
    with pytest.raises(errors.InvalidArgument):
        coordactors.connect(bad, "a")


def test_tls_and_sentinel_options_are_parsed_and_passed_through():
    from coordactors.urls import parse_url

    _cls, options = parse_url("rediss://:pw@h:6380/2?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none&namespace=x")
    assert options.extra == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none", "namespace": "x"}
    assert "pw" not in repr(options) and options.password == "pw"
    _cls, options = parse_url("redis://s1:26379?sentinel=mymaster&sentinel_fallback=s2:26379,s3:26380")
    assert options.extra["sentinel_fallback"] == [("s2", 26379), ("s3", 26380)]


def test_a_resting_reader_reads_on_from_where_it_stopped(coordinators, url):
    from coordactors.events import MemberJoined

    holder, waiter, watcher, other = (coordinators(name, url) for name in ("holder", "waiter", "watcher", "other"))
    sessions = {name: coord._route.session._actor_weakref() for name, coord in (("waiter", waiter), ("watcher", watcher))}
    # Nothing watched, nothing waited for: their readers rest (do not read the stream).
    wait_until(lambda: all(session.conn is not None and session.conn.rest.resting for session in sessions.values()), timeout=10)

    # A member leaves and comes back while the watcher's reader rests: the
    # watch's snapshot has it, and the stale leave is not reported.
    holder.create_group("g")
    other.join("g")
    other.leave("g")
    other.join("g")
    seen = EventRecorder()
    watcher.watch("g", seen)
    holder.join("g")
    seen.wait_for(lambda events: MemberJoined("g", "holder") in events, timeout=10)
    assert seen.events == [MemberJoined("g", "holder")]

    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = waiter.submit(Acquire("jobs", timeout=30))
    holder.ask(Release(lease), block=True, timeout=10)
    assert waiting.result(timeout=10).fence > lease.fence
    wait_until(lambda: sessions["waiter"].conn.rest.resting, timeout=10)  # nothing waits any more


def test_requests_still_work_after_the_server_forgets_its_scripts(coordinators, url, raw):
    # As after a restart without persistence, or a SCRIPT FLUSH by an operator:
    # EVALSHA is answered NOSCRIPT and the session loads the script again.
    coord = coordinators("a", url)
    coord.join("workers", create=True)
    raw.script_flush()
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    coord.ask(Release(lease), block=True, timeout=10)
    raw.script_flush()
    # Many at once: queued requests go to Redis in one pipeline, whose NOSCRIPT
    # replies send each call down the usual path.
    futures = [coord.submit(Acquire(f"batch-{i}"), timeout=10) for i in range(32)]
    leases = [future.result(10) for future in futures]
    assert sorted(lease.name for lease in leases) == sorted(f"batch-{i}" for i in range(32))
    assert coord.members("workers") == {"a"}
