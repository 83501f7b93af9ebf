"""The contenders: coordactors (ask, submit, asyncio), the raw client, tooz.

The raw contender is the floor: the same backend protocol -- the very
statements, scripts and znode operations coordactors' session sends -- issued
by the backend's own client library (redis-py, kazoo, pymemcache, psycopg2,
PyMySQL, requests for etcd, etcd3gw, py-consul, posix_ipc, fasteners) on the
caller's thread, with no actor, no reply slot and no supervisor.  It drives
the backend module's ``do_*`` hooks directly, so "coordactors minus raw" is
exactly what the library adds per request.

The ``handoff`` contender is the raw client again, served on a thread of its
own behind two ``queue.SimpleQueue`` hand-offs per request and nothing else:
the least any actor in the request path can cost for that operation on this
machine.  It is more than the bare ping-pong where the operation itself runs
slower on a thread that has just been woken than on one that kept running.
The ``async_handoff`` contender is the same behind an event loop: each call
handed to a thread and its answer awaited (the floor of the asyncio rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any, Callable, Generator

from coordactors.backend_actors.base import CONNECTED
from coordactors.messages import Lease
from coordactors.messages.locks import LeaseState
from coordactors.runtime import runtime as _runtime
from coordactors.urls import parse_url

logger = logging.getLogger(__name__)

Calls = Generator[tuple[Callable[..., Any], tuple[Any, ...]], Any, Any]
"""An operation as the backend calls it makes: each yield is (hook, arguments), answered with the hook's result."""

__all__ = ["AwaitedHandOffSession", "HandedOffSession", "RawSession", "open_tooz"]


class _NoSupervisor:
    """Stands in for the supervisor actor: the raw contender has none; state
    changes and events a hook reports are dropped."""

    def tell(self, message: Any) -> None:
        """Drop ``message``."""


class RawSession:
    """A backend connection driven by hand on the caller's thread."""

    def __init__(self, url: str, member_id: str) -> None:
        session_class, options = parse_url(url)
        self._runtime = _runtime.acquire()
        self.session = session_class(options, member_id, _NoSupervisor(), self._runtime)
        try:
            self.session.conn = self.session.open()
            self.session.on_connected()
            self.session.state = CONNECTED
        except BaseException:
            self._runtime.release()
            raise
        self.member_id = member_id

    # The operations, as a caller would write them with the client library.
    # Each is a generator of the backend calls it makes, so that the
    # hand-off contenders can hand each call over on its own; ``_run`` makes
    # them here, on the caller's thread.

    def lock(self, name: str) -> Any:
        """Acquire and release ``name`` (uncontended)."""
        return self._run(self._lock(name))

    def try_lock_refused(self, name: str) -> Any:
        """Try ``name``, held by someone else: must be refused."""
        return self._run(self._try_lock_refused(name))

    def join_leave(self, group: str) -> Any:
        """Join and leave ``group``."""
        return self._run(self._join_leave(group))

    def members(self, group: str) -> Any:
        """The members of ``group``."""
        return self._run(self._members(group))

    def update_capabilities(self, group: str, capabilities_json: str) -> Any:
        """Replace this member's capabilities in ``group``."""
        return self._run(self._update_capabilities(group, capabilities_json))

    def _lock(self, name: str) -> Calls:
        fence = yield self.session.do_try_acquire, (name, None)
        if fence is None:
            raise AssertionError(f"raw: {name!r} unexpectedly held")
        yield self.session.do_release, (name, fence)

    def _try_lock_refused(self, name: str) -> Calls:
        if (yield self.session.do_try_acquire, (name, None)) is not None:
            raise AssertionError(f"raw: contended {name!r} was granted")

    def _join_leave(self, group: str) -> Calls:
        yield self.session.do_join, (group, "null", False)
        yield self.session.do_leave, (group,)

    def _members(self, group: str) -> Calls:
        return (yield self.session.do_get_members, (group,))

    def _update_capabilities(self, group: str, capabilities_json: str) -> Calls:
        yield self.session.do_update_capabilities, (group, capabilities_json)

    def _run(self, calls: Calls) -> Any:
        value: Any = None
        while True:
            try:
                fn, args = calls.send(value)
            except StopIteration as done:
                return done.value
            value = fn(*args)

    def hold(self, names: list[str], ttl: float | None) -> list[Lease]:
        """Take every lock of ``names``; return their leases (for heartbeat)."""
        leases = []
        for name in names:
            fence = self.session.do_try_acquire(name, ttl)
            leases.append(Lease(name, fence, self.member_id, ttl=ttl, state=LeaseState(None)))
        return leases

    def heartbeat(self, leases: list[Lease]) -> None:
        """Prove the session alive and refresh ``leases``."""
        self.session.do_heartbeat()
        if leases:
            self.session.do_refresh(leases)

    def as_member(self, member_id: str) -> None:
        """Act as another member (to populate a large group from one connection)."""
        self.session.member_id = member_id

    def close(self) -> None:
        """Close the connection."""
        try:
            with contextlib.suppress(Exception):
                self.session.do_shutdown()
            with contextlib.suppress(Exception):
                self.session.close()
        finally:
            self._runtime.release()


