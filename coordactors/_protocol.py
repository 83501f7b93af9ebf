"""Internal envelopes, reply slots and actor-to-actor messages.

A request travels as a :class:`Call` (the public message, a reply slot and an
optional deadline) told to the session actor: one thread hand-off to get
there, one to come back.  Reply slots share one small interface:

``resolve(value) -> bool``
    deliver a result; False if the caller already gave up, in which case the
    session undoes what it did (releases a lock granted too late).
``reject(exc)``
    deliver an error.
``wanted() -> bool``
    False once the caller gave up, so waiters can be dropped early.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sys
import threading
import time
from typing import Any, Callable

import attrs
import pykka
from pykka._threading import ThreadingFutureResult

from coordactors.errors import OperationTimedOut
from coordactors.events import Event
from coordactors.messages import Lease, Message


class Call:
    """A message, where its answer goes, and when the caller stops waiting."""

    __slots__ = ("deadline", "message", "reply")

    def __init__(self, message: Message, reply: Any, deadline: float | None = None) -> None:
        self.message = message
        self.reply = reply
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"<Call {self.message!r} deadline={self.deadline}>"


class RequestFuture(pykka.ThreadingFuture):  # type: ignore[type-arg]
    """The pykka future ``Coordinator.ask`` returns.

    ``get(timeout=...)`` raises :class:`OperationTimedOut` instead of pykka's
    ``Timeout``, and a caller that times out abandons the request: a result
    that arrives later is refused, so the session releases it.

    It waits on a plain lock (held until the reply is in) rather than
    pykka's condition variable: setting the reply is one ``release()`` on the
    session's thread instead of a condition's bookkeeping, which is what the
    session spends most of its time on when many callers share it.
    """

    def __init__(self, what: str = "request") -> None:
        pykka.Future.__init__(self)  # not ThreadingFuture's: no Condition
        self._result: Any = None
        self._state = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()
        self._abandoned = False
        self._what = what

    @property
    def _condition(self) -> threading.Lock:
        # pykka's ThreadingFuture methods that lock the future use this name.
        return self._state

    def get(self, *, timeout: float | None = None) -> Any:
        if self._get_hook is not None:
            return pykka.Future.get(self, timeout=timeout)
        result = self._result
        if result is None:
            if timeout is None:
                arrived = self._done.acquire()
            else:
                arrived = self._done.acquire(timeout=timeout) if timeout > 0 else self._done.acquire(blocking=False)
            if arrived:
                self._done.release()  # open for every later get()
            else:
                with self._state:
                    if self._result is None:
                        self._abandoned = True
                        exc = OperationTimedOut(f"{self._what}: no reply within {timeout}s; the request was abandoned")
                        self._result = ThreadingFutureResult(exc_info=(OperationTimedOut, exc, None))
                        self._done.release()
                        raise exc from None
            result = self._result
        if result.exc_info is not None:
            exc_type, exc_value, exc_traceback = result.exc_info
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not exc_traceback:
                raise exc_value.with_traceback(exc_traceback)
            raise exc_value
        return result.value

    def _complete(self, result: Any) -> bool:
        with self._state:
            if self._result is not None or self._get_hook is not None:
                return False
            self._result = result
            self._done.release()
            return True

    def set(self, value: Any = None) -> None:
        if not self._complete(ThreadingFutureResult(value=value)):
            raise queue.Full

    def set_exception(self, exc_info: Any = None) -> None:
        if not self._complete(ThreadingFutureResult(exc_info=exc_info or sys.exc_info())):
            raise queue.Full

    def set_get_hook(self, func: Any) -> None:
        with self._state:
            if self._result is not None:
                raise queue.Full
            pykka.Future.set_get_hook(self, func)

    def resolve(self, value: Any) -> bool:
        if self._abandoned:
            return False
        return self._complete(ThreadingFutureResult(value=value))

    def reject(self, exc: BaseException) -> None:
        if not self._abandoned:
            self._complete(ThreadingFutureResult(exc_info=(type(exc), exc, exc.__traceback__)))

    def wanted(self) -> bool:
        return not self._abandoned

    def abandon(self) -> None:
        """Give up on the request, as a caller that timed out would."""
        with self._state:
            if self._result is None:
                self._abandoned = True
                exc = OperationTimedOut(f"{self._what}: abandoned by the caller")
                self._result = ThreadingFutureResult(exc_info=(OperationTimedOut, exc, None))
                self._done.release()


class PykkaReply:
    """Wraps the plain pykka future of an actor system's ``actor_ref.ask``."""

    __slots__ = ("future",)

    def __init__(self, future: pykka.Future[Any]) -> None:
        self.future = future

    def resolve(self, value: Any) -> bool:
        try:
            self.future.set(value)
        except Exception:  # already set: nobody wants this one
            return False
        return True

    def reject(self, exc: BaseException) -> None:
        try:
            self.future.set_exception((type(exc), exc, exc.__traceback__))
        except Exception:
            pass

    def wanted(self) -> bool:
        return True


