"""Private server clusters on loopback ports: a ZooKeeper ensemble, an etcd cluster, Redis with Sentinel.

Each cluster is a list of :mod:`coordactors.testing.servers` nodes whose ports are all chosen
before any starts (every node's configuration names its peers), started together and stopped
together; any one node can be killed, paused, resumed and restarted on its own::

    with ZooKeeperEnsemble(3) as ensemble:
        coord = coordactors.connect(ensemble.url, "a")   # zookeeper://h:p1,h:p2,h:p3
        ensemble.kill(ensemble.serving(coord_session_id))
        ensemble.restart(0)

``url`` names every node, so a client fails over between them.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import socket
import time
from typing import Any, ClassVar, Generic, Self, TypeVar

from coordactors.testing.servers import EtcdServer, RedisServer, Server, ServerStartError, ZooKeeperServer, free_ports

__all__ = ["Cluster", "EtcdCluster", "RedisSentinelCluster", "SentinelServer", "ZooKeeperEnsemble"]

NodeT = TypeVar("NodeT", bound=Server)


class Cluster(Generic[NodeT]):
    """Servers started and stopped together; each can fail alone.

    Subclasses make ``self.nodes`` with every port fixed in advance.
    """

    START_TIMEOUT: ClassVar[float] = 60.0

    nodes: list[NodeT]

    def start(self) -> Self:
        """Start every node at once (a node of a quorum system is ready only once a quorum runs)."""
        self._start_together(range(len(self.nodes)))
        return self

    def _start_together(self, indexes: Any) -> None:
        indexes = list(indexes)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(indexes))) as pool:
            futures = [pool.submit(self.nodes[index].start) for index in indexes]
        failed = [future.exception() for future in futures if future.exception() is not None]
        if failed:
            self.stop()
            raise failed[0]  # type: ignore[misc]

    def stop(self) -> None:
        """Stop every node and remove its data (safe to call twice)."""
        for node in self.nodes:
            node.stop()

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (its data is kept for ``restart``)."""
        self.nodes[index].kill()

    def pause(self, index: int) -> None:
        """SIGSTOP node ``index``."""
        self.nodes[index].pause()

    def resume(self, index: int) -> None:
        """SIGCONT node ``index``."""
        self.nodes[index].resume()

    def primary(self) -> int | None:
        """The index of the node the cluster depends on now (its leader, its master), if any."""
        raise NotImplementedError

    def restart(self, *indexes: int) -> None:
        """Start the given nodes again, on their ports with their data, together."""
        for index in indexes:
            if self.nodes[index].is_running:
                self.nodes[index].stop(remove=False)
        self._start_together(indexes)

    @property
    def hosts(self) -> str:
        """``host:port,host:port,...`` of every node's client port."""
        return ",".join(f"{node.host}:{node.port}" for node in self.nodes)

    def __enter__(self) -> Self:
        """Start the cluster (see ``start()``)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the cluster (see ``stop()``)."""
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.nodes!r}>"


def _pinned(node: Server, ports: list[int]) -> None:
    """Give ``node`` all its ports (client first) before its first start: peers must know them."""
    node._ports = list(ports)  # noqa: SLF001  (the harness's own class)
    node._pinned = True  # noqa: SLF001


# -- ZooKeeper -------------------------------------------------------------------------------------


