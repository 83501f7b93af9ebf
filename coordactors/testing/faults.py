"""Fault injection for tests and drills: a TCP proxy and process signals.

:class:`Proxy` listens on a free 127.0.0.1 port and forwards every
connection to one server.  While it runs, its fault can be changed at any
time, for every connection it carries:

* :meth:`Proxy.heal` -- pass traffic through (the default);
* :meth:`Proxy.delay` -- add latency to every chunk, both ways;
* :meth:`Proxy.drop` -- swallow traffic silently, both ways: connections stay
  open and nothing arrives, ever (a black hole: what was sent is gone);
* :meth:`Proxy.stall` -- hold all traffic, both ways, and deliver it when
  healed: a network partition as TCP lives through it (retransmission gets
  the bytes across once the network is back);
* :meth:`Proxy.reset` -- reset every connection (TCP RST) and refuse new ones
  by resetting them at once; :meth:`Proxy.reset_connections` resets the
  current ones only, once.

To cut one client off while the others go on, give each client its own
proxy (``Proxy(host, port).start().url_for(url)`` rewrites a backend URL to
go through it) and :meth:`Proxy.drop` that one.

Processes: :func:`pause_process`/:func:`resume_process` (SIGSTOP/SIGCONT),
:func:`kill_process` (SIGKILL and reap), :func:`paused` (a bounded pause as a
context manager).  Servers started by :mod:`coordactors.testing.servers` have
their own ``kill()``, ``pause()``, ``resume()`` and ``restart()``.

Traffic stays on 127.0.0.1: a proxy refuses any other address.  Every loop
here is bounded: :func:`bounded_faults` runs a fault schedule with a cap on
both the count and the time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Self

__all__ = [
    "Proxy",
    "bounded_faults",
    "kill_process",
    "pause_process",
    "paused",
    "resume_process",
]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024
TICK = 0.05  # the event loop's longest sleep: control changes take effect within it


def _require_loopback(host: str) -> None:
    if host not in (LOOPBACK, "localhost"):
        raise ValueError(f"fault injection stays on {LOOPBACK}; refusing {host!r}")


def _rst_close(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Side:
    """One direction's socket and what waits to be written to it."""

    __slots__ = ("closed", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: collections.deque[tuple[float, bytes]] = collections.deque()  # (deliver at, data)
        self.closed = False  # this side sent its FIN: read from it no more


class _Link:
    """A client connection and its upstream connection."""

    __slots__ = ("client", "opened_at", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = _Side(client), _Side(upstream)
        self.opened_at = time.monotonic()

    def other(self, side: _Side) -> _Side:
        return self.upstream if side is self.client else self.client


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of one server, with switchable faults.

    Args:
        target_host: the server's address (127.0.0.1 or localhost only).
        target_port: the server's port.
        port: the port to listen on (default: a free one).

    One event-loop thread carries every connection; :meth:`stop` closes them
    all and joins it.  Use as a context manager::

        with Proxy("127.0.0.1", redis_server.port) as proxy:
            coord = coordactors.connect(proxy.url_for(redis_server.url), "a")
            proxy.drop()        # partition: nothing passes, nothing is closed
            ...
            proxy.heal()
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        _require_loopback(target_host)
        self.target = (LOOPBACK if target_host == "localhost" else target_host, int(target_port))
        self._requested_port = port
        self._mode = "pass"
        self._latency = 0.0
        self._control = threading.Lock()
        self._reset_now = False
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.accepted = 0
        """Connections accepted since start."""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and start forwarding; returns once the port is bound."""
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self._requested_port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(target=self._run, name=f"coordactors-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection (with a RST), and join the thread. Idempotent."""
        self._stopping.set()
        self._wake()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._listener is None:
            raise RuntimeError("the proxy has no port before start()")
        return int(self._listener.getsockname()[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (user, path and options kept)."""
        split = urllib.parse.urlsplit(url)
        userinfo, at, _ = split.netloc.rpartition("@")
        return urllib.parse.urlunsplit(split._replace(netloc=f"{userinfo}{at}{self.address}"))

    @property
    def mode(self) -> str:
        """The current fault: ``pass``, ``delay``, ``drop``, ``stall`` or ``reset``."""
        return self._mode

    @property
    def connections(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._links)

    def __repr__(self) -> str:
        where = self.address if self._listener is not None else "(not started)"
        return f"<Proxy {where} -> {self.target[0]}:{self.target[1]} {self._mode}>"

    # -- faults ----------------------------------------------------------------------------------

    def heal(self) -> None:
        """Pass traffic through again, without latency."""
        self._set("pass", 0.0)

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late, both ways (order is kept)."""
        if not 0 <= seconds <= 60:
            raise ValueError(f"latency must be within 0..60 s (got {seconds})")
        self._set("delay", float(seconds))

    def drop(self) -> None:
        """Swallow all traffic silently, both ways; connections stay open (a partition)."""
        self._set("drop", 0.0)

    def stall(self) -> None:
        """Hold all traffic, both ways, until :meth:`heal` delivers it (a partition TCP survives)."""
        self._set("stall", 0.0)

    def reset(self) -> None:
        """Reset every open connection, and every new one as soon as it is accepted, until :meth:`heal`."""
        self._set("reset", 0.0)
        with self._control:
            self._reset_now = True
        self._wake()

    def reset_connections(self) -> None:
        """Reset the connections open now (once); new ones are carried as before."""
        with self._control:
            self._reset_now = True
        self._wake()

    def _set(self, mode: str, latency: float) -> None:
        with self._control:
            self._mode, self._latency = mode, latency
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the event loop --------------------------------------------------------------------------

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._listener is not None
        selector.register(self._listener, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                with self._control:
                    reset_now, self._reset_now = self._reset_now, False
                if reset_now:
                    for link in list(self._links):
                        self._close(selector, link, rst=True)
                now = time.monotonic()
                timeout = TICK
                for link in self._links:
                    for side in (link.client, link.upstream):
                        if side.pending:
                            timeout = min(timeout, max(0.0, side.pending[0][0] - now))
                        self._update_interest(selector, link, side, now)
                for key, events in selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.fileobj is self._listener:
                        self._accept(selector)
                    else:
                        link, side = key.data
                        if link not in self._links:
                            continue
                        if events & selectors.EVENT_WRITE:
                            self._flush(selector, link, side)
                        if events & selectors.EVENT_READ and link in self._links:
                            self._receive(selector, link, side)
        except Exception:
            logger.exception("%r failed", self)
        finally:
            for link in list(self._links):
                self._close(selector, link, rst=True)
            with contextlib.suppress(OSError):
                selector.unregister(self._listener)
            self._listener.close()
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        if self._mode == "reset":  # read now, not at the top of the loop: a heal() may just have landed
            _rst_close(client)
            return
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.settimeout(2.0)
        try:
            upstream.connect(self.target)
        except OSError:
            upstream.close()
            _rst_close(client)  # the server is down: the client sees its connection reset
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream)
        self._links.append(link)
        for side in (link.client, link.upstream):
            selector.register(side.sock, selectors.EVENT_READ, (link, side))

    def _update_interest(self, selector: selectors.BaseSelector, link: _Link, side: _Side, now: float) -> None:
        events = 0 if side.closed else selectors.EVENT_READ
        if side.pending and side.pending[0][0] <= now and self._mode != "stall":
            events |= selectors.EVENT_WRITE
        try:
            current = selector.get_key(side.sock).events
        except KeyError:
            current = 0
        if events == current:
            return
        if not events:
            selector.unregister(side.sock)
        elif not current:
            selector.register(side.sock, events, (link, side))
        else:
            selector.modify(side.sock, events, (link, side))

    def _receive(self, selector: selectors.BaseSelector, link: _Link, side: _Side) -> None:
        with self._control:
            mode, latency = self._mode, self._latency
        try:
            data = side.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(selector, link, rst=True)
            return
        peer = link.other(side)
        if not data:
            side.closed = True
            self._update_interest(selector, link, side, time.monotonic())
            if mode != "drop":  # a FIN is traffic too: under drop it is swallowed with the rest
                peer.pending.append((time.monotonic() + (latency if mode == "delay" else 0.0), b""))
                self._flush(selector, link, peer)
            return
        if mode == "drop":
            return
        peer.pending.append((time.monotonic() + (latency if mode == "delay" else 0.0), data))
        self._flush(selector, link, peer)

    def _flush(self, selector: selectors.BaseSelector, link: _Link, side: _Side) -> None:
        if self._mode == "stall":
            return
        now = time.monotonic()
        while side.pending and side.pending[0][0] <= now:
            due, data = side.pending[0]
            if not data:  # the other side's FIN, delivered in order
                side.pending.popleft()
                with contextlib.suppress(OSError):
                    side.sock.shutdown(socket.SHUT_WR)
                if link.client.closed and link.upstream.closed and not link.other(side).pending:
                    self._close(selector, link, rst=False)
                return
            try:
                sent = side.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(selector, link, rst=True)
                return
            if sent < len(data):
                side.pending[0] = (due, data[sent:])
                return
            side.pending.popleft()

    def _close(self, selector: selectors.BaseSelector, link: _Link, *, rst: bool) -> None:
        with contextlib.suppress(ValueError):
            self._links.remove(link)
        for side in (link.client, link.upstream):
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(side.sock)
            if rst:
                _rst_close(side.sock)
            else:
                with contextlib.suppress(OSError):
                    side.sock.close()


# -- processes -------------------------------------------------------------------------------------


def _pid(process: Any) -> int:
    return int(process if isinstance(process, int) else process.pid)


def pause_process(process: subprocess.Popen[Any] | int) -> None:
    """SIGSTOP a process (a Popen or a pid) and return once it is stopped (at most 5 s)."""
    pid = _pid(process)
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5.0
    while _state(pid) not in ("T", "t", "Z", None) and time.monotonic() < deadline:
        time.sleep(0.002)


def resume_process(process: subprocess.Popen[Any] | int) -> None:
    """SIGCONT a process (a Popen or a pid); a process that is gone is ignored."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(_pid(process), signal.SIGCONT)


def kill_process(process: subprocess.Popen[Any] | int, timeout: float = 10.0) -> None:
    """SIGKILL a process as a crash would, and reap it if it is our child (a Popen)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(_pid(process), signal.SIGKILL)
    if isinstance(process, subprocess.Popen):
        process.wait(timeout)


@contextlib.contextmanager
def paused(process: subprocess.Popen[Any] | int, *, max_seconds: float = 60.0) -> Iterator[None]:
    """Keep ``process`` stopped for the body of the ``with`` -- and never longer than ``max_seconds``.

    A watchdog resumes the process when ``max_seconds`` pass, even if the body
    is still running (or hung), so a failing test never leaves a stopped process.
    """
    pause_process(process)
    timer = threading.Timer(max_seconds, resume_process, (process,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        resume_process(process)


def bounded_faults(
    inject: Callable[[int], Any],
    *,
    max_count: int,
    max_seconds: float,
    between: Callable[[int], Any] | None = None,
) -> int:
    """Call ``inject(i)`` for i = 0, 1, ... until ``max_count`` calls or ``max_seconds`` have passed.

    ``between(i)`` runs after each fault (e.g. wait for recovery).  Returns how
    many faults were injected.  Both bounds are required, so no fault loop
    runs forever.
    """
    if max_count < 0 or max_seconds <= 0:
        raise ValueError("a fault loop needs max_count >= 0 and max_seconds > 0")
    deadline = time.monotonic() + max_seconds
    count = 0
    while count < max_count and time.monotonic() < deadline:
        inject(count)
        count += 1
        if between is not None:
            between(count - 1)
    return count


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None

