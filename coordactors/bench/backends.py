"""The backends a run covers: their servers, URLs and private namespaces.

``Backends.start(names)`` starts what each needs with the real-server harness
(:mod:`coordactors.testing.servers`; Consul is the in-repo fake agent, as in
the tests, because its server cannot be installed here) or takes the URLs the
user gave, and ``stop()`` stops everything it started.  Every benchmark asks
for a fresh namespace, so runs never see each other's groups or locks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any

import attrs

from coordactors.urls import parse_url

logger = logging.getLogger(__name__)

__all__ = ["ALL_BACKENDS", "Backend", "Backends", "LOCAL_BACKENDS", "PUSH_BACKENDS", "ROUND_TRIP_BACKENDS", "SHARED_GAIN_BACKENDS"]

ALL_BACKENDS = ("memory", "file", "ipc", "redis", "zookeeper", "memcached", "postgresql", "mysql", "etcd", "etcd3", "consul")
ROUND_TRIP_BACKENDS = frozenset({"postgresql", "mysql", "zookeeper", "etcd", "etcd3", "consul"})
"""Where the issue expects one caller through coordactors to beat tooz: the backend round trip dominates."""
SHARED_GAIN_BACKENDS = frozenset({"redis", "postgresql", "mysql", "zookeeper", "etcd"})
"""Where 16 callers sharing one coordinator must reach 3x the one-caller throughput."""
PUSH_BACKENDS = frozenset({"memory", "redis", "zookeeper", "postgresql", "etcd", "etcd3", "consul"})
LOCAL_BACKENDS = frozenset({"memory", "file", "ipc"})
"""No server and no round trip: the heartbeat's cost cannot be counted in round trips."""

_SCHEMES = {
    "redis": "redis", "rediss": "redis", "zookeeper": "zookeeper", "kazoo": "zookeeper", "memcached": "memcached",
    "postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "etcd": "etcd", "etcd3+http": "etcd3",
    "etcd3": "etcd3", "consul": "consul", "memory": "memory", "zake": "memory", "file": "file", "ipc": "ipc",
}


def backend_of(url: str) -> str:
    """The backend name of ``url`` (``redis``, ``etcd3``...)."""
    scheme = url.partition("://")[0].lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"no backend for the URL scheme {scheme!r}")
    return _SCHEMES[scheme]


@attrs.define
class Backend:
    """One backend under test: where it is and how to make private URLs on it."""

    name: str
    base_url: str
    """The server's URL as coordactors takes it (no namespace)."""
    tooz_url: str | None
    """The same server as tooz 8.1 names it, or None where tooz has no driver here."""
    note: str = ""
    _scratch: list[str] = attrs.field(factory=list)
    _directories: dict[str, str] = attrs.field(factory=dict)

    def url(self, namespace: str, **options: Any) -> str:
        """A coordactors URL private to ``namespace`` with extra query ``options``."""
        if self.name == "memory":
            url = f"memory://{namespace}"
        elif self.name == "file":
            if namespace not in self._directories:
                self._directories[namespace] = tempfile.mkdtemp(prefix=f"coordactors-bench-{namespace}-")
                self._scratch.append(self._directories[namespace])
            url = f"file://{self._directories[namespace]}/coord"
        elif self.name == "ipc":
            if "ipc:" + namespace not in self._scratch:
                self._scratch.append("ipc:" + namespace)
            url = f"ipc://{namespace}"
        else:
            base = self.base_url
            url = f"{base}{'&' if '?' in base else '?'}namespace={namespace}"
        if options:
            query = "&".join(f"{k}={v}" for k, v in options.items())
            url += ("&" if "?" in url else "?") + query
        return url

    def private_tooz_url(self, namespace: str) -> str | None:
        """A tooz URL private to ``namespace`` (where tooz can keep apart), or the shared one."""
        if self.tooz_url is None:
            return None
        if self.name == "file":
            directory = tempfile.mkdtemp(prefix=f"tooz-bench-{namespace}-")
            self._scratch.append(directory)
            return f"file://{directory}"
        return self.tooz_url

    @property
    def session_class(self) -> Any:
        """The coordactors SessionActor class of this backend."""
        return parse_url(self.url("probe"))[0]

    def cleanup(self) -> None:
        """Remove the scratch directories and IPC objects made for this backend."""
        for item in self._scratch:
            if item.startswith("ipc:"):
                from coordactors.backend_actors.ipc import destroy

                with contextlib.suppress(Exception):
                    destroy(item[4:])
            else:
                shutil.rmtree(item, ignore_errors=True)
        self._scratch.clear()


