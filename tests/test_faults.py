"""Server faults on the networked backends, each against a private server.

SIGKILL of the server while a lease is held and groups are joined; SIGSTOP of
the server for longer than the lease's TTL.  Each test starts its own server
(milliseconds to a second) so killing it disturbs no other test.
"""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid

import pytest

import coordactors
from coordactors.events import LockLost, SessionLost, SessionRestored
from coordactors.messages import Acquire
from coordactors.testing import EventRecorder
from coordactors.testing import servers
from helpers import wait_until

FAST = "backoff_initial=0.05&backoff_max=0.5&connect_timeout=5"

ROWS = [
    pytest.param(("redis", servers.RedisServer, "session_ttl=2&socket_timeout=0.5"), id="redis"),
    pytest.param(("zookeeper", servers.ZooKeeperServer, "session_ttl=2"), id="zookeeper"),
    pytest.param(("memcached", servers.MemcachedServer, "session_ttl=2"), id="memcached"),
    pytest.param(("postgresql", servers.PostgresServer, "session_ttl=2"), id="postgresql"),
    pytest.param(("mysql", servers.MariaDBServer, "session_ttl=2"), id="mysql"),
    pytest.param(("etcd", servers.EtcdServer, "session_ttl=2"), id="etcd"),
    pytest.param(("etcd3", servers.EtcdServer, "session_ttl=2"), id="etcd3"),
]
ROWS = [row for row in ROWS if importlib.util.find_spec(f"coordactors.backend_actors.{row.values[0][0]}") is not None]


@pytest.fixture(params=ROWS)
def private_server(request):
    module, server_class, options = request.param
    try:
        server = server_class().start()
    except servers.ServerUnavailable as exc:
        import os

        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        base = server.url_v3 if module == "etcd3" else server.url
        yield server, f"{base}{'&' if '?' in base else '?'}namespace=f{uuid.uuid4().hex[:8]}&{options}&{FAST}"
    finally:
        server.stop()


def _acquire(coord, name, ttl):
    """Acquire with a per-lease TTL where the backend has them; elsewhere the
    lease lives by the session, whose TTL the URL sets."""
    return Acquire(name, ttl=ttl if coord._route.session.actor_class.LEASE_TTL else None)


def test_a_killed_server_costs_the_lease_and_a_restarted_one_gets_everything_back(private_server, coordinators):
    server, url = private_server
    holder, own = coordinators("holder", url), EventRecorder()
    holder.subscribe(own)
    holder.join("g", {"slots": 3}, create=True)
    holder.campaign("g")
    lease = holder.ask(_acquire(holder, "jobs", ttl=2), block=True, timeout=10)
    wait_until(lambda: holder.leader("g") == "holder")

    killed_at = time.monotonic()
    server.kill()
    own.wait_for(lambda events: any(isinstance(e, LockLost) and e.name == "jobs" for e in events), timeout=10)
    assert time.monotonic() - killed_at <= (lease.ttl or 2) + 0.5  # session_ttl=2 where leases live by the session
    assert lease.lost.is_set()
    assert [type(e) for e in own.events][0] is SessionLost

    server.restart()
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=20)
    observer = coordinators("observer", url)
    assert observer.members("g") == {"holder"}
    assert observer.capabilities("g", "holder") == {"slots": 3}
    wait_until(lambda: observer.leader("g") == "holder", timeout=10)


def test_a_server_paused_past_the_ttl_never_leaves_two_believing_holders(private_server, coordinators):
    server, url = private_server
    first, second = coordinators("first", url), coordinators("second", url)
    lease = first.ask(_acquire(first, "jobs", ttl=1), block=True, timeout=10)
    waiting = second.submit(Acquire("jobs", timeout=30))
    wait_until(lambda: second.statistics()["waiting"] == 1)  # queued before the pause
    server.pause()
    try:
        # The holder's refreshes cannot land, so its own clock gives the lease
        # up first; the fault then lasts well past the TTL at the server too.
        wait_until(lambda: not lease.held, timeout=10)
        threading.Event().wait((lease.ttl or 2) + 0.5)
    finally:
        server.resume()
    granted = waiting.result(timeout=30)
    granted_at = time.monotonic()
    assert granted.fence > lease.fence
    # When the second was granted, the first no longer believed it held the lock.
    expires_at = lease._state.expires_at
    assert lease.lost.is_set() or (expires_at is not None and expires_at <= granted_at)
    with pytest.raises(coordactors.errors.LockLost):
        lease.check()
    wait_until(lambda: lease.lost.is_set())  # and it stays lost: never revived
