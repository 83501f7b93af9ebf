"""Hygiene: secrets stay secret; connect/stop cycles leak no thread, descriptor or memory;
foreign data in the backend's place is refused and left alone."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import traceback
import uuid

import pytest
from helpers import wait_until

import coordactors
from coordactors import errors
from coordactors.messages import Acquire, Release

SECRET = "Sup3rS3cretPw"


def _closed_port() -> int:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        return int(placeholder.getsockname()[1])


def _everything_shown(exc: BaseException) -> str:
    """The exception as a user could ever see it: str, repr, the whole chained traceback, its attributes."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(vars(exc))])


URL_TEMPLATES = [
    "redis://user:{secret}@127.0.0.1:{port}?connect_timeout=0.5",
    "redis://127.0.0.1:{port}?password={secret}&connect_timeout=0.5",
    "rediss://:{secret}@127.0.0.1:{port}?connect_timeout=0.5",
    "postgresql://postgres:{secret}@127.0.0.1:{port}/postgres?connect_timeout=0.5",
    "mysql://root:{secret}@127.0.0.1:{port}/test?connect_timeout=0.5",
    "etcd://user:{secret}@127.0.0.1:{port}?connect_timeout=0.5",
    "etcd3+http://user:{secret}@127.0.0.1:{port}?connect_timeout=0.5",
    "consul://127.0.0.1:{port}?token={secret}&connect_timeout=0.5",
    "zookeeper://user:{secret}@127.0.0.1:{port}?connect_timeout=0.5",
    "memcached://user:{secret}@127.0.0.1:{port}?connect_timeout=0.5",
    "redis://user:{secret}@127.0.0.1:{port}?connect_timeout=0.5&no_such_option=1",
    "postgresql://postgres:{secret}@127.0.0.1:99999/postgres",
    "redis://user:{secret}@127.0.0.1:{port}#fragment",
    "redis://user:{secret}@[::1:{port}",
]