def namespace() -> str:
    """A fresh namespace name."""
    return "b" + uuid.uuid4().hex[:10]


class Backends:
    """Starts (or adopts) the servers of a run and stops what it started."""

    def __init__(self) -> None:
        self._started: list[Any] = []
        self.backends: list[Backend] = []
        self.skipped: dict[str, str] = {}

    def adopt(self, url: str) -> None:
        """Benchmark the server at ``url`` (given on the command line)."""
        name = backend_of(url)
        base, _, query = url.partition("?")
        # The benchmark picks its own namespaces; keep the URL's other options.
        kept = "&".join(part for part in query.split("&") if part and not part.startswith("namespace="))
        url = f"{base}?{kept}" if kept else base
        if any(b.name == name for b in self.backends):
            raise ValueError(f"two URLs for the {name} backend: give one per backend")
        self.backends.append(Backend(name, url, _tooz_url_for(name, url), note="server given on the command line"))

    def start(self, names: list[str]) -> None:
        """Start (or set up) each backend of ``names``; record why one could not be."""
        for name in names:
            try:
                self.backends.append(self._start_one(name))
            except Exception as exc:  # noqa: BLE001 - a missing server skips its backend, visibly
                logger.warning("backend %s skipped: %s", name, exc)
                self.skipped[name] = f"{type(exc).__name__}: {exc}"

    def _start_one(self, name: str) -> Backend:
        from coordactors.testing import servers

        if name == "memory":
            return Backend(name, "memory://", None, note="in-process; tooz's zake driver needs the zake package, not installed")
        if name == "file":
            return Backend(name, "file:///", "file:///", note="local directory")
        if name == "ipc":
            return Backend(name, "ipc://", "ipc://", note="POSIX semaphores and shared memory")
        if name == "consul":
            from coordactors.testing.fake_consul import FakeConsulProcess

            agent = FakeConsulProcess().start()
            self._started.append(agent)
            return Backend(name, agent.url, agent.url,
                           note="in-repo fake Consul agent, in a process of its own (Consul's server cannot be installed here)")
        server_class = {
            "redis": servers.RedisServer, "zookeeper": servers.ZooKeeperServer, "memcached": servers.MemcachedServer,
            "postgresql": servers.PostgresServer, "mysql": servers.MariaDBServer, "etcd": servers.EtcdServer, "etcd3": servers.EtcdServer,
        }[name]
        server = next((s for s in self._started if type(s) is server_class), None)
        if server is None:
            server = server_class().start()
            self._started.append(server)
        url = server.url_v3 if name == "etcd3" else server.url
        return Backend(name, url, _tooz_url_for(name, url), note=f"private {server_class.__name__[:-6]} started by the harness")

    def stop(self) -> None:
        """Stop every server this run started and remove scratch data."""
        for backend in self.backends:
            backend.cleanup()
        while self._started:
            server = self._started.pop()
            try:
                server.stop()
            except Exception:  # noqa: BLE001
                logger.warning("could not stop %r", server, exc_info=True)

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _tooz_url_for(name: str, url: str) -> str | None:
    rest = url.partition("://")[2].partition("?")[0]
    return {
        "redis": f"redis://{rest}",
        "zookeeper": f"kazoo://{rest}",
        "memcached": f"memcached://{rest}",
        "postgresql": f"postgresql://{rest}",
        "mysql": f"mysql://{rest}",
        "etcd": f"etcd://{rest}",
        "etcd3": f"etcd3+http://{rest}",
        "consul": f"consul://{rest}",
        "file": "file:///",
        "ipc": "ipc://",
    }.get(name)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    with contextlib.suppress(OSError):
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            info["memory"] = meminfo.readline().split(":", 1)[1].strip()
    return info
