"""Private, throw-away instances of real servers for tests.

Each class starts one server -- redis-server, memcached, ZooKeeper, etcd,
PostgreSQL or MariaDB -- on a free loopback port, in its own temporary
directory, as a child process in its own session.  ``start()`` returns once
the server answers its own protocol (never after a fixed sleep); ``stop()``
ends it by the pid it started and removes the directory.  Faults are one call
each: ``kill()`` (SIGKILL, data kept), ``pause()``/``resume()`` (SIGSTOP and
SIGCONT to every process of the server) and ``restart()`` (same port,
same data).  The distribution's own instances (5432, 3306, 6379...) are never
used or touched.

As a context manager::

    from coordactors.testing.servers import RedisServer

    with RedisServer() as server:
        coord = coordactors.connect(server.url, member_id="a")   # redis://127.0.0.1:41235
        ...
        server.kill()           # the backend sees a dead server
        server.restart()        # back on the same port

As pytest fixtures (one server per type for the whole session), either by
registering the plugin in the rootdir ``conftest.py``::

    pytest_plugins = ["coordactors.testing.pytest_plugin"]

    def test_lock(redis_server):
        with coordactors.connect(redis_server.url, member_id="a") as coord:
            ...

or by importing the fixtures a test module needs::

    from coordactors.testing.pytest_plugin import postgres_server  # noqa: F401

A server whose binary is missing raises :class:`ServerUnavailable`, naming the
Debian package; ``bash scripts/install-test-deps`` installs them all.  The
fixtures turn that into a skip on a laptop and a failure when ``CI=true``.

Every started server is registered: :func:`stop_all` (run at interpreter exit,
and by the pytest plugin at session end) stops those this process started,
even when tests fail.  When started from the main thread, a server also gets
SIGKILL if the test process itself dies (``setpriv --pdeathsig``), so not
even a killed test run leaves servers behind.
"""

from __future__ import annotations

import atexit
import glob
import http.client
import json
import logging
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any, ClassVar, Self

