"""pytest fixtures that start real servers once per test session.

Register the plugin in the rootdir ``conftest.py``::

    pytest_plugins = ["coordactors.testing.pytest_plugin"]

or import the fixtures a test module needs (``from coordactors.testing.pytest_plugin
import redis_server``).  Fixtures: ``redis_server``, ``memcached_server``,
``zookeeper_server``, ``etcd_server``, ``postgres_server``, ``mariadb_server``;
each yields a started :class:`coordactors.testing.servers.Server` (``.url``,
``.host``, ``.port``, ``.kill()``, ``.restart()``...) and stops it at the end of
the session.  A test that kills or pauses the server must leave it running
(``restart()`` / ``resume()``) for the tests after it.  Give each test its own
key prefix, znode path or database: the server is shared.

When a server's binary is missing, the fixture skips the test, with the
install command in the reason -- unless the environment variable ``CI`` is
``true``, where it fails: CI must never pass by skipping every networked test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar, cast

import pytest

from coordactors.testing.fake_consul import FakeConsulAgent
from coordactors.testing.servers import (
    EtcdServer,
    MariaDBServer,
    MemcachedServer,
    PostgresServer,
    RedisServer,
    Server,
    ServerUnavailable,
    ZooKeeperServer,
    stop_all,
)

__all__ = [
    "etcd_server",
    "mariadb_server",
    "memcached_server",
    "postgres_server",
    "redis_server",
    "start_or_skip",
    "zookeeper_server",
]

S = TypeVar("S", bound=Server)

# One server per class for the whole process, whichever fixture definition asks (the plugin's, or a
# copy imported into a test module): pytest caches each definition separately.
_shared: dict[type[Server], Server] = {}


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``), where a missing server is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() == "true"


def start_or_skip(server: S) -> S:
    """Start ``server``; if it is not installed, skip the calling test -- or fail it when ``CI=true``.

    Raises:
        pytest.skip.Exception / pytest.fail.Exception: the server's binary is missing.
        coordactors.testing.servers.ServerStartError: it is installed but did not start.
    """
    try:
        server.start()
        return server
    except ServerUnavailable as exc:
        if in_ci():
            pytest.fail(f"CI=true, so a missing server is a failure: ServerUnavailable: {exc}", pytrace=False)
        pytest.skip(f"{exc}")


def _session_server(server_class: type[S]) -> Iterator[S]:
    if server_class not in _shared:
        _shared[server_class] = server_class()
    server = cast(S, _shared[server_class])
    start_or_skip(server)  # also brings back a shared server that a test left stopped
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session (``redis_server.url`` is ``redis://127.0.0.1:P``)."""
    yield from _session_server(RedisServer)


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """A private memcached for the session (``memcached://127.0.0.1:P``)."""
    yield from _session_server(MemcachedServer)


@pytest.fixture(scope="session")
def zookeeper_server() -> Iterator[ZooKeeperServer]:
    """A private standalone ZooKeeper for the session (``zookeeper://127.0.0.1:P``)."""
    yield from _session_server(ZooKeeperServer)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """A private etcd for the session (``url``: ``etcd://127.0.0.1:P``; ``url_v3``: ``etcd3+http://127.0.0.1:P``)."""
    yield from _session_server(EtcdServer)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL for the session (``postgresql://postgres@127.0.0.1:P/postgres``)."""
    yield from _session_server(PostgresServer)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A private MariaDB for the session (``mysql://root@127.0.0.1:P/test``)."""
    yield from _session_server(MariaDBServer)


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[FakeConsulAgent]:
    """An in-process fake Consul agent for the session (``consul://127.0.0.1:P``; see fake_consul for its limits)."""
    with FakeConsulAgent() as agent:
        yield agent


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop every server this process started and left running, whatever the tests did."""
    stop_all()
