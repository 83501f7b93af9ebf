"""Fixtures: one behaviour suite, parametrised over every backend.

Each row of BACKENDS names a backend and how to give a test a private place
on it (a fresh memory namespace, temp directory, IPC name...).  Backends that
need a server add rows whose fixture starts the server; the tests do not
change.
"""

from __future__ import annotations

import importlib.util
import uuid
from typing import Any, Callable, Iterator

import pytest

import coordactors
from coordactors.testing import EventRecorder


def _memory_url(request: Any, tmp_path: Any) -> Iterator[str]:
    yield f"memory://t{uuid.uuid4().hex[:12]}"


def _zake_url(request: Any, tmp_path: Any) -> Iterator[str]:
    yield f"zake://t{uuid.uuid4().hex[:12]}"


def _file_url(request: Any, tmp_path: Any) -> Iterator[str]:
    yield f"file://{tmp_path}/coord"


def _ipc_url(request: Any, tmp_path: Any) -> Iterator[str]:
    from coordactors.backend_actors.ipc import destroy

    name = f"t{uuid.uuid4().hex[:12]}"
    try:
        yield f"ipc://{name}?mutex_timeout=0.2"
    finally:
        destroy(name)


def _on_server(fixture: str, scheme: str | None = None, attribute: str = "url") -> Callable[[Any, Any], Iterator[str]]:
    """A row for a networked backend: the session-wide server, a private namespace per test."""

    def url(request: Any, tmp_path: Any) -> Iterator[str]:
        server_url = getattr(request.getfixturevalue(fixture), attribute)
        base = server_url if scheme is None else scheme + "://" + server_url.partition("://")[2]
        yield f"{base}{'&' if '?' in base else '?'}namespace=t{uuid.uuid4().hex[:12]}"

    return url


HARNESS = importlib.util.find_spec("coordactors.testing.pytest_plugin") is not None
if HARNESS:
    pytest_plugins = ["coordactors.testing.pytest_plugin"]


def _built(module: str) -> bool:
    return HARNESS and importlib.util.find_spec(f"coordactors.backend_actors.{module}") is not None

BACKENDS: list[Any] = [
    pytest.param(_memory_url, id="memory"),
    pytest.param(_zake_url, id="zake"),
    pytest.param(_file_url, id="file"),
    pytest.param(_ipc_url, id="ipc"),
]
NETWORKED = [
    # id, server fixture, backend module, scheme override, server attribute
    ("redis", "redis_server", "redis", None, "url"),
    ("zookeeper", "zookeeper_server", "zookeeper", None, "url"),
    ("kazoo", "zookeeper_server", "zookeeper", "kazoo", "url"),
    ("memcached", "memcached_server", "memcached", None, "url"),
    ("postgresql", "postgres_server", "postgresql", None, "url"),
    ("mysql", "mariadb_server", "mysql", None, "url"),
    ("etcd", "etcd_server", "etcd", None, "url"),
    ("etcd3", "etcd_server", "etcd3", None, "url_v3"),
    ("consul", "consul_agent", "consul", None, "url"),
]
BACKENDS += [
    pytest.param(_on_server(fixture, scheme, attribute), id=name)
    for name, fixture, module, scheme, attribute in NETWORKED
    if _built(module)
]

CROSS_PROCESS_BACKENDS: list[Any] = [
    pytest.param(_file_url, id="file"),
    pytest.param(_ipc_url, id="ipc"),
]


@pytest.fixture(params=BACKENDS)
def backend_url(request: Any, tmp_path: Any) -> Iterator[str]:
    """A URL naming a private, empty place on one backend."""
    yield from request.param(request, tmp_path)


@pytest.fixture(params=CROSS_PROCESS_BACKENDS)
def cross_process_url(request: Any, tmp_path: Any) -> Iterator[str]:
    """A URL on a backend that coordinates separate processes."""
    yield from request.param(request, tmp_path)


@pytest.fixture
def coordinators() -> Iterator[Callable[..., coordactors.Coordinator]]:
    """Make coordinators on any URL; all are stopped after the test."""
    made: list[coordactors.Coordinator] = []

    def make(member_id: str, url: str, **kwargs: Any) -> coordactors.Coordinator:
        made.append(coordactors.connect(url, member_id, **kwargs))
        return made[-1]

    yield make
    for coordinator in made:
        coordinator.stop()


@pytest.fixture
def connect(backend_url: str, coordinators: Callable[..., coordactors.Coordinator]) -> Callable[..., coordactors.Coordinator]:
    """Make coordinators on ``backend_url`` (or the URL given); all are stopped after the test."""
    count = iter(range(1_000_000))

    def make(member_id: str | None = None, url: str | None = None, **kwargs: Any) -> coordactors.Coordinator:
        return coordinators(member_id or f"member-{next(count)}", url or backend_url, **kwargs)

    return make


@pytest.fixture
def recorder() -> EventRecorder:
    """A fresh EventRecorder."""
    return EventRecorder()