class _HandOff:
    """Stands in for a session object: each method call runs on the server
    thread (one hand-off there, one back); attributes are set directly."""

    def __init__(self, session: Any, server: _Server) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_server", server)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._session, name)
        if not callable(target):
            return target
        server = self._server
        return lambda *args: server.call(target, args)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._session, name, value)


class _Server:
    """One thread running what it is handed, one call at a time."""

    def __init__(self, name: str) -> None:
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        inbox, replies = self._inbox, self._replies
        while (item := inbox.get()) is not None:
            fn, args, future = item
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                outcome = (False, exc)
            if future is None:
                replies.put(outcome)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, outcome)

    def call(self, fn: Any, args: tuple[Any, ...]) -> Any:
        """Run ``fn(*args)`` on the server thread; return or raise what it did."""
        self._inbox.put((fn, args, None))
        ok, value = self._replies.get()
        if not ok:
            raise value
        return value

    async def call_async(self, fn: Any, args: tuple[Any, ...]) -> Any:
        """As :meth:`call`, awaited: the answer comes back to the event loop
        through ``call_soon_threadsafe``, as an awaited actor's reply would."""
        future = asyncio.get_running_loop().create_future()
        self._inbox.put((fn, args, future))
        return await future

    def stop(self) -> None:
        """End the thread."""
        self._inbox.put(None)
        self._thread.join(5)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class HandedOffSession(RawSession):
    """The raw contender, each backend call handed to a thread of its own and back."""

    def __init__(self, url: str, member_id: str) -> None:
        super().__init__(url, member_id)
        self._server = _Server(f"bench-handoff[{member_id}]")
        self.session = _HandOff(self.session, self._server)

    def close(self) -> None:
        """Close the connection (on the server thread), then stop the thread."""
        try:
            super().close()
        finally:
            self._server.stop()


class AwaitedHandOffSession(RawSession):
    """The raw contender behind an event loop: each backend call is handed
    to a thread of its own and its answer awaited, with nothing else in
    between -- the least any actor answering an ``await`` can cost for that
    operation here.  Its operations return coroutines."""

    def __init__(self, url: str, member_id: str) -> None:
        super().__init__(url, member_id)
        self._server = _Server(f"bench-async-handoff[{member_id}]")

    async def _run(self, calls: Calls) -> Any:  # type: ignore[override]
        value: Any = None
        while True:
            try:
                fn, args = calls.send(value)
            except StopIteration as done:
                return done.value
            value = await self._server.call_async(fn, args)

    def close(self) -> None:
        """Close the connection, then stop the thread."""
        try:
            super().close()
        finally:
            self._server.stop()


def open_tooz(url: str, member_id: str, *, heart: bool = False) -> Any:
    """A started tooz coordinator; without ``heart``, no heartbeat thread (the
    benchmark beats by hand where it measures heartbeats)."""
    from tooz import coordination

    coord = coordination.get_coordinator(url, member_id.encode())
    coord.start(start_heart=heart)
    return coord
