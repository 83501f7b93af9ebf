"""The real-server harness: each server starts privately, answers its real client, survives faults, stops clean.

One server per type serves the whole module (the session fixtures); tests that kill, pause or stop it
leave it running again for the tests after them.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from coordactors.testing import servers
from coordactors.testing.pytest_plugin import (  # noqa: F401  (fixtures, used by name)
    etcd_server,
    mariadb_server,
    memcached_server,
    postgres_server,
    redis_server,
    start_or_skip,
    zookeeper_server,
)
from coordactors.testing.servers import (
    EtcdServer,
    MariaDBServer,
    MemcachedServer,
    PostgresServer,
    RedisServer,
    Server,
    ServerStartError,
    ServerUnavailable,
    ZooKeeperServer,
)

ALL_CLASSES = [RedisServer, MemcachedServer, ZooKeeperServer, EtcdServer, PostgresServer, MariaDBServer]


# -- real clients -----------------------------------------------------------------------------------


def _redis(server: Server) -> Any:
    import redis

    return redis.Redis(server.host, server.port, socket_timeout=5)


def _redis_check(server: Server) -> None:
    client = _redis(server)
    try:
        assert client.ping() is True
    finally:
        client.close()


def _redis_write(server: Server, key: str, value: str) -> None:
    client = _redis(server)
    try:
        client.set(key, value)
    finally:
        client.close()


def _redis_read(server: Server, key: str) -> str | None:
    client = _redis(server)
    try:
        value = client.get(key)
        return None if value is None else value.decode()
    finally:
        client.close()


def _memcached(server: Server) -> Any:
    from pymemcache.client.base import Client  # type: ignore[import-untyped]

    return Client((server.host, server.port), connect_timeout=5, timeout=5)


def _memcached_write(server: Server, key: str, value: str) -> None:
    client = _memcached(server)
    try:
        assert client.set(key, value.encode(), noreply=False)
    finally:
        client.close()


def _memcached_read(server: Server, key: str) -> str | None:
    client = _memcached(server)
    try:
        value = client.get(key)
        return None if value is None else value.decode()
    finally:
        client.close()


def _memcached_check(server: Server) -> None:
    key = f"check-{uuid.uuid4().hex}"
    _memcached_write(server, key, "hello")
    assert _memcached_read(server, key) == "hello"


def _kazoo(server: Server) -> Any:
    from kazoo.client import KazooClient  # type: ignore[import-untyped]

    client = KazooClient(hosts=f"{server.host}:{server.port}", timeout=5)
    client.start(timeout=10)
    return client


def _zookeeper_write(server: Server, key: str, value: str) -> None:
    client = _kazoo(server)
    try:
        client.create(f"/harness/{key}", value.encode(), makepath=True)
    finally:
        client.stop()
        client.close()


def _zookeeper_read(server: Server, key: str) -> str | None:
    from kazoo.exceptions import NoNodeError  # type: ignore[import-untyped]

    client = _kazoo(server)
    try:
        return client.get(f"/harness/{key}")[0].decode()
    except NoNodeError:
        return None
    finally:
        client.stop()
        client.close()


def _zookeeper_check(server: Server) -> None:
    key = f"check-{uuid.uuid4().hex}"
    _zookeeper_write(server, key, "hello")
    assert _zookeeper_read(server, key) == "hello"


def _etcd3(server: Server) -> Any:
    import etcd3gw

    return etcd3gw.client(host=server.host, port=server.port, timeout=5)


def _etcd_write(server: Server, key: str, value: str) -> None:
    assert _etcd3(server).put(f"/harness/{key}", value)


def _etcd_read(server: Server, key: str) -> str | None:
    values = _etcd3(server).get(f"/harness/{key}")  # a v3 range call through the JSON gateway
    return values[0].decode() if values else None


def _etcd_check(server: Server) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request("GET", "/v2/keys")
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["action"] == "get"
    finally:
        connection.close()
    key = f"check-{uuid.uuid4().hex}"
    _etcd_write(server, key, "hello")
    assert _etcd_read(server, key) == "hello"


def _postgres_sql(server: Server, sql: str, *args: Any) -> Any:
    import psycopg2  # type: ignore[import-untyped]

    connection = psycopg2.connect(host=server.host, port=server.port, user="postgres", dbname="postgres", connect_timeout=5)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall() if cursor.description else None
    finally:
        connection.close()


def _postgres_check(server: Server) -> None:
    assert _postgres_sql(server, "SELECT 1") == [(1,)]


def _postgres_write(server: Server, key: str, value: str) -> None:
    _postgres_sql(server, "CREATE TABLE IF NOT EXISTS harness (k text PRIMARY KEY, v text)")
    _postgres_sql(server, "INSERT INTO harness VALUES (%s, %s)", key, value)


def _postgres_read(server: Server, key: str) -> str | None:
    rows = _postgres_sql(server, "SELECT v FROM harness WHERE k = %s", key)
    return rows[0][0] if rows else None


def _mysql_sql(server: Server, sql: str, *args: Any) -> Any:
    import pymysql  # type: ignore[import-untyped]

    connection = pymysql.connect(host=server.host, port=server.port, user="root", password="", database="test",
                                 connect_timeout=5, read_timeout=5, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        connection.close()


def _mysql_check(server: Server) -> None:
    assert _mysql_sql(server, "SELECT 1") == ((1,),)


def _mysql_write(server: Server, key: str, value: str) -> None:
    _mysql_sql(server, "CREATE TABLE IF NOT EXISTS harness (k VARCHAR(64) PRIMARY KEY, v TEXT) ENGINE=InnoDB")
    _mysql_sql(server, "INSERT INTO harness VALUES (%s, %s)", key, value)


def _mysql_read(server: Server, key: str) -> str | None:
    rows = _mysql_sql(server, "SELECT v FROM harness WHERE k = %s", key)
    return rows[0][0] if rows else None


@attrs.frozen
class Kind:
    """How to reach one type of server with its real client."""

    fixture: str
    url: str  # the URL's shape, with {port}
    check: Callable[[Server], None]
    write: Callable[[Server, str, str], None]
    read: Callable[[Server, str], str | None]
    durable: bool  # whether written data survives a SIGKILL of the server


KINDS = [
    pytest.param(Kind("redis_server", "redis://127.0.0.1:{port}", _redis_check, _redis_write, _redis_read, False), id="redis"),
    pytest.param(Kind("memcached_server", "memcached://127.0.0.1:{port}", _memcached_check, _memcached_write, _memcached_read, False),
                 id="memcached"),
    pytest.param(Kind("zookeeper_server", "zookeeper://127.0.0.1:{port}", _zookeeper_check, _zookeeper_write, _zookeeper_read, True),
                 id="zookeeper"),
    pytest.param(Kind("etcd_server", "etcd://127.0.0.1:{port}", _etcd_check, _etcd_write, _etcd_read, True), id="etcd"),
    pytest.param(Kind("postgres_server", "postgresql://postgres@127.0.0.1:{port}/postgres", _postgres_check, _postgres_write,
                      _postgres_read, True), id="postgresql"),
    pytest.param(Kind("mariadb_server", "mysql://root@127.0.0.1:{port}/test", _mysql_check, _mysql_write, _mysql_read, True),
                 id="mariadb"),
]


@pytest.fixture(params=KINDS)
def kind(request: Any) -> Kind:
    """One type of server, and its real client."""
    return request.param


@pytest.fixture
def server(kind: Kind, request: Any) -> Server:
    """The session's server of that type, running."""
    server: Server = request.getfixturevalue(kind.fixture)
    assert server.is_running and not server.is_paused
    return server


