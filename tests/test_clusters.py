"""Clustered backends: what a node failure costs, on real clusters started here.

A ZooKeeper ensemble and an etcd cluster of three, started once for the module, and
a Redis primary with a replica and three Sentinels per test; each test takes a
namespace of its own and leaves every node running again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_until

import coordactors
from coordactors.events import LeaderElected, LockLost, MemberJoined, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder
from coordactors.testing.checker import run_check
from coordactors.testing.clusters import EtcdCluster, RedisSentinelCluster, ZooKeeperEnsemble
from coordactors.testing.pytest_plugin import start_or_skip

FAST = "backoff_initial=0.05&backoff_max=0.5&connect_timeout=5"


@pytest.fixture(scope="module")
def ensemble() -> Iterator[ZooKeeperEnsemble]:
    """Three ZooKeeper servers in one ensemble."""
    cluster = start_or_skip(ZooKeeperEnsemble(3))
    yield cluster
    cluster.stop()


@pytest.fixture
def zk_url(ensemble: ZooKeeperEnsemble) -> Iterator[str]:
    """A private namespace on the ensemble; every node is running again after the test."""
    yield f"{ensemble.url}?namespace=t{uuid.uuid4().hex[:12]}&{FAST}"
    dead = [i for i, node in enumerate(ensemble.nodes) if not node.is_running]
    if dead:
        ensemble.restart(*dead)


def _session_id(ensemble: ZooKeeperEnsemble) -> int:
    """The id of the one client session on the ensemble (tests connect one client before looking)."""
    found: set[int] = set()
    wait_until(lambda: found.update(*(node.session_ids() for node in ensemble.nodes)) or len(found) == 1, timeout=10)
    return found.pop()


def _set_up_worker(coordinators: Callable[..., coordactors.Coordinator], url: str) -> tuple[coordactors.Coordinator, EventRecorder, EventRecorder, Any]:
    worker = coordinators("worker", url)
    own, group = EventRecorder(), EventRecorder()
    worker.subscribe(own)
    worker.watch("g", group)
    worker.join("g", {"slots": 2}, create=True)
    worker.campaign("g")
    group.wait_for(lambda events: LeaderElected("g", "worker") in events)
    lease = worker.ask(Acquire("jobs"), block=True, timeout=10)
    return worker, own, group, lease


def test_killing_the_server_a_client_uses_moves_its_session_and_costs_nothing(ensemble, zk_url, coordinators):
    worker, own, group, lease = _set_up_worker(coordinators, f"{zk_url}&session_ttl=6")
    session = _session_id(ensemble)
    serving = ensemble.serving(session)
    assert serving is not None, "the session is on no server"

    ensemble.kill(serving)
    wait_until(lambda: ensemble.serving(session) not in (None, serving), timeout=6,
               message="the session did not move to another server within its timeout")
    # The same session, so the same leases and memberships: requests go on.
    assert worker.members("g", timeout=10) == {"worker"}
    assert worker.leader("g", timeout=10) == "worker"
    lease.check()
    assert lease.held

    observer = coordinators("observer", zk_url)
    assert observer.capabilities("g", "worker") == {"slots": 2}
    with pytest.raises(coordactors.errors.LockTimeout):
        observer.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    observer.join("g")  # the worker's watch survived the move
    group.wait_for(lambda events: MemberJoined("g", "observer") in events)
    assert not [e for e in own.events if isinstance(e, (SessionLost, LockLost))]


def test_losing_the_majority_loses_the_session_and_its_return_restores_it(ensemble, zk_url, coordinators):
    worker, own, group, lease = _set_up_worker(coordinators, f"{zk_url}&session_ttl=2")
    session = _session_id(ensemble)
    serving = ensemble.serving(session)
    assert serving is not None, "the session is on no server"
    others = [i for i in range(3) if i != serving]

    killed_at = time.monotonic()
    ensemble.kill(others[0])
    ensemble.kill(others[1])  # the survivor stops serving: no quorum
    own.wait_for(lambda events: {e.name for e in events if isinstance(e, LockLost)} >= {"jobs", "__leader__/g"}, timeout=10)
    assert time.monotonic() - killed_at <= 2 + 0.5
    assert type(own.events[0]) is SessionLost
    assert lease.lost.is_set()
    with pytest.raises(coordactors.errors.LockLost):
        lease.check()

    ensemble.restart(*others)
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=30)
    observer = coordinators("observer", zk_url)
    assert observer.members("g") == {"worker"}
    assert observer.capabilities("g", "worker") == {"slots": 2}
    wait_until(lambda: observer.leader("g") == "worker", timeout=10)
    again = observer.ask(Acquire("jobs", timeout=10), block=True, timeout=15)
    assert again.fence > lease.fence


# -- etcd ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three etcd members in one cluster."""
    cluster = start_or_skip(EtcdCluster(3))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["etcd", "etcd3"])