@pytest.mark.parametrize("template", URL_TEMPLATES)
def test_a_password_or_token_never_shows_in_errors_or_logs(template: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = template.format(secret=SECRET, port=_closed_port())
    with pytest.raises(errors.CoordinationError) as caught:
        coordactors.connect(url, "a").stop()  # nothing listens there, or the URL is bad
    assert SECRET not in _everything_shown(caught.value)
    assert SECRET not in caplog.text


def _live_urls(request: pytest.FixtureRequest) -> list[str]:
    redis, postgres, mariadb = (request.getfixturevalue(f) for f in ("redis_server", "postgres_server", "mariadb_server"))
    etcd, consul = request.getfixturevalue("etcd_server"), request.getfixturevalue("consul_agent")
    namespace = f"h{uuid.uuid4().hex[:8]}"
    return [
        # trust authentication: the password is accepted and ignored, so the session runs with it in its URL
        f"postgresql://postgres:{SECRET}@{postgres.host}:{postgres.port}/postgres?namespace={namespace}",
        f"etcd3+http://{etcd.host}:{etcd.port}?namespace={namespace}",
        f"{consul.url}?token={SECRET}&namespace={namespace}&session_ttl=10",
        f"redis://{redis.host}:{redis.port}?namespace={namespace}",
        f"mysql://root@{mariadb.host}:{mariadb.port}/test?namespace={namespace}",
    ]


def test_a_running_session_never_shows_its_secret(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for url in _live_urls(request):
        if SECRET not in url:
            continue
        with coordactors.connect(url, "a") as coord:
            assert SECRET not in repr(coord) and SECRET not in str(coord.url)
            assert SECRET not in repr(coord.statistics())
            lease = coord.ask(Acquire("l"), block=True, timeout=10)
            assert SECRET not in repr(lease)
            coord.ask(Release(lease), block=True, timeout=10)
            with pytest.raises(errors.LockNotHeld) as caught:
                coord.ask(Release("l"), block=True, timeout=10)
            assert "***" in str(caught.value) or coord.url.split("@")[-1] in str(caught.value)
            assert SECRET not in _everything_shown(caught.value)
            with pytest.raises(errors.InvalidArgument) as bad:
                coord.join("", create=True)
            assert SECRET not in _everything_shown(bad.value)
            coord.inject_failure("drill")  # the session is lost and restored: logged at WARNING and INFO
            wait_until(lambda: coord.statistics()["restarts"] >= 1, timeout=20)
    assert SECRET not in caplog.text


def _threads() -> int:
    return threading.active_count()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cycles(url: str, count: int) -> None:
    for i in range(count):
        coord = coordactors.connect(url, f"m{i}")
        coord.join("g", {"i": i}, create=True)
        lease = coord.ask(Acquire("l", timeout=5), block=True, timeout=10)
        coord.ask(Release(lease), block=True, timeout=10)
        coord.stop()


def _assert_no_growth(url: str, warmup: int, count: int) -> None:
    _cycles(url, warmup)  # imports, pools, caches, the runtime's lazily started threads
    gc.collect()
    threads, fds, rss = _threads(), _fds(), _rss_kib()
    _cycles(url, count)
    gc.collect()
    wait_until(lambda: _threads() <= threads and _fds() <= fds, timeout=10,
               message=lambda: f"threads {threads} -> {_threads()}, fds {fds} -> {_fds()}: {[t.name for t in threading.enumerate()]}")
    assert _rss_kib() - rss < 16 * 1024, f"RSS grew by {_rss_kib() - rss} KiB over {count} cycles"


def test_a_thousand_connect_stop_cycles_on_memory_leak_nothing() -> None:
    _assert_no_growth(f"memory://h{uuid.uuid4().hex[:8]}", warmup=20, count=1000)


NETWORKED_CYCLES = 40  # each a connect, join, lock, release, stop; the soak job runs many more


def test_connect_stop_cycles_leak_nothing_on_every_backend(backend_url: str) -> None:
    count = 1000 if backend_url.startswith(("memory://", "zake://")) else NETWORKED_CYCLES
    _assert_no_growth(backend_url, warmup=5, count=count)


# -- foreign data in our place: refused, left untouched ---------------------------------------------


def test_a_foreign_memcached_value_is_refused_and_left_untouched(memcached_server) -> None:
    from pymemcache.client.base import Client

    namespace = f"h{uuid.uuid4().hex[:8]}"
    url = f"{memcached_server.url}?namespace={namespace}"
    with coordactors.connect(url, "probe") as probe:
        probe.join("g", create=True)
    raw = Client((memcached_server.host, memcached_server.port))
    try:
        keys = [k for k in _memcached_keys(memcached_server) if namespace in k]
        assert keys, "the backend stored nothing under its namespace"
        for key in keys:
            raw.set(key, b"\xff somebody else's bytes")
        with coordactors.connect(url, "a") as coord:
            with pytest.raises(errors.CoordinationError) as caught:
                coord.members("g")
                coord.join("g2", create=True)
                coord.groups()
            assert "did not write" in str(caught.value)  # says what is wrong, in our words
        for key in keys:
            assert raw.get(key) == b"\xff somebody else's bytes"
    finally:
        raw.close()


def _memcached_keys(server) -> list[str]:
    """Every key memcached holds (``lru_crawler metadump``), for a test's eyes only."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    import urllib.parse

    return [urllib.parse.unquote(line.split()[0].partition(b"=")[2].decode()) for line in data.splitlines() if line.startswith(b"key=")]


def test_a_foreign_file_registry_is_refused_and_left_untouched(tmp_path) -> None:
    directory = tmp_path / "coord"
    directory.mkdir()
    (directory / "registry.json").write_text('{"somebody": "else"}')
    with pytest.raises(errors.CoordinationError) as caught, coordactors.connect(f"file://{directory}", "a") as coord:
        coord.join("g", create=True)
    assert "format" in str(caught.value) or "foreign" in str(caught.value)
    assert (directory / "registry.json").read_text() == '{"somebody": "else"}'