# -- process helpers --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, or no process at all, is not)."""
    return servers._state(pid) not in (None, "Z")


def _family(pid: int) -> list[int]:
    """``pid`` and its live descendants (PostgreSQL's backends, which leave the process group)."""
    return [pid, *(child for child in servers._descendants(pid) if _alive(child))]


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- every server -----------------------------------------------------------------------------------


def test_server_answers_its_real_client_on_a_private_port(kind: Kind, server: Server) -> None:
    assert server.url == kind.url.format(port=server.port)
    assert server.host == "127.0.0.1"
    assert server.port not in (5432, 3306, 6379, 11211, 2181, 2379)
    assert server.directory is not None and os.path.isfile(os.path.join(server.directory, "server.log"))
    assert server.pid is not None and _alive(server.pid)
    kind.check(server)
    assert server.ping()


def test_killed_server_restarts_on_the_same_port_and_keeps_answering(kind: Kind, server: Server) -> None:
    key = uuid.uuid4().hex
    kind.write(server, key, "before the crash")
    port, pid, directory = server.port, server.pid, server.directory
    assert pid is not None
    family = _family(pid)

    server.kill()
    assert not any(_alive(member) for member in family)
    assert server.pid is None and not server.ping(timeout=0.2)
    assert directory is not None and os.path.isdir(directory)  # the data is kept

    server.restart()
    assert (server.port, server.directory) == (port, directory)
    assert server.pid not in (None, pid)
    kind.check(server)
    if kind.durable:
        assert kind.read(server, key) == "before the crash"


def test_paused_server_answers_nothing_until_resumed(kind: Kind, server: Server) -> None:
    kind.check(server)
    assert server.pid is not None
    server.pause()
    try:
        assert server.is_paused and server.is_running
        # Every process stopped, PostgreSQL's checkpointer, walwriter... too (they leave the process group).
        assert {servers._state(member) for member in _family(server.pid)} == {"T"}
        started = time.monotonic()
        assert not server.ping(timeout=0.3)
        assert time.monotonic() - started < 2.5
    finally:
        server.resume()
    assert not server.is_paused
    kind.check(server)