def etcd_url(request: Any, etcd_cluster: EtcdCluster) -> Iterator[str]:
    """A private namespace on the cluster, through the v2 or the v3 API; every member runs again after the test."""
    base = etcd_cluster.url if request.param == "etcd" else etcd_cluster.url_v3
    yield f"{base}?namespace=t{uuid.uuid4().hex[:12]}&{FAST}"
    dead = [i for i, node in enumerate(etcd_cluster.nodes) if not node.is_running]
    if dead:
        etcd_cluster.restart(*dead)
        wait_until(lambda: etcd_cluster.leader() is not None, timeout=20)


def test_killing_the_etcd_leader_fails_over_and_keeps_leases_and_fences(etcd_cluster, etcd_url, coordinators):
    worker, own, group, lease = _set_up_worker(coordinators, f"{etcd_url}&session_ttl=3")
    wait_until(lambda: etcd_cluster.leader() is not None, timeout=10, message="no etcd leader")
    leader = etcd_cluster.leader()

    etcd_cluster.kill(leader)
    # Requests go on through the other members; the session and its keys stand.
    assert worker.members("g", timeout=15) == {"worker"}
    assert worker.leader("g", timeout=15) == "worker"
    worker.update_capabilities("g", {"slots": 3}, timeout=15)
    observer = coordinators("observer", etcd_url)
    assert observer.capabilities("g", "worker") == {"slots": 3}
    with pytest.raises(coordactors.errors.LockTimeout):
        observer.ask(Acquire("jobs", timeout=0), block=True, timeout=15)
    observer.join("g")
    group.wait_for(lambda events: MemberJoined("g", "observer") in events, timeout=15)
    # Let a whole TTL pass: only the worker's heartbeats, through the other
    # members, keep its membership and its lock alive.
    threading.Event().wait(3.5)
    lease.check()
    assert observer.members("g") == {"worker", "observer"}
    assert not [e for e in own.events if isinstance(e, (SessionLost, LockLost))]

    worker.ask(Release(lease), block=True, timeout=15)
    again = observer.ask(Acquire("jobs", timeout=10), block=True, timeout=15)
    assert again.fence > lease.fence


# -- Redis with Sentinel -------------------------------------------------------------------------


@pytest.fixture
def sentinel_cluster() -> Iterator[RedisSentinelCluster]:
    """A Redis primary, one replica and three sentinels (one per test: a failover changes who is primary)."""
    cluster = start_or_skip(RedisSentinelCluster())
    yield cluster
    cluster.stop()


def test_a_sentinel_failover_costs_the_lock_but_never_leaves_two_holders(sentinel_cluster, coordinators):
    url = f"{sentinel_cluster.url}&namespace=t{uuid.uuid4().hex[:12]}&{FAST}&session_ttl=2"
    holder, other = coordinators("holder", url), coordinators("other", url)
    lost_at: list[float] = []
    own = EventRecorder()
    holder.subscribe(own)
    holder.subscribe(lambda event: lost_at.append(time.time()) if isinstance(event, LockLost) else None)
    holder.join("g", {"slots": 1}, create=True)
    lease = holder.ask(Acquire("jobs", ttl=2), block=True, timeout=10)
    waiting = other.submit(Acquire("jobs", timeout=60))
    wait_until(lambda: other.statistics()["waiting"] == 1)

    sentinel_cluster.kill(0)  # the primary
    promoted = sentinel_cluster.wait_for_master(not_index=0, timeout=30)
    granted = waiting.result(timeout=60)
    # The holder was told before the other was granted: never two holders.
    own.wait_for(lambda events: any(isinstance(e, LockLost) and e.name == "jobs" for e in events), timeout=10)
    assert lost_at and lost_at[0] < granted.acquired_at
    with pytest.raises(coordactors.errors.LockLost):
        lease.check()
    assert granted.fence > lease.fence  # even if the promoted replica's counter was behind

    # Both follow the promoted replica: the holder's session is restored there.
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=30)
    assert other.members("g", timeout=10) == {"holder"}
    assert sentinel_cluster.master_index() == promoted


# -- the safety checker, with a node of each cluster killed ---------------------------------------


@pytest.mark.parametrize("kind", ["zookeeper", "etcd", "etcd3", "redis-sentinel"])
def test_the_safety_checker_finds_each_cluster_safe_when_its_primary_node_is_killed(kind: str, request: Any) -> None:
    cluster = request.getfixturevalue({"zookeeper": "ensemble", "redis-sentinel": "sentinel_cluster"}.get(kind, "etcd_cluster"))
    base = cluster.url_v3 if kind == "etcd3" else cluster.url
    url = f"{base}{'&' if '?' in base else '?'}namespace=t{uuid.uuid4().hex[:12]}"

    report = run_check(url, ["none", "node-kill"], workers=3, seconds=1.0, ttl=2.0, server=cluster)

    assert report.unsafe == [], report.text()
    none, node_kill = report.phases
    assert none["holds"] >= 2 and node_kill["faults"] == 1, report.text()
    assert node_kill["overlaps"] == node_kill["lost_updates"] == 0, report.text()
    assert "grant_after_heal" in node_kill, report.text()  # the lock is granted again once the node is back
    assert node_kill["campaigns_restored"] and node_kill["watches_restored"], report.text()
    assert all(node.is_running for node in cluster.nodes)
    if kind.startswith("etcd"):
        wait_until(lambda: cluster.leader() is not None, timeout=20)
