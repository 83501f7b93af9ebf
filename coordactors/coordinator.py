"""The Coordinator: the application's handle on one backend session.

A request crosses one actor boundary on its way to the backend: the
coordinator puts a :class:`~coordactors._protocol.Call` straight into the
session actor's inbox, and the session replies into the caller's slot.  The
supervisor learns of state changes by ``tell``, off that path.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from typing import Any, Iterator, Literal, overload

import pykka

from coordactors import errors
from coordactors._protocol import (
    NO_REPLY,
    AsyncioReply,
    AwaitConnected,
    Call,
    ConcurrentReply,
    GetStatistics,
    InjectFailure,
    RequestFuture,
    Shutdown,
    deadline_after,
)
from coordactors._signals import signals_blocked
from coordactors.characteristics import Characteristics
from coordactors.events import ALL
from coordactors.messages import (
    Acquire,
    Campaign,
    CreateGroup,
    DeleteGroup,
    GetCapabilities,
    GetGroups,
    GetLeader,
    GetMembers,
    Join,
    Lease,
    Leave,
    Message,
    Release,
    StandDown,
    Unwatch,
    UpdateCapabilities,
    Watch,
)
from coordactors.messages import _validate as v
from coordactors.runtime import runtime as _runtime
from coordactors.supervisor import Route, SupervisorActor, SupervisorLink
from coordactors.urls import parse_url

logger = logging.getLogger(__name__)

__all__ = ["Coordinator", "connect"]

_live: weakref.WeakSet[Coordinator] = weakref.WeakSet()

DEFAULT_TIMEOUT = 30.0
"""Seconds the blocking helpers (``members()``, ``join()``...) wait by default."""


def _expire(future: asyncio.Future[Any], message: Message, timeout: float) -> None:
    """Fail an awaited request whose timeout passed (see Coordinator.request)."""
    if not future.done():
        future.set_exception(errors.OperationTimedOut(f"{type(message).__name__}: no reply within {timeout}s; the request was abandoned"))


class Coordinator:
    """A started connection to a coordination backend.

    Build it with :func:`coordactors.connect`.  Three ways to call it::

        coord.ask(Join("workers"))                  # pykka future
        coord.ask(Join("workers"), block=True, timeout=5)
        coord.submit(Acquire("jobs"))               # concurrent.futures.Future
        await coord.request(Acquire("jobs"))        # asyncio, never blocks the loop

    ``stop()`` (or leaving a ``with`` block) releases locks, stands down,
    leaves groups and stops the actors; it is idempotent.

    Attributes:
        member_id: this member's id (str).
        url: the backend URL, password removed.
        characteristics: frozenset of :class:`Characteristics` the backend guarantees.
    """

    def __init__(self, url: Any, member_id: Any, *, wait_while_down: bool = True) -> None:
        session_class, options = parse_url(url)
        self.member_id: str = v.name(member_id, "member_id")
        self.url: str = options.redacted
        self.characteristics: frozenset[Characteristics] = session_class.CHARACTERISTICS
        self._options = options
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._route = Route()
        self._supervisor: pykka.ActorRef[Any] | None = None

        def start_session(supervisor: pykka.ActorRef[Any], desired: Any, restarting: bool) -> pykka.ActorRef[Any]:
            return session_class.start(
                options, self.member_id, SupervisorLink(supervisor, self._route.ledger), self._runtime, desired,
                restarting=restarting, wait_while_down=wait_while_down, session_token=self._route.token,
            )

        # Every other thread behind this coordinator is started by these (the
        # runtime's and the supervisor's), so none takes the application's signals.
        with signals_blocked():
            self._runtime = _runtime.acquire()
        try:
            with signals_blocked():
                self._supervisor = SupervisorActor.start(start_session, self._route, self._runtime, options)
            connected = RequestFuture(f"connecting to {self.url}")
            self._supervisor.tell(Call(AwaitConnected(), connected))
            try:
                connected.get(timeout=options.connect_timeout)
            except errors.OperationTimedOut:
                raise errors.BackendUnavailable(f"could not connect to {self.url} within {options.connect_timeout}s") from None
        except BaseException:
            self._stopped = True
            self._teardown(timeout=5)
            raise
        _live.add(self)

    # -- asking --------------------------------------------------------------

    def _send(self, call: Call) -> None:
        message = call.message
        if not isinstance(message, Message):
            raise errors.InvalidArgument(f"expected a coordactors message, got {type(message).__name__}")
        self._send_unchecked(call)

    def _send_unchecked(self, call: Call) -> None:
        message = call.message
        if self._stopped:
            raise errors.CoordinatorStopped(f"cannot send {message!r}: the coordinator for {self.member_id!r} on {self.url} is stopped")
        if type(message) in (Watch, Unwatch) and message.group is None:  # type: ignore[attr-defined]
            target = self._supervisor
        else:
            target = self._route.session
        try:
            target.tell(call)  # type: ignore[union-attr]
        except (pykka.ActorDeadError, AttributeError):
            raise errors.BackendUnavailable(f"cannot send {message!r}: the session with {self.url} is restarting") from None

    @overload
    def ask(self, message: Message, *, block: Literal[False] = ..., timeout: float | None = ...) -> pykka.Future[Any]: ...
    @overload
    def ask(self, message: Message, *, block: Literal[True], timeout: float | None = ...) -> Any: ...

    def ask(self, message: Message, *, block: bool = False, timeout: float | None = None) -> Any:
        """Send ``message`` and return a pykka future of its reply (or, with
        ``block=True``, the reply itself).

        ``timeout`` is how long the caller will wait: past it, ``get()`` raises
        :class:`~coordactors.errors.OperationTimedOut` and anything granted
        later is undone.
        """
        timeout = v.timeout(timeout)
        future = RequestFuture(type(message).__name__)
        self._send(Call(message, future, deadline_after(timeout)))
        if block:
            return future.get(timeout=timeout)
        return future

    def submit(self, message: Message, *, timeout: float | None = None) -> concurrent.futures.Future[Any]:
        """Send ``message``; return a ``concurrent.futures.Future`` of its reply.

        Cancelling the future abandons the request (a late grant is released).
        """
        timeout = v.timeout(timeout)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._send(Call(message, ConcurrentReply(future), deadline_after(timeout)))
        return future

    async def request(self, message: Message, *, timeout: float | None = None) -> Any:
        """Send ``message`` and await its reply without blocking the event loop.

        A cancelled or timed-out await abandons the request.
        """
        timeout = v.timeout(timeout)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._send(Call(message, AsyncioReply(future, loop, self._undo), deadline_after(timeout)))
        if timeout is None:
            return await future
        # A timer that fails the future itself: a reply that comes later finds
        # it done and is undone.  (asyncio.timeout would cancel the task
        # instead, at twice this cost per request.)
        expiry = loop.call_later(timeout, _expire, future, message, timeout)
        try:
            return await future
        finally:
            expiry.cancel()

    def tell(self, message: Message) -> None:
        """Send ``message`` and forget it; a failure is logged."""
        self._send(Call(message, NO_REPLY))

    def _undo(self, value: Any) -> None:
        if isinstance(value, Lease) and not self._stopped:
            with contextlib.suppress(errors.CoordinationError):
                self.tell(Release(value))

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The supervisor's ActorRef: ``actor_ref.ask(Join("g"))`` works from actor systems."""
        assert self._supervisor is not None
        return self._supervisor

    # -- sugar ------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: Any, timeout: float | None = None, ttl: float | None = None) -> Iterator[Lease]:
        """Hold lock ``name`` for the ``with`` block and yield the Lease.

        Raises LockTimeout if not granted within ``timeout``.  If the lease was
        lost while the block ran (and the block raised nothing else), leaving
        the block raises :class:`~coordactors.errors.LockLost`.
        """
        lease: Lease = self.ask(Acquire(name, timeout, ttl), block=True)
        body_failed = False
        try:
            yield lease
        except BaseException:
            body_failed = True
            raise
        finally:
            try:
                self.ask(Release(lease), block=True, timeout=DEFAULT_TIMEOUT)
            except errors.LockNotHeld as exc:
                if not body_failed:
                    raise errors.LockLost(f"lock {lease.name!r} (fence {lease.fence}) was lost while held: {exc}") from exc
            except errors.CoordinatorStopped:
                pass

    def create_group(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Create ``group`` (GroupAlreadyExists if it exists)."""
        self.ask(CreateGroup(group), block=True, timeout=timeout)

    def delete_group(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Delete an empty ``group``."""
        self.ask(DeleteGroup(group), block=True, timeout=timeout)

    def groups(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> frozenset[str]:
        """Every group."""
        return self.ask(GetGroups(), block=True, timeout=timeout)  # type: ignore[no-any-return]

    def join(self, group: Any, capabilities: Any = None, *, create: bool = False, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Join ``group`` with ``capabilities``."""
        self.ask(Join(group, capabilities, create), block=True, timeout=timeout)

    def leave(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Leave ``group``."""
        self.ask(Leave(group), block=True, timeout=timeout)

    def members(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> frozenset[str]:
        """The members of ``group``."""
        return self.ask(GetMembers(group), block=True, timeout=timeout)  # type: ignore[no-any-return]

    def capabilities(self, group: Any, member: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """The capabilities of ``member`` in ``group``."""
        return self.ask(GetCapabilities(group, member), block=True, timeout=timeout)

    def update_capabilities(self, group: Any, capabilities: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Replace this member's capabilities in ``group``."""
        self.ask(UpdateCapabilities(group, capabilities), block=True, timeout=timeout)

    def campaign(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Stand for leader of ``group``."""
        self.ask(Campaign(group), block=True, timeout=timeout)

    def stand_down(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Stop standing for leader of ``group``."""
        self.ask(StandDown(group), block=True, timeout=timeout)

    def leader(self, group: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> str | None:
        """The leader of ``group``, or None."""
        return self.ask(GetLeader(group), block=True, timeout=timeout)  # type: ignore[no-any-return]

    def watch(self, group: Any, subscriber: Any, events: Any = ALL, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Send ``group``'s events to ``subscriber`` (an ActorRef or a callable)."""
        self.ask(Watch(group, subscriber, events), block=True, timeout=timeout)

    def unwatch(self, group: Any, subscriber: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Stop sending ``group``'s events to ``subscriber``."""
        self.ask(Unwatch(group, subscriber), block=True, timeout=timeout)

    def subscribe(self, subscriber: Any, events: Any = ALL, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Send this coordinator's own events (SessionLost, SessionRestored, LockLost) to ``subscriber``."""
        self.watch(None, subscriber, events, timeout=timeout)

    def unsubscribe(self, subscriber: Any, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Undo :meth:`subscribe`."""
        self.unwatch(None, subscriber, timeout=timeout)

    def statistics(self, *, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The session's state, leases, waiters, memberships and restarts."""
        future = RequestFuture("statistics")
        self._send_unchecked(Call(GetStatistics(), future, deadline_after(timeout)))
        stats: dict[str, Any] = future.get(timeout=timeout)
        stats["url"] = self.url
        stats["member_id"] = self.member_id
        stats["restarts"] = self._route.restarts
        stats["retry_delays"] = list(self._route.retry_delays)
        return stats

    def inject_failure(self, cause: str = "failure injected", *, crash: bool = False) -> None:
        """Act as if the connection to the backend was lost (for tests and drills).

        The session drops its connection, every lease is lost, and the
        supervisor restores the session as after a real failure.  With
        ``crash=True`` the session actor dies of an exception instead, as a
        bug would make it, and the supervisor replaces it.
        """
        session = self._route.session
        if session is not None:
            session.tell(InjectFailure(cause, crash))

    # -- lifecycle ----------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Release locks, stand down, leave groups, stop the actors.  Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        _live.discard(self)
        session = self._route.session
        if session is not None:
            done = RequestFuture("stop")
            try:
                session.tell(Call(Shutdown(), done))
                done.get(timeout=timeout)
            except (pykka.ActorDeadError, errors.CoordinationError):
                logger.debug("%r: graceful shutdown incomplete", self, exc_info=True)
        self._teardown(timeout)

    def _teardown(self, timeout: float) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                supervisor.stop(block=True, timeout=timeout)
        session = self._route.session
        if session is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                session.stop(block=True, timeout=timeout)
        self._runtime.release()

    @property
    def stopped(self) -> bool:
        """True once ``stop()`` was called."""
        return self._stopped

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<Coordinator {self.url} member={self.member_id!r} {state}>"


def connect(url: Any, member_id: Any, *, wait_while_down: bool = True) -> Coordinator:
    """Connect to the backend at ``url`` as ``member_id`` and return a started Coordinator.

    Args:
        url: e.g. ``"memory://"``, ``"file:///var/lib/myapp/coord"``, ``"ipc://myapp"``.
        member_id: this member's id, str or UTF-8 bytes.
        wait_while_down: while the session is down and being restored,
            requests wait (up to their timeout) if True, or fail at once with
            BackendUnavailable if False.

    Raises:
        InvalidArgument: malformed URL, option or member id.
        NotSupported: the backend's client library is missing.
        BackendUnavailable: the backend could not be reached within ``connect_timeout``.
    """
    return Coordinator(url, member_id, wait_while_down=wait_while_down)


@atexit.register
def _stop_all() -> None:
    # Release locks and leave groups politely when the interpreter exits
    # with coordinators still running.
    for coordinator in list(_live):
        with contextlib.suppress(Exception):
            coordinator.stop(timeout=2)
