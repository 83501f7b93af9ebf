"""coordactors.testing.faults: the TCP proxy's faults, process signals, bounded loops."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from helpers import wait_until

from coordactors.events import SessionLost, SessionRestored
from coordactors.messages import Acquire
from coordactors.testing import EventRecorder
from coordactors.testing.faults import Proxy, bounded_faults, kill_process, pause_process, paused, resume_process


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(4096):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the proxy reset the connection: that is the point of some tests


@pytest.fixture
def echo() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(echo: socketserver.ThreadingTCPServer) -> Iterator[Proxy]:
    with Proxy("127.0.0.1", echo.server_address[1]) as running:
        yield running


def _client(proxy: Proxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _is_cut_off(connect: Callable[[], socket.socket] | socket.socket) -> bool:
    """Whether the connection is reset or closed by the peer (True), within a few seconds; never hangs."""
    try:
        sock = connect() if callable(connect) else connect
    except (ConnectionResetError, ConnectionRefusedError):
        return True
    sock.settimeout(5)
    try:
        for _ in range(3):
            sock.send(b"?")
            if sock.recv(1) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    finally:
        if callable(connect):
            sock.close()
    return False


def test_traffic_passes_both_ways_and_a_close_is_passed_on(proxy: Proxy) -> None:
    with _client(proxy) as sock:
        payload = bytes(range(256)) * 1024  # larger than one chunk
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the echo server saw our FIN and closed its side
    wait_until(lambda: proxy.connections == 0)


def test_latency_delays_each_reply_by_at_least_the_delay(proxy: Proxy) -> None:
    proxy.delay(0.3)
    with _client(proxy) as sock:
        sent_at = time.monotonic()
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        assert time.monotonic() - sent_at >= 0.6  # 0.3 s each way; a lower bound, never flaky
        proxy.heal()
        sock.sendall(b"pong")
        assert _recv_exactly(sock, 4) == b"pong"


def test_drop_swallows_traffic_silently_and_heal_lets_new_traffic_through(proxy: Proxy) -> None:
    with _client(proxy) as sock:
        proxy.drop()
        sock.sendall(b"lost")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(4)  # neither an answer nor a close: silence
        assert proxy.connections == 1
        proxy.heal()
        sock.settimeout(5)
        sock.sendall(b"back")
        assert _recv_exactly(sock, 4) == b"back"  # what was sent during the drop never arrives


def test_stall_holds_traffic_and_heal_delivers_all_of_it_in_order(proxy: Proxy) -> None:
    with _client(proxy) as sock:
        proxy.stall()
        sock.sendall(b"one")
        sock.sendall(b"two")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(6)
        proxy.heal()
        sock.settimeout(5)
        assert _recv_exactly(sock, 6) == b"onetwo"


def test_reset_breaks_open_connections_and_refuses_new_ones_until_healed(proxy: Proxy) -> None:
    with _client(proxy) as sock:
        sock.sendall(b"x")
        assert _recv_exactly(sock, 1) == b"x"
        proxy.reset()
        assert _is_cut_off(sock)
    assert _is_cut_off(lambda: _client(proxy))
    proxy.heal()
    with _client(proxy) as fine:
        fine.sendall(b"ok")
        assert _recv_exactly(fine, 2) == b"ok"


def test_reset_connections_resets_only_the_open_ones(proxy: Proxy) -> None:
    with _client(proxy) as old:
        old.sendall(b"a")
        assert _recv_exactly(old, 1) == b"a"
        proxy.reset_connections()
        assert _is_cut_off(old)
    with _client(proxy) as new:
        new.sendall(b"c")
        assert _recv_exactly(new, 1) == b"c"


def test_a_dead_server_behind_the_proxy_is_a_reset_connection() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    with Proxy("127.0.0.1", port) as proxy:
        assert _is_cut_off(lambda: _client(proxy))


def test_stop_closes_everything_and_leaves_no_thread(echo: socketserver.ThreadingTCPServer) -> None:
    before = threading.active_count()
    proxy = Proxy("127.0.0.1", echo.server_address[1]).start()
    sock = _client(proxy)
    sock.sendall(b"x")
    assert _recv_exactly(sock, 1) == b"x"
    proxy.stop()
    proxy.stop()  # idempotent
    assert _is_cut_off(sock)
    sock.close()
    wait_until(lambda: threading.active_count() <= before)  # the echo handler ends too


def test_only_loopback_is_accepted() -> None:
    with pytest.raises(ValueError, match="127.0.0.1"):
        Proxy("10.0.0.1", 80)
    with pytest.raises(ValueError):
        Proxy("127.0.0.1", 1).delay(-1)


def test_url_for_rewrites_host_and_port_and_keeps_the_rest() -> None:
    proxy = Proxy("127.0.0.1", 5432).start()
    try:
        url = proxy.url_for("postgresql://user:pw@127.0.0.1:5432/db?namespace=x&session_ttl=2")
        assert url == f"postgresql://user:pw@127.0.0.1:{proxy.port}/db?namespace=x&session_ttl=2"
        assert proxy.url_for("redis://127.0.0.1:6379") == f"redis://127.0.0.1:{proxy.port}"
    finally:
        proxy.stop()


def test_one_client_cut_off_loses_its_session_while_another_goes_on(redis_server, coordinators) -> None:
    namespace = f"p{uuid.uuid4().hex[:8]}"
    url = f"{redis_server.url}?namespace={namespace}&session_ttl=1&socket_timeout=0.3&backoff_initial=0.05&backoff_max=0.3"
    with Proxy("127.0.0.1", redis_server.port) as cut, Proxy("127.0.0.1", redis_server.port) as fine:
        victim, other = coordinators("victim", cut.url_for(url)), coordinators("other", fine.url_for(url))
        own = EventRecorder()
        victim.subscribe(own)
        victim.join("g", {"n": 1}, create=True)
        held = victim.ask(Acquire("jobs"), block=True, timeout=10)
        cut.drop()
        own.wait_for(lambda events: any(isinstance(e, SessionLost) for e in events), timeout=10)
        assert held.lost.is_set()
        with other.lock("jobs", timeout=10) as lease:  # the other client goes on, and gets the lock
            assert lease.member_id == "other" and lease.fence > held.fence
        wait_until(lambda: other.members("g") == frozenset(), timeout=10)
        cut.heal()
        own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events), timeout=15)
        assert other.members("g") == {"victim"}
        assert other.capabilities("g", "victim") == {"n": 1}


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0].decode()


def test_process_pause_resume_and_kill() -> None:
    process = _sleeper()
    try:
        pause_process(process)
        assert _state(process.pid) in ("T", "t")
        resume_process(process)
        wait_until(lambda: _state(process.pid) not in ("T", "t"), timeout=5)
        kill_process(process)
        assert process.returncode == -9
        resume_process(process)  # gone: ignored
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_pause_never_outlives_its_bound_even_if_the_body_hangs() -> None:
    process = _sleeper()
    try:
        with paused(process, max_seconds=0.2):
            assert _state(process.pid) in ("T", "t")
            wait_until(lambda: _state(process.pid) not in ("T", "t"), timeout=10)  # the watchdog resumed it
        assert _state(process.pid) not in ("T", "t")
    finally:
        process.kill()
        process.wait()


def test_fault_loops_are_bounded_in_count_and_time() -> None:
    done: list[int] = []
    assert bounded_faults(done.append, max_count=3, max_seconds=60) == 3
    assert done == [0, 1, 2]
    stop = threading.Event()
    count = bounded_faults(lambda i: stop.wait(0.05), max_count=10_000, max_seconds=0.3)
    assert 1 <= count < 10_000
    with pytest.raises(ValueError):
        bounded_faults(done.append, max_count=1, max_seconds=0)