def test_stopped_server_leaves_no_process_and_no_directory(kind: Kind, server: Server) -> None:
    pid, port, directory = server.pid, server.port, server.directory
    assert pid is not None and directory is not None
    family = _family(pid)
    server.stop()
    assert not any(_alive(member) for member in family)
    assert not os.path.exists(directory)
    assert server.pid is None and server.directory is None and not server.is_running
    server.stop()  # twice is harmless

    server.start()  # the session's later tests still need it: same port, fresh data
    assert server.port == port and server.directory != directory
    kind.check(server)


# -- the harness itself (on redis: it starts in ~30 ms) -----------------------------------------------


@pytest.mark.parametrize("server_class", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_missing_binary_is_server_unavailable_naming_the_package(server_class: type[Server], monkeypatch: Any) -> None:
    monkeypatch.setattr(server_class, "executable", f"/nonexistent/{server_class.executable}")
    server = server_class()
    with pytest.raises(ServerUnavailable) as raised:
        server.start()
    message = str(raised.value)
    assert isinstance(raised.value, RuntimeError)
    assert f"apt-get install -y {server_class.PACKAGE}" in message
    assert "scripts/install-test-deps" in message
    assert server.directory is None  # nothing made, nothing to clean


def test_missing_server_skips_locally_and_fails_under_ci(monkeypatch: Any) -> None:
    monkeypatch.setattr(RedisServer, "executable", "/nonexistent/redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install-test-deps"):
        start_or_skip(RedisServer())
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y redis-server"):
        start_or_skip(RedisServer())


def test_session_fixture_fails_a_ci_run_when_the_server_is_missing(tmp_path: Any) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        from coordactors.testing.servers import RedisServer
        RedisServer.executable = "/nonexistent/redis-server"
    """))
    (tmp_path / "test_uses_redis.py").write_text("def test_uses_redis(redis_server):\n    pass\n")

    def run(ci: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CI": ci}
        argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "coordactors.testing.pytest_plugin"]
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)

    in_ci = run("true")
    assert in_ci.returncode == 1, in_ci.stdout + in_ci.stderr
    assert "1 error" in in_ci.stdout and "ServerUnavailable" in in_ci.stdout and "install-test-deps" in in_ci.stdout

    on_a_laptop = run("")
    assert on_a_laptop.returncode == 0, on_a_laptop.stdout + on_a_laptop.stderr
    assert "1 skipped" in on_a_laptop.stdout and "apt-get install -y redis-server" in on_a_laptop.stdout


def test_context_manager_starts_and_stops_a_server() -> None:
    with RedisServer() as server:
        pid, directory = server.pid, server.directory
        _redis_check(server)
    assert pid is not None and directory is not None
    assert not _alive(pid) and not os.path.exists(directory)
    assert server not in servers._registry.values()


def test_readiness_timeout_names_the_server_and_shows_its_log(monkeypatch: Any) -> None:
    monkeypatch.setattr(RedisServer, "_probe", lambda self, timeout: False)
    server = RedisServer(start_timeout=0.5)
    with pytest.raises(ServerStartError) as raised:
        server.start()
    message = str(raised.value)
    assert f"redis on port {server.port} did not answer within 0.5s" in message
    assert "Ready to accept connections" in message  # redis's own log line
    assert not server.is_running  # the process that never became ready was killed
    directory = server.directory
    server.stop()
    assert directory is not None and not os.path.exists(directory)


def test_a_port_taken_before_the_server_binds_it_is_retried(monkeypatch: Any) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))  # bound, not listening: the server can't bind it, connects are refused
    taken = squatter.getsockname()[1]
    real_free_ports = servers.free_ports
    offers = iter([[taken]])
    monkeypatch.setattr(servers, "free_ports", lambda count=1, host="127.0.0.1": next(offers, None) or real_free_ports(count, host))
    try:
        with RedisServer() as server:
            assert server.port != taken
            _redis_check(server)
            with open(server.log_path or "", encoding="utf-8") as log:
                assert "Address already in use" in log.read()
    finally:
        squatter.close()


SCRIPT = """
import os, sys
from coordactors.testing.servers import RedisServer
server = RedisServer().start()
print(server.pid, server.directory, flush=True)
if sys.argv[1] == "crash":
    os.kill(os.getpid(), 9)
raise SystemExit("a test run that fails")
"""


def test_servers_left_running_are_stopped_when_the_test_process_exits() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, "exit"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    pid, directory = done.stdout.split()
    assert not _alive(int(pid)) and not os.path.exists(directory)  # atexit stopped it


def test_servers_die_with_a_killed_test_process() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, "crash"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr
    pid, directory = done.stdout.split()
    try:
        assert _wait_until(lambda: not _alive(int(pid)))  # SIGKILLed by the kernel (parent-death signal)
    finally:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)  # no atexit ran: the directory is left