class ZooKeeperNode(ZooKeeperServer):
    """One server of a ZooKeeper ensemble (``myid`` = its index + 1)."""

    EXTRA_PORTS = 2  # quorum and leader-election ports

    def __init__(self, myid: int, peers: list[tuple[int, int, int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.myid = myid
        self.peers = peers
        _pinned(self, list(peers[myid - 1]))

    def _initialize(self, binaries: dict[str, str]) -> None:
        os.makedirs(os.path.join(str(self.directory), "data"), exist_ok=True)
        with open(os.path.join(str(self.directory), "data", "myid"), "w", encoding="ascii") as myid:
            myid.write(f"{self.myid}\n")

    def _command(self, binaries: dict[str, str]) -> list[str]:
        argv = super()._command(binaries)
        with open(self._config(), "a", encoding="utf-8") as config:
            config.write("4lw.commands.whitelist=ruok,stat,srvr,mntr,cons\n")  # later lines win
            for myid, (_client, quorum, election) in enumerate(self.peers, start=1):
                config.write(f"server.{myid}={self.host}:{quorum}:{election}\n")
        return argv

    @property
    def mode(self) -> str | None:
        """``leader``, ``follower``, or None when the node does not serve (no quorum, dead, paused)."""
        try:
            text = self.four_letters(b"srvr").decode("utf-8", "replace")
        except OSError:
            return None
        found = re.search(r"^Mode: (\w+)", text, re.MULTILINE)
        return found.group(1) if found else None

    def session_ids(self) -> set[int]:
        """The ids of the client sessions connected to this node (from ``cons``)."""
        try:
            text = self.four_letters(b"cons").decode("utf-8", "replace")
        except OSError:
            return set()
        return {int(sid, 16) for sid in re.findall(r"sid=0x([0-9a-f]+)", text) if int(sid, 16) != 0}

    def four_letters(self, word: bytes, timeout: float = 2.0) -> bytes:
        """Send a four-letter word; the whole answer."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(word)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)


class ZooKeeperEnsemble(Cluster[ZooKeeperNode]):
    """``size`` ZooKeeper servers in one ensemble. URL ``zookeeper://h:p1,h:p2,h:p3``."""

    def __init__(self, size: int = 3, *, host: str = "127.0.0.1") -> None:
        ports = free_ports(3 * size, host)
        peers = [(ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]) for i in range(size)]
        self.nodes = [ZooKeeperNode(myid, peers, host=host, start_timeout=self.START_TIMEOUT) for myid in range(1, size + 1)]

    @property
    def url(self) -> str:
        """``zookeeper://`` naming every node."""
        return f"zookeeper://{self.hosts}"

    def serving(self, session_id: int) -> int | None:
        """The index of the node that session ``session_id`` is connected to, if any."""
        for index, node in enumerate(self.nodes):
            if node.is_running and not node.is_paused and session_id in node.session_ids():
                return index
        return None

    def leader(self) -> int | None:
        """The index of the current leader, if there is one."""
        for index, node in enumerate(self.nodes):
            if node.is_running and not node.is_paused and node.mode == "leader":
                return index
        return None

    def primary(self) -> int | None:
        """The leader."""
        return self.leader()


# -- etcd ------------------------------------------------------------------------------------------


class EtcdNode(EtcdServer):
    """One member of an etcd cluster, named ``node<index>``."""

    def __init__(self, index: int, peers: list[tuple[int, int]], token: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.peers = peers
        self.token = token
        _pinned(self, list(peers[index]))

    def _command(self, binaries: dict[str, str]) -> list[str]:
        client, peer = (f"http://{self.host}:{port}" for port in self.peers[self.index])
        cluster = ",".join(f"node{i}=http://{self.host}:{peer_port}" for i, (_c, peer_port) in enumerate(self.peers))
        return self._member_command(binaries, f"node{self.index}", client, peer, cluster, self.token, election_ms=500, heartbeat_ms=50)

    def _discard_data(self) -> None:
        """Ports are fixed by the cluster: nothing to forget."""

    def is_leader(self) -> bool:
        """Whether this member is the raft leader now."""
        import json

        try:
            status, body = self._get("/v2/stats/self", 1.0)
        except OSError:
            return False
        return status == 200 and json.loads(body).get("state") == "StateLeader"


class EtcdCluster(Cluster[EtcdNode]):
    """``size`` etcd members. URLs ``etcd://h:p1,h:p2,h:p3`` (v2) and ``etcd3+http://...`` (v3 gateway)."""

    def __init__(self, size: int = 3, *, host: str = "127.0.0.1") -> None:
        ports = free_ports(2 * size, host)
        peers = [(ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        token = f"coordactors-{os.getpid()}-{ports[0]}"
        self.nodes = [EtcdNode(index, peers, token, host=host, start_timeout=self.START_TIMEOUT) for index in range(size)]

    @property
    def url(self) -> str:
        """``etcd://`` naming every member (v2 keys API)."""
        return f"etcd://{self.hosts}"

    @property
    def url_v3(self) -> str:
        """``etcd3+http://`` naming every member (v3 JSON gateway)."""
        return f"etcd3+http://{self.hosts}"

    def leader(self) -> int | None:
        """The index of the raft leader, if one is known."""
        for index, node in enumerate(self.nodes):
            if node.is_running and not node.is_paused and node.is_leader():
                return index
        return None

    def primary(self) -> int | None:
        """The raft leader."""
        return self.leader()


# -- Redis + Sentinel ------------------------------------------------------------------------------


class RedisReplica(RedisServer):
    """A redis-server replicating ``primary`` (until a failover makes it the primary)."""

    def __init__(self, primary: RedisServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.primary = primary

    def _command(self, binaries: dict[str, str]) -> list[str]:
        return [*super()._command(binaries), "--replicaof", self.primary.host, str(self.primary.port)]


class SentinelServer(Server):
    """One Redis Sentinel (``redis-server --sentinel``) watching master ``name``; ready on ``PING``."""

    NAME, PACKAGE, executable = "redis-sentinel", "redis-server", "redis-server"
    START_TIMEOUT = 15.0
    DOWN_AFTER_MS = 400
    FAILOVER_TIMEOUT_MS = 2000

    def __init__(self, name: str, primary: RedisServer, quorum: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.master_name = name
        self.primary = primary
        self.quorum = quorum

    def _config(self) -> str:
        return os.path.join(str(self.directory), "sentinel.conf")

    def _initialize(self, binaries: dict[str, str]) -> None:
        # Written once: Sentinel rewrites it with what it learns (the current master, its peers).
        with open(self._config(), "w", encoding="utf-8") as config:
            config.write(
                f"port {self.port}\nbind {self.host}\nprotected-mode no\ndir {self.directory}\n"
                f"sentinel monitor {self.master_name} {self.primary.host} {self.primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.master_name} {self.FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )

    def _command(self, binaries: dict[str, str]) -> list[str]:
        return [binaries["server"], self._config(), "--sentinel"]

    def _probe(self, timeout: float) -> bool:
        return self.master_address(timeout) is not None

    def master_address(self, timeout: float = 1.0) -> tuple[str, int] | None:
        """The master's ``(host, port)`` as this sentinel sees it now."""
        name = self.master_name.encode()
        request = b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$%d\r\n%s\r\n" % (len(name), name)
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            data = b""
            while data.count(b"\r\n") < 5 and not data.startswith((b"*-1", b"-")):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        parts = data.split(b"\r\n")
        if not data.startswith(b"*2"):
            return None
        return parts[2].decode(), int(parts[4])

    @property
    def url(self) -> str:
        """The address of this sentinel, as ``host:port``."""
        return f"{self.host}:{self.port}"


class RedisSentinelCluster(Cluster[Server]):
    """A Redis primary, ``replicas`` replicas and ``sentinels`` Sentinels watching master ``name``.

    ``nodes`` is ``[primary, *replicas, *sentinels]``; ``url`` is
    ``redis://s1?sentinel=<name>&sentinel_fallback=s2,s3``: clients resolve the master through
    the sentinels and follow a failover.
    """

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, name: str = "coordactors", host: str = "127.0.0.1") -> None:
        ports = free_ports(1 + replicas + sentinels, host)
        self.master_name = name
        self.first_primary = RedisServer(host=host, port=ports[0])  # the master until a failover
        self.replicas = [RedisReplica(self.first_primary, host=host, port=port) for port in ports[1:1 + replicas]]
        quorum = sentinels // 2 + 1
        self.sentinels = [SentinelServer(name, self.first_primary, quorum, host=host, port=port) for port in ports[1 + replicas:]]
        self.nodes = [self.first_primary, *self.replicas, *self.sentinels]

    def start(self) -> Self:
        """Start the primary, then the replicas (until in sync), then the sentinels."""
        try:
            self.first_primary.start()
            self._start_together(range(1, 1 + len(self.replicas)))
            self.wait_replicated(self.START_TIMEOUT)
            self._start_together(range(1 + len(self.replicas), len(self.nodes)))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        """``redis://`` through the sentinels."""
        first, *rest = self.sentinels
        fallback = f"&sentinel_fallback={','.join(s.url for s in rest)}" if rest else ""
        return f"redis://{first.url}?sentinel={self.master_name}{fallback}"

    def master_index(self, timeout: float = 1.0) -> int | None:
        """The index in ``nodes`` of the master a majority of running sentinels name now."""
        votes: dict[tuple[str, int], int] = {}
        for sentinel in self.sentinels:
            if sentinel.is_running and not sentinel.is_paused:
                try:
                    address = sentinel.master_address(timeout)
                except OSError:
                    continue
                if address is not None:
                    votes[address] = votes.get(address, 0) + 1
        if not votes:
            return None
        (host, port), count = max(votes.items(), key=lambda item: item[1])
        if count <= len(self.sentinels) // 2:
            return None
        return next((i for i, node in enumerate(self.nodes) if node.host == host and node.port == port), None)

    def primary(self) -> int | None:
        """The master the sentinels agree on."""
        return self.master_index()

    def wait_for_master(self, index: int | None = None, *, not_index: int | None = None, timeout: float = 30.0) -> int:
        """Wait until the sentinels agree on a master (``index``, or any but ``not_index``); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.master_index()
            if found is not None and (index is None or found == index) and found != not_index:
                return found
            time.sleep(0.05)
        raise ServerStartError(f"sentinels did not agree on a new master within {timeout}s: {self!r}")

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running replica reports its link to the primary up."""
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            while not _replica_link_up(replica):
                if time.monotonic() > deadline:
                    raise ServerStartError(f"{replica!r} did not sync with its primary within {timeout}s")
                time.sleep(0.05)


def _replica_link_up(replica: RedisServer) -> bool:
    request = b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n"
    try:
        with socket.create_connection((replica.host, replica.port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            sock.sendall(request)
            data = b""
            while b"master_link_status" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"role:master" in data:
                    return True
    except OSError:
        return False
    return b"master_link_status:up" in data