class ConcurrentReply:
    """Feeds a ``concurrent.futures.Future``; a cancelled future refuses results."""

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future

    def resolve(self, value: Any) -> bool:
        if self.future.cancelled():
            return False
        try:
            self.future.set_result(value)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            return False
        return True

    def reject(self, exc: BaseException) -> None:
        try:
            self.future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass

    def wanted(self) -> bool:
        return not self.future.cancelled()


class AsyncioReply:
    """Feeds an asyncio future from the actor thread without blocking the loop.

    Cancellation is only known on the loop, so a result that arrives for a
    cancelled future is handed to ``undo`` (which tells the session to release
    it) from the loop thread.
    """

    __slots__ = ("future", "loop", "undo")

    def __init__(self, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop, undo: Callable[[Any], None]) -> None:
        self.future = future
        self.loop = loop
        self.undo = undo

    def _set(self, value: Any) -> None:
        if self.future.done():
            self.undo(value)
        else:
            self.future.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def resolve(self, value: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._set, value)
        except RuntimeError:  # the loop is closed: nobody will take it
            return False
        return True

    def reject(self, exc: BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self._fail, exc)
        except RuntimeError:
            pass

    def wanted(self) -> bool:
        return not self.future.done()


class NoReply:
    """For ``tell``: results are dropped, errors are logged by the session."""

    __slots__ = ()

    def resolve(self, value: Any) -> bool:
        return True

    def reject(self, exc: BaseException) -> None:
        pass

    def wanted(self) -> bool:
        return True


NO_REPLY = NoReply()


def deadline_after(timeout: float | None) -> float | None:
    """The monotonic deadline ``timeout`` seconds from now, or None."""
    return None if timeout is None else time.monotonic() + timeout


def exc_info_of(exc: BaseException) -> tuple[type[BaseException], BaseException, Any]:
    """A (type, value, traceback) triple, as pykka's futures take."""
    return (type(exc), exc, exc.__traceback__ or sys.exc_info()[2])


# -- session -> supervisor ------------------------------------------------


@attrs.frozen
class Publish:
    """An event for the supervisor to fan out."""

    event: Event


@attrs.frozen
class DesiredJoin:
    """The application joined ``group`` (or updated its capabilities)."""

    group: str
    capabilities_json: str


@attrs.frozen
class DesiredLeave:
    """The application left ``group``."""

    group: str


@attrs.frozen
class DesiredCampaign:
    """The application campaigns (or stopped campaigning) for ``group``."""

    group: str
    active: bool


@attrs.frozen
class AddSubscriber:
    """Send ``group``'s events (None: the session's own) to ``subscriber``."""

    group: str | None
    subscriber: Any
    events: frozenset[type[Event]]


@attrs.frozen
class RemoveSubscriber:
    """Stop sending ``group``'s events to ``subscriber``."""

    group: str | None
    subscriber: Any


@attrs.frozen
class LeaseGranted:
    """The session holds ``lease``."""

    lease: Lease


@attrs.frozen
class LeaseEnded:
    """The session no longer holds the lease with this name and fence."""

    name: str
    fence: int


@attrs.frozen
class SessionDown:
    """The session failed; ``lost`` are the leases it held."""

    cause: str
    lost: tuple[Lease, ...]


@attrs.frozen
class SessionUp:
    """The session (re)connected and restored the desired state."""

    restored: bool


@attrs.frozen
class SessionCrashed:
    """The session actor died of an unexpected exception."""

    cause: str


# -- supervisor -> session -------------------------------------------------


@attrs.frozen
class DesiredState:
    """What the application asked for that must survive a session restart."""

    joined: tuple[tuple[str, str], ...] = ()
    campaigns: frozenset[str] = frozenset()
    watched: frozenset[str] = frozenset()


@attrs.frozen
class Reconnect:
    """Connect again and restore ``desired``."""

    desired: DesiredState


@attrs.frozen
class InjectFailure:
    """Act as if the connection to the backend was lost (for tests and drills).

    With ``crash``, raise inside the session actor instead, as a bug would:
    the actor dies and the supervisor replaces it.
    """

    cause: str
    crash: bool = False


@attrs.frozen
class Shutdown:
    """Release leases, stand down, leave groups and close, gracefully."""


@attrs.frozen
class AwaitConnected:
    """Reply once the first connection is up, or with the error that stopped it."""


@attrs.frozen
class GetStatistics:
    """Reply the session's statistics."""