__all__ = [
    "EtcdServer",
    "MariaDBServer",
    "MemcachedServer",
    "PostgresServer",
    "RedisServer",
    "Server",
    "ServerStartError",
    "ServerUnavailable",
    "ZooKeeperServer",
    "free_ports",
    "stop_all",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "bash scripts/install-test-deps"
# Where Debian puts server binaries that are not on a normal user's PATH.
EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
LOG_TAIL_LINES = 25


class ServerUnavailable(RuntimeError):
    """A server (or the client library its readiness check needs) is not installed.

    ``server`` is the server's name, ``missing`` what was looked for and not
    found, ``package`` the Debian (or pip) package that provides it.
    """

    def __init__(self, server: str, missing: str, package: str, *, pip: bool = False) -> None:
        self.server, self.missing, self.package = server, missing, package
        how = f"pip install {package}" if pip else f"apt-get install -y {package}"
        super().__init__(
            f"{server} is not available: {missing} not found. Install the "
            f"{'Python' if pip else 'Debian'} package '{package}' ({how}), or run "
            f"`{INSTALL_HINT}` from a coordactors checkout to install every server the tests use."
        )


class ServerStartError(RuntimeError):
    """A server was installed but did not become ready; the message ends with its log's last lines."""


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago.

    The kernel chooses them (bind to port 0); all sockets are held open until
    every port is chosen, and no port handed out before in this process is
    handed out again, so two servers (or one server's two ports) never get
    the same one.  Another process may still take a port before the server
    binds it: ``Server.start`` retries with new ports when that happens.
    """
    with _ports_lock:
        sockets: list[socket.socket] = []
        ports: list[int] = []
        try:
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, 0))
                port = sock.getsockname()[1]
                if port not in _handed_out:
                    ports.append(port)
        finally:
            for sock in sockets:
                sock.close()
        _handed_out.update(ports)
        return ports


_ports_lock = threading.Lock()
_handed_out: set[int] = set()
_registry_lock = threading.Lock()
_registry: dict[int, Server] = {}


def stop_all(timeout: float = 5.0) -> None:
    """Stop every server this process started and has not stopped yet (and remove their directories)."""
    with _registry_lock:
        servers = [server for server in _registry.values() if server._owner == os.getpid()]
    for server in servers:
        try:
            server.stop(timeout=timeout)
        except Exception:  # keep stopping the others
            logger.exception("could not stop %r", server)


atexit.register(stop_all)


class _ProcessExited(Exception):
    """The server process ended before it was ready."""


class Server:
    """One private server process, on loopback ports of its own, in a temporary directory.

    Args:
        host: loopback address to listen on.
        port: client port; by default a free one is chosen at the first start and kept for restarts.
        start_timeout: seconds ``start()`` waits for readiness (default: the class's ``START_TIMEOUT``).
        stop_timeout: seconds ``stop()`` waits after the polite signal before SIGKILL.
        base_dir: where the temporary directory is made (default: the system's temp dir; PostgreSQL
            needs it reachable by the ``postgres`` user when running as root).

    Example::

        with RedisServer() as server:
            redis.Redis(server.host, server.port).ping()
    """

    NAME: ClassVar[str] = "server"
    PACKAGE: ClassVar[str] = ""
    executable: ClassVar[str] = ""
    START_TIMEOUT: ClassVar[float] = 30.0
    EXTRA_PORTS: ClassVar[int] = 0  # ports needed besides the client port (etcd's peer port)
    STOP_SIGNAL: ClassVar[signal.Signals] = signal.SIGTERM
    POLL_INTERVAL: ClassVar[float] = 0.02
    PORT_ATTEMPTS: ClassVar[int] = 5

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float | None = None,
        stop_timeout: float = 10.0,
        base_dir: str | None = None,
    ) -> None:
        self._host = host
        self._ports: list[int] | None = None if port is None else [port, *free_ports(self.EXTRA_PORTS, host)]
        self._pinned = port is not None
        self.start_timeout = self.START_TIMEOUT if start_timeout is None else start_timeout
        self.stop_timeout = stop_timeout
        self._base_dir = base_dir
        self._directory: str | None = None
        self._initialized = False
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._lock = threading.RLock()
        self._owner = os.getpid()
        self.last_start_seconds: float | None = None
        """Seconds the last ``start()`` took, from creating the directory (or spawning) to ready."""

    # -- what each server defines ------------------------------------------------------------------

    def _binaries(self) -> dict[str, str]:
        """Absolute paths of the programs this server needs; raise ServerUnavailable if one is missing."""
        return {"server": self._which(self.executable)}

    def _initialize(self, binaries: dict[str, str]) -> None:
        """Create the data in a new directory (initdb, install-db...). Runs once per directory."""

    def _command(self, binaries: dict[str, str]) -> list[str]:
        raise NotImplementedError

    def _probe(self, timeout: float) -> bool:
        """One readiness check by the server's own protocol, within ``timeout`` seconds."""
        raise NotImplementedError

    def _after_ready(self) -> None:
        """Run once the server answers after a start (e.g. create the test database)."""

    def _spawn_user(self) -> str | None:
        """The user to run as (only when running as root), or None for the current one."""
        return None

    @property
    def url(self) -> str:
        """The coordactors URL of this server, e.g. ``redis://127.0.0.1:41235``."""
        raise NotImplementedError

    # -- public surface ----------------------------------------------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        """Every coordactors URL this server serves (etcd serves two)."""
        return (self.url,)

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The client port (chosen at the first ``start()``, then kept)."""
        if self._ports is None:
            raise RuntimeError(f"{self.NAME} has no port before its first start()")
        return self._ports[0]

    @property
    def pid(self) -> int | None:
        """The pid of the server process this object started, or None when it is not running."""
        return self._process.pid if self._process is not None and not self._exited() else None

    @property
    def directory(self) -> str | None:
        """The temporary directory (data, config, ``server.log``), or None once removed."""
        return self._directory

    @property
    def log_path(self) -> str | None:
        """The file that receives the server's stdout and stderr."""
        return None if self._directory is None else os.path.join(self._directory, "server.log")

    @property
    def is_running(self) -> bool:
        """Whether the process started last is alive (a paused one is)."""
        return self._process is not None and not self._exited()

    @property
    def is_paused(self) -> bool:
        """Whether ``pause()`` was called without ``resume()`` since."""
        return self._paused

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers its protocol within ``timeout`` seconds (False when paused or dead)."""
        try:
            return self._ports is not None and self._probe(timeout)
        except Exception as exc:  # noqa: BLE001  (refused, reset, timed out, or a client library's own error)
            logger.debug("%s probe failed: %r", self.NAME, exc)
            return False

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            with open(self.log_path or "", "rb") as log:
                log.seek(max(0, os.path.getsize(log.name) - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        """Start the server and return once it answers its protocol.

        Makes the directory and data on the first start (or after ``stop()`` removed them), chooses
        free ports on the first start (and again if another process took one before the server bound
        it), then polls readiness every ``POLL_INTERVAL`` until ``start_timeout``.  Does nothing if the
        server is already running.

        Raises:
            ServerUnavailable: the server's binary (or the client library of its check) is missing.
            ServerStartError: it exited or did not answer in time; the message ends with the log's tail.
        """
        with self._lock:
            if self.is_running:
                return self
            self._reap()  # a server that died on its own: collect what is left of it first
            binaries = self._binaries()
            began = time.monotonic()
            deadline = began + self.start_timeout
            for attempt in range(1, self.PORT_ATTEMPTS + 1):
                if self._ports is None:
                    self._ports = free_ports(1 + self.EXTRA_PORTS, self._host)
                self._make_directory()
                if not self._initialized:
                    self._initialize(binaries)
                    self._initialized = True
                log_path = str(self.log_path)
                log_offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
                self._spawn(self._command(binaries))
                try:
                    self._wait_ready(deadline)
                    self._after_ready()
                except _ProcessExited:
                    self._reap()
                    if not self._port_taken(log_offset) or attempt == self.PORT_ATTEMPTS or time.monotonic() > deadline:
                        raise self._error("exited before it was ready") from None
                    logger.info("%s: port %s was taken; retrying", self.NAME, self._ports)
                    if not self._pinned:
                        self._ports = None
                        self._discard_data()
                    else:
                        time.sleep(self.POLL_INTERVAL * 5)  # a client socket may hold the port briefly
                    continue
                except BaseException:
                    self.kill()
                    raise
                self._pinned = True  # restarts come back on the same ports
                self.last_start_seconds = time.monotonic() - began
                logger.info("%s ready on %s (pid %s) in %.2fs", self.NAME, self.url, self.pid, self.last_start_seconds)
                return self
            raise AssertionError("unreachable")

    def stop(self, *, timeout: float | None = None, remove: bool = True) -> None:
        """Stop the server politely and, unless ``remove=False``, delete its directory.

        Sends ``STOP_SIGNAL`` to the pid it started (SIGCONT first if paused), waits up to
        ``timeout`` (default ``stop_timeout``) seconds, then SIGKILLs the server and its processes.
        Safe to call twice, and on a server that was never started or was killed.
        """
        with self._lock:
            if self._process is not None:
                if not self._exited():
                    if self._paused:
                        self._signal_group(signal.SIGCONT)
                    self._signal(self.STOP_SIGNAL)
                    if not self._wait_exit(self.stop_timeout if timeout is None else timeout):
                        logger.warning("%s (pid %s) ignored %s; killing it", self.NAME, self._process.pid, self.STOP_SIGNAL.name)
                self._reap()
            if remove:
                if self._directory is not None:
                    shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
                self._initialized = False
                with _registry_lock:
                    _registry.pop(id(self), None)

    def kill(self) -> None:
        """SIGKILL the server and all its processes, as a crash would; the data directory is kept for ``restart()``."""
        with self._lock:
            self._reap()

    def pause(self) -> None:
        """SIGSTOP the server and all its processes: connections stay open, nothing is answered."""
        with self._lock:
            self._require_running("pause")
            self._signal_group(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT the server and all its processes after ``pause()``."""
        with self._lock:
            self._require_running("resume")
            self._signal_group(signal.SIGCONT)
            self._paused = False

    def restart(self) -> Self:
        """Start again on the same port with the same data: after ``kill()``, or stopping it first if running.

        After ``stop()`` (which removed the data) it starts on the same port with fresh data.
        """
        with self._lock:
            if self.is_running:
                self.stop(remove=False)
            return self.start()

    def __enter__(self) -> Self:
        """Start the server (see ``start()``)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server and remove its directory (see ``stop()``)."""
        self.stop()

    def __repr__(self) -> str:
        state = "PAUSED" if self.is_running and self._paused else "RUNNING" if self.is_running else "STOPPED"
        where = self.url if self._ports is not None else "(no port yet)"
        return f"<{type(self).__name__} {where} pid={self.pid} {state}>"

    # -- machinery ---------------------------------------------------------------------------------

    def _which(self, name: str, extra_dirs: tuple[str, ...] = EXTRA_BIN_DIRS) -> str:
        if os.path.isabs(name):
            found = name if os.access(name, os.X_OK) and os.path.isfile(name) else None
        else:
            path = os.pathsep.join([os.environ.get("PATH", os.defpath), *extra_dirs])
            found = shutil.which(name, path=path)
        if found is None:
            raise ServerUnavailable(self.NAME, repr(name), self.PACKAGE)
        return found

    def _make_directory(self) -> None:
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix=f"coordactors-{self.NAME}-", dir=self._base_dir)
            self._initialized = False
            with _registry_lock:
                _registry[id(self)] = self

    def _discard_data(self) -> None:
        """Forget data created for ports that turned out to be taken (only before the first success)."""

    def _run(self, argv: list[str], *, timeout: float = 60.0) -> None:
        """Run a setup program (initdb, install-db) to completion, its output appended to the log."""
        assert self.log_path is not None
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self._directory, start_new_session=True, **self._user_kwargs())
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise self._error(f"{os.path.basename(argv[0])} did not finish in {timeout}s") from None
        if code != 0:
            raise self._error(f"{os.path.basename(argv[0])} exited with status {code}")

    def _user_kwargs(self) -> dict[str, Any]:
        user = self._spawn_user() if os.geteuid() == 0 else None
        return {} if user is None else {"user": user, "group": user, "extra_groups": []}

    def _spawn(self, argv: list[str]) -> None:
        assert self.log_path is not None
        setpriv = shutil.which("setpriv")
        if setpriv is not None and threading.current_thread() is threading.main_thread():
            # The kernel SIGKILLs the server if the thread that spawned it dies -- hence main thread only.
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self._directory, start_new_session=True, **self._user_kwargs())
        self._paused = False

    def _wait_ready(self, deadline: float) -> None:
        last = "no answer yet"
        while True:
            if self._exited():
                raise _ProcessExited
            remaining = deadline - time.monotonic()
            try:
                if self._probe(max(0.05, min(1.0, remaining))):
                    return
            except Exception as exc:  # not ready yet: refused, reset, "starting up"...
                if isinstance(exc, ServerUnavailable):
                    raise
                last = f"{type(exc).__name__}: {exc}".strip()
            if remaining <= 0:
                raise self._error(f"did not answer within {self.start_timeout}s (last check: {last})")
            time.sleep(self.POLL_INTERVAL)

    def _error(self, what: str) -> ServerStartError:
        where = f" on port {self._ports[0]}" if self._ports else ""
        return ServerStartError(f"{self.NAME}{where} {what}; last lines of {self.log_path}:\n{self.log_tail()}")

    def _port_taken(self, offset: int) -> bool:
        try:
            with open(self.log_path or "", "rb") as log:
                log.seek(offset)
                return b"address already in use" in log.read().lower()
        except OSError:
            return False

    def _exited(self) -> bool:
        """Whether the process has ended, without reaping it (a zombie keeps its pid and group id ours)."""
        assert self._process is not None
        if self._process.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _signal(self, signum: int) -> None:
        assert self._process is not None
        try:
            os.kill(self._process.pid, signum)
        except ProcessLookupError:
            pass

    def _signal_group(self, signum: int) -> None:
        """Signal the server's process group AND the server's descendants.

        PostgreSQL's backends call setsid(), leaving the group: signalling the group alone would pause
        or kill the postmaster but not the backends serving open connections.  The leader is stopped
        first so that it forks no child after the children are listed.  The group id is the pid we
        started (start_new_session); it can't be reused while that process, even as a zombie, is
        unreaped -- and this object reaps it only after the last group signal.
        """
        assert self._process is not None
        leader = self._process.pid
        if signum in (signal.SIGSTOP, signal.SIGKILL):
            self._signal(signal.SIGSTOP)
        family = _descendants(leader)
        for pid in family:
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(leader, signum)
        except (ProcessLookupError, PermissionError):
            pass
        # Signals are delivered asynchronously: wait (briefly) until they took effect, so that a
        # server is frozen when pause() returns and gone, children too, when kill() returns.
        done = {signal.SIGSTOP: ("T", "t", "Z", None), signal.SIGKILL: ("Z", None)}.get(signal.Signals(signum))
        if done is not None:
            deadline = time.monotonic() + 5.0
            while any(_state(pid) not in done for pid in [*family, leader]) and time.monotonic() < deadline:
                time.sleep(0.002)

    def _reap(self) -> None:
        """SIGKILL the server and whatever is left of its processes (PostgreSQL backends...), then reap it."""
        if self._process is None or self._process.returncode is not None:
            return
        self._signal_group(signal.SIGKILL)
        self._process.wait()
        self._paused = False

    def _require_running(self, what: str) -> None:
        if not self.is_running:
            raise RuntimeError(f"cannot {what} {self!r}: it is not running")


