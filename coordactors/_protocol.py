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
import time
from typing import Any, Callable

import attrs
import pykka
from pykka._future import _Unset

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


_ABANDONED: Any = object()
"""What a caller who gave up puts in a RequestFuture's claims."""


class RequestFuture(pykka.ThreadingFuture):  # type: ignore[type-arg]
    """The pykka future ``Coordinator.ask`` returns.

    ``get(timeout=...)`` raises :class:`OperationTimedOut` instead of pykka's
    ``Timeout``, and a caller that times out abandons the request: a result
    that arrives later is refused, so the session releases it.

    The reply travels through a ``queue.SimpleQueue`` of its own, the cheapest
    way to wake a waiting thread (pykka's condition variable, or even a plain
    lock handed over, cost the session and the caller several microseconds
    more per request).  Whether a late result or the caller's giving up came
    first is settled without a lock: each appends its claim to a list (one
    atomic append) and the first entry wins.
    """

    # pykka.Future's instance attributes, as class attributes: no __init__ chain per request.
    _get_hook = None
    _get_hook_result: Any = _Unset()

    __slots__ = ("_box", "_claims", "_result", "_what")

    def __init__(self, what: str = "request") -> None:
        self._result: tuple[Any, Any] | None = None  # (value, exc_info) once taken from the box
        self._box: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._claims: list[Any] = []
        self._what = what

    def get(self, *, timeout: float | None = None) -> Any:
        result = self._result
        if result is None:
            if self._get_hook is not None:
                return pykka.Future.get(self, timeout=timeout)
            try:
                result = self._box.get(timeout=timeout) if timeout is None or timeout > 0 else self._box.get_nowait()
            except queue.Empty:
                result = self._give_up(f"{self._what}: no reply within {timeout}s; the request was abandoned")
            self._result = result
            self._box.put(result)  # for any other thread waiting on this future
        value, exc_info = result
        if exc_info is None:
            return value
        exc_type, exc_value, exc_traceback = exc_info
        if exc_value is None:
            exc_value = exc_type()
        if exc_value.__traceback__ is not exc_traceback:
            raise exc_value.with_traceback(exc_traceback)
        raise exc_value

    def _give_up(self, why: str) -> tuple[Any, Any]:
        claims = self._claims
        claims.append(_ABANDONED)
        if claims[0] is not _ABANDONED:
            return self._box.get()  # the reply came first; it is on its way into the box
        exc = OperationTimedOut(why)
        return (None, (OperationTimedOut, exc, None))

    def _complete(self, result: tuple[Any, Any]) -> bool:
        claims = self._claims
        claims.append(result)
        if claims[0] is not result or self._get_hook is not None:
            return False
        self._box.put(result)
        return True

    def set(self, value: Any = None) -> None:
        if not self._complete((value, None)):
            raise queue.Full

    def set_exception(self, exc_info: Any = None) -> None:
        if not self._complete((None, exc_info or sys.exc_info())):
            raise queue.Full

    def set_get_hook(self, func: Any) -> None:
        if self._claims:
            raise queue.Full
        pykka.Future.set_get_hook(self, func)

    def resolve(self, value: Any) -> bool:
        return self._complete((value, None))

    def reject(self, exc: BaseException) -> None:
        self._complete((None, (type(exc), exc, exc.__traceback__)))

    def wanted(self) -> bool:
        claims = self._claims
        return not claims or claims[0] is not _ABANDONED

    def abandon(self) -> None:
        """Give up on the request, as a caller that timed out would."""
        if self._result is None:
            result = self._give_up(f"{self._what}: abandoned by the caller")
            self._result = result
            self._box.put(result)


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
