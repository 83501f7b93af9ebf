"""Several servers behind one URL: parsing ``h1:p1,h2:p2`` and choosing a live one.

``zookeeper://``, ``etcd://`` and ``etcd3+http://`` accept a comma-separated
list of servers.  kazoo fails over by itself; for etcd, :class:`Endpoints`
keeps the one in use and skips, for a backoff, one that just failed.
"""

from __future__ import annotations

import threading
import time

from coordactors import errors
from coordactors.urls import SessionOptions

__all__ = ["Endpoints", "url_hosts"]


def url_hosts(options: SessionOptions, default_port: int) -> list[tuple[str, int]]:
    """The URL's servers as ``(host, port)`` pairs (``default_port`` where none is given).

    Taken from the URL text: urllib's hostname and port see only one host.
    IPv6 addresses keep their brackets (``[::1]``), as ``host:port`` strings need.
    """
    netloc = options.redacted.partition("://")[2]
    for stop in "/?#":
        netloc = netloc.partition(stop)[0]
    netloc = netloc.rpartition("@")[2]
    hosts = []
    for part in netloc.split(","):
        part = part.strip()
        if part.startswith("["):  # [v6]:port
            host, _, rest = part[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
            host = f"[{host}]"
        elif part.count(":") == 1:
            host, _, port = part.partition(":")
        else:
            host, port = part, ""
        if not host or host == "[]" or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise errors.InvalidArgument(f"malformed host {part!r} in {options.redacted!r}: expected host[:port][,host[:port]...]")
        hosts.append((host, int(port) if port else default_port))
    return hosts


class Endpoints:
    """The servers of one URL, the one in use, and when each that failed may be tried again.

    Thread-safe: a session's request connection and its event reader share one.
    A failed server is skipped for ``backoff_initial`` seconds, doubling on each
    further failure up to ``backoff_max``; a success clears its record.
    """

    def __init__(self, hosts: list[tuple[str, int]], backoff_initial: float, backoff_max: float) -> None:
        if not hosts:
            raise ValueError("no hosts")
        self.hosts = list(hosts)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._current = 0
        self._failures: dict[int, tuple[int, float]] = {}  # index -> (consecutive failures, retry at)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.hosts)

    def current(self) -> tuple[str, int]:
        """The server in use."""
        with self._lock:
            return self.hosts[self._current]

    def failed(self, host: tuple[str, int]) -> None:
        """``host`` failed: back it off and move on to the next server that may be tried."""
        with self._lock:
            index = self.hosts.index(host)
            count = self._failures.get(index, (0, 0.0))[0] + 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (count - 1))
            self._failures[index] = (count, time.monotonic() + delay)
            if index == self._current:
                self._current = self._next_index(index)

    def succeeded(self, host: tuple[str, int]) -> None:
        """``host`` answered: forget its failures."""
        with self._lock:
            self._failures.pop(self.hosts.index(host), None)

    def rotation(self) -> list[tuple[str, int]]:
        """Every server, the one in use first, then those not backed off, then the rest."""
        with self._lock:
            now = time.monotonic()
            order = [(self._current + step) % len(self.hosts) for step in range(len(self.hosts))]
            ready = [i for i in order if self._failures.get(i, (0, 0.0))[1] <= now]
            waiting = [i for i in order if i not in ready]
            return [self.hosts[i] for i in ready + waiting]

    def use(self, host: tuple[str, int]) -> None:
        """Make ``host`` the server in use."""
        with self._lock:
            self._current = self.hosts.index(host)

    def _next_index(self, index: int) -> int:
        now = time.monotonic()
        for step in range(1, len(self.hosts) + 1):
            candidate = (index + step) % len(self.hosts)
            if self._failures.get(candidate, (0, 0.0))[1] <= now:
                return candidate
        return (index + 1) % len(self.hosts)

    def __repr__(self) -> str:
        return f"<Endpoints {','.join(f'{h}:{p}' for h, p in self.hosts)} using {self.current()}>"