def _state(pid: int) -> str | None:
    """A process's state letter from /proc (T: stopped, Z: zombie...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> list[int]:
    """The pids of every descendant of ``root``, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parent = int(stat.read().rpartition(b")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _read_until(sock: socket.socket, done: Any) -> bytes:
    """Read from ``sock`` until ``done(data)`` is true or the peer closes; the socket's timeout applies."""
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _exchange(host: str, port: int, request: bytes, timeout: float, done: Any = lambda data: False) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request)
        return _read_until(sock, done)


class RedisServer(Server):
    """A private redis-server: no persistence, loopback only. URL ``redis://127.0.0.1:P``; ready on ``PING``."""

    NAME, PACKAGE, executable = "redis", "redis-server", "redis-server"
    START_TIMEOUT = 15.0

    def _command(self, binaries: dict[str, str]) -> list[str]:
        return [binaries["server"], "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--daemonize", "no", "--protected-mode", "no"]

    def _probe(self, timeout: float) -> bool:
        reply = _exchange(self.host, self.port, b"*1\r\n$4\r\nPING\r\n", timeout, lambda data: data.endswith(b"\r\n"))
        return reply.startswith(b"+PONG")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:P``."""
        return f"redis://{self.host}:{self.port}"


class MemcachedServer(Server):
    """A private memcached, TCP on loopback only. URL ``memcached://127.0.0.1:P``; ready on ``version``.

    ``stop()`` takes up to a second: memcached acts on SIGTERM at its next once-a-second clock tick.
    """

    NAME, PACKAGE, executable = "memcached", "memcached", "memcached"
    START_TIMEOUT = 15.0

    def _command(self, binaries: dict[str, str]) -> list[str]:
        argv = [binaries["server"], "-l", self.host, "-p", str(self.port), "-U", "0"]
        return argv + (["-u", "root"] if os.geteuid() == 0 else [])  # memcached refuses root without -u

    def _probe(self, timeout: float) -> bool:
        return _exchange(self.host, self.port, b"version\r\n", timeout, lambda d: d.endswith(b"\r\n")).startswith(b"VERSION ")

    @property
    def url(self) -> str:
        """``memcached://127.0.0.1:P``."""
        return f"memcached://{self.host}:{self.port}"


class ZooKeeperServer(Server):
    """A private standalone ZooKeeper (Debian's jars, run by ``java``). URL ``zookeeper://127.0.0.1:P``.

    Quick timings: ``tickTime=200``, so sessions can be as short as 400 ms (``minSessionTimeout``);
    ``maxSessionTimeout`` is raised to 60 s so clients get the timeout they ask for.  No fsync
    (``forceSync=no``), no admin server.  Ready when ``ruok`` answers ``imok`` AND ``srvr`` reports a
    mode: ``imok`` alone comes ~0.2 s before the server serves requests.
    """

    NAME, PACKAGE, executable = "zookeeper", "zookeeper", "java"
    START_TIMEOUT = 30.0
    JAR = "/usr/share/java/zookeeper.jar"  # its manifest's Class-Path names the other jars it needs
    LOGGING_JAR = "/usr/share/java/slf4j-simple.jar"  # log to stderr, i.e. server.log

    def _binaries(self) -> dict[str, str]:
        java = self._which(self.executable)
        if not os.path.isfile(self.JAR):
            raise ServerUnavailable(self.NAME, repr(self.JAR), self.PACKAGE)
        return {"server": java}

    def _config(self) -> str:
        return os.path.join(str(self.directory), "zoo.cfg")

    def _command(self, binaries: dict[str, str]) -> list[str]:
        with open(self._config(), "w", encoding="utf-8") as config:  # rewritten each start: the port may change
            config.write(
                f"tickTime=200\nminSessionTimeout=400\nmaxSessionTimeout=60000\ninitLimit=10\nsyncLimit=5\n"
                f"dataDir={self.directory}/data\nclientPort={self.port}\nclientPortAddress={self.host}\n"
                "admin.enableServer=false\n4lw.commands.whitelist=ruok,stat,srvr,mntr\nforceSync=no\n"
            )
        classpath = ":".join(jar for jar in (self.JAR, self.LOGGING_JAR) if os.path.isfile(jar))
        return [binaries["server"], "-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.net.preferIPv4Stack=true", "-Dzookeeper.admin.enableServer=false", "-cp", classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain", self._config()]

    def _probe(self, timeout: float) -> bool:
        if _exchange(self.host, self.port, b"ruok", timeout) != b"imok":
            return False
        return b"Mode: " in _exchange(self.host, self.port, b"srvr", timeout)

    @property
    def url(self) -> str:
        """``zookeeper://127.0.0.1:P``."""
        return f"zookeeper://{self.host}:{self.port}"


class EtcdServer(Server):
    """A private one-member etcd with the v2 API enabled and quick elections (20 ms heartbeat, 100 ms election).

    URLs: ``url`` is ``etcd://127.0.0.1:P`` (v2 keys API at ``/v2/keys``), ``url_v3`` is
    ``etcd3+http://127.0.0.1:P`` (the v3 JSON gateway at ``/v3/``).  Ready when ``/health`` says
    ``"true"`` (a leader is elected) and ``/v2/keys`` answers.
    """

    NAME, PACKAGE, executable = "etcd", "etcd-server", "etcd"
    START_TIMEOUT = 20.0
    EXTRA_PORTS = 1  # the peer port

    def _discard_data(self) -> None:
        shutil.rmtree(os.path.join(str(self.directory), "data"), ignore_errors=True)  # membership names the peer port

    def _command(self, binaries: dict[str, str]) -> list[str]:
        assert self._ports is not None
        client, peer = (f"http://{self.host}:{port}" for port in self._ports)
        return self._member_command(binaries, "default", client, peer, f"default={peer}", os.path.basename(str(self.directory)),
                                    election_ms=100, heartbeat_ms=20)

    def _member_command(self, binaries: dict[str, str], name: str, client: str, peer: str, cluster: str, token: str, *,
                        election_ms: int, heartbeat_ms: int) -> list[str]:
        """The etcd command line of member ``name`` of ``cluster`` (``name=peer-url,...``), v2 API enabled."""
        return [binaries["server"], "--name", name, "--data-dir", f"{self.directory}/data",
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", token,
                "--enable-v2", f"--election-timeout={election_ms}", f"--heartbeat-interval={heartbeat_ms}", "--logger=zap", "--log-outputs=stderr"]

    def _get(self, path: str, timeout: float) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _probe(self, timeout: float) -> bool:
        status, body = self._get("/health", timeout)
        if status != 200 or json.loads(body).get("health") != "true":
            return False
        return self._get("/v2/keys", timeout)[0] == 200

    @property
    def url(self) -> str:
        """``etcd://127.0.0.1:P`` (the v2 API)."""
        return f"etcd://{self.host}:{self.port}"

    @property
    def url_v3(self) -> str:
        """``etcd3+http://127.0.0.1:P`` (the v3 API through etcd's JSON gateway)."""
        return f"etcd3+http://{self.host}:{self.port}"

    @property
    def urls(self) -> tuple[str, ...]:
        """Both URLs: ``(url, url_v3)``."""
        return (self.url, self.url_v3)


class PostgresServer(Server):
    """A private PostgreSQL (15, or the newest under /usr/lib/postgresql), trust auth, no fsync.

    URL ``postgresql://postgres@127.0.0.1:P/postgres``.  ``initdb`` makes the cluster in the
    temporary directory; the ``postgres`` server binary runs in the foreground (not through
    ``pg_ctl``, which would daemonize it: the pid we hold is the postmaster's).  As root, both run as
    the ``postgres`` user, which owns the directory.  Ready on ``SELECT 1`` through psycopg2.
    """

    NAME, PACKAGE, executable = "postgresql", "postgresql", "postgres"
    START_TIMEOUT = 30.0
    STOP_SIGNAL = signal.SIGINT  # "fast" shutdown: SIGTERM ("smart") would wait for clients to leave
    BIN_GLOB = "/usr/lib/postgresql/*/bin"

    def _binaries(self) -> dict[str, str]:
        dirs = tuple(sorted(glob.glob(self.BIN_GLOB), key=lambda d: [int(p) for p in d.split("/")[-2].split(".") if p.isdigit()],
                            reverse=True))
        found = {"server": self._which(self.executable, dirs), "initdb": self._which("initdb", dirs)}
        _require_module("psycopg2", "psycopg2-binary", self.NAME)
        if self._spawn_user() is not None and os.geteuid() == 0:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable(self.NAME, "the 'postgres' user (PostgreSQL refuses to run as root)", self.PACKAGE) from None
        return found

    def _spawn_user(self) -> str | None:
        return "postgres"

    def _initialize(self, binaries: dict[str, str]) -> None:
        if os.geteuid() == 0:
            shutil.chown(str(self.directory), "postgres", "postgres")
        self._run([binaries["initdb"], "-D", f"{self.directory}/data", "-U", "postgres", "-A", "trust", "-E", "UTF8",
                   "--locale=C", "--no-sync", "--no-instructions"])

    def _command(self, binaries: dict[str, str]) -> list[str]:
        return [binaries["server"], "-D", f"{self.directory}/data", "-p", str(self.port), "-k", str(self.directory),
                "-c", f"listen_addresses={self.host}", "-c", "fsync=off", "-c", "full_page_writes=off"]

    def _probe(self, timeout: float) -> bool:
        # SSLRequest first: answered ('N') within `timeout` by any live server, unlike libpq's
        # connect_timeout (whole seconds, at least 2) -- a paused server is seen as such quickly.
        if _exchange(self.host, self.port, struct.pack("!ii", 8, 80877103), timeout, lambda d: len(d) >= 1) != b"N":
            return False
        import psycopg2  # type: ignore[import-untyped]

        connection = psycopg2.connect(host=self.host, port=self.port, user="postgres", dbname="postgres",
                                      connect_timeout=max(2, math.ceil(timeout)))
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                return bool(cursor.fetchone() == (1,))
        finally:
            connection.close()

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:P/postgres``."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"


class MariaDBServer(Server):
    """A private MariaDB (10.11): passwordless root, database ``test``. URL ``mysql://root@127.0.0.1:P/test``.

    ``mariadb-install-db`` makes the data (about 0.5 s, 26 MB with an 8 MB redo log); ``mariadbd``
    runs with no option files, no binary log and commits flushed to the OS but not synced.  Ready on
    ``SELECT 1`` through PyMySQL; then ``CREATE DATABASE IF NOT EXISTS test``.
    """

    NAME, PACKAGE, executable = "mariadb", "mariadb-server", "mariadbd"
    START_TIMEOUT = 30.0
    INNODB = ("--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M")

    def _binaries(self) -> dict[str, str]:
        found = {"server": self._which(self.executable), "install_db": self._which("mariadb-install-db")}
        _require_module("pymysql", "PyMySQL", self.NAME)
        return found

    def _user_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _initialize(self, binaries: dict[str, str]) -> None:
        self._run([binaries["install_db"], "--no-defaults", f"--datadir={self.directory}/data", *self._user_args(),
                   "--auth-root-authentication-method=normal", "--skip-test-db", *self.INNODB])

    def _command(self, binaries: dict[str, str]) -> list[str]:
        return [binaries["server"], "--no-defaults", f"--datadir={self.directory}/data", f"--port={self.port}",
                f"--bind-address={self.host}", f"--socket={self.directory}/sock", f"--pid-file={self.directory}/mariadbd.pid",
                f"--tmpdir={self.directory}", *self._user_args(), "--skip-log-bin", "--innodb-flush-log-at-trx-commit=2",
                *self.INNODB]

    def _connect(self, timeout: float, database: str | None = None) -> Any:
        import pymysql  # type: ignore[import-untyped]

        return pymysql.connect(host=self.host, port=self.port, user="root", password="", database=database,
                               connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)

    def _probe(self, timeout: float) -> bool:
        connection = self._connect(timeout)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                return bool(cursor.fetchone() == (1,))
        finally:
            connection.close()

    def _after_ready(self) -> None:
        connection = self._connect(10.0)
        try:
            with connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE IF NOT EXISTS test")
        finally:
            connection.close()

    @property
    def url(self) -> str:
        """``mysql://root@127.0.0.1:P/test``."""
        return f"mysql://root@{self.host}:{self.port}/test"


def _require_module(module: str, package: str, server: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ServerUnavailable(server, f"the Python module {module!r} (its readiness check uses it)", package, pip=True)
