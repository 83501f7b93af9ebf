"""Lock messages and the Lease a grant replies with."""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs

from coordactors.errors import InvalidArgument, LockLost
from coordactors.messages import _validate as v
from coordactors.messages.base import Message

__all__ = ["Acquire", "Lease", "Release"]


_EVENT_CREATION = threading.Lock()


class LeaseState:
    """The mutable part of a Lease, shared between the holder and its session.

    ``expires_at`` is on the local monotonic clock, counted from when the
    request that granted or last refreshed the lease was SENT, minus a drift
    margin: a holder must never believe in a lease longer than the backend
    does.

    The ``lost`` event is made the first time someone asks for it: most
    leases are released without anyone waiting on it, and a
    ``threading.Event`` costs a condition variable to make and to set.
    """

    __slots__ = ("_event", "cause", "expires_at", "is_lost")

    def __init__(self, expires_at: float | None = None) -> None:
        self.expires_at = expires_at
        self.cause: str | None = None
        self.is_lost = False
        self._event: threading.Event | None = None

    @property
    def lost(self) -> threading.Event:
        """Set once the lease is lost (made on first use)."""
        event = self._event
        if event is None:
            with _EVENT_CREATION:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
        # After publishing the event: mark_lost either sees it and sets it,
        # or set is_lost before this reads it.
        if self.is_lost:
            event.set()
        return event

    def mark_lost(self, cause: str) -> None:
        """The lease is no longer guaranteed, because of ``cause``."""
        self.cause = cause
        self.is_lost = True
        event = self._event
        if event is not None:
            event.set()


@attrs.frozen
class Lease:
    """A granted lock.

    Attributes:
        name: the lock's name.
        fence: strictly increasing per lock name across every holder of the
            backend.  Pass it to whatever the lock protects, and have that
            reject writes carrying a lower fence than it has seen.
        member_id: the member holding it.
        acquired_at: wall-clock time of the grant (for humans; not for expiry).
        ttl: seconds the lease survives without refresh, or None where the lock
            is held for the life of the session (released by its death).

    Timeline of a TTL'd lease on a holder that stalls (GC pause, SIGSTOP)::

        t0  Acquire sent                    lease valid until t0 + ttl - margin
        t1  holder stalls, no refresh
        t0+ttl-margin  lease.check() raises LockLost locally
        t0+ttl  backend expires the key; another member may be granted a
                higher fence
        t2  holder resumes: check() raises, ``lost`` is set, and a LockLost
            event is emitted on the next refresh

    A write issued between check() and its arrival may still land after the
    expiry: that is what the fence is for.
    """

    name: str
    fence: int
    member_id: str
    acquired_at: float = attrs.field(factory=time.time)
    ttl: float | None = None
    _state: LeaseState = attrs.field(factory=LeaseState, eq=False, repr=False, alias="state")

    @property
    def lost(self) -> threading.Event:
        """Set once the lease is no longer guaranteed (released, expired or lost)."""
        return self._state.lost

    def check(self) -> None:
        """Raise :class:`~coordactors.errors.LockLost` if the lease is no longer guaranteed."""
        state = self._state
        if state.is_lost:
            raise LockLost(f"lock {self.name!r} (fence {self.fence}) was lost: {state.cause}")
        if state.expires_at is not None and time.monotonic() >= state.expires_at:
            raise LockLost(f"lock {self.name!r} (fence {self.fence}) expired locally: its TTL of {self.ttl}s ran out without a refresh")

    @property
    def held(self) -> bool:
        """True while ``check()`` would not raise."""
        try:
            self.check()
        except LockLost:
            return False
        return True


@attrs.frozen
class Acquire(Message):
    """Acquire lock ``name``.

    ``timeout``: None waits until granted, 0 tries once, otherwise seconds to
    wait.  ``ttl``: seconds the lease survives without refresh (the session
    refreshes it while alive); None is the backend's default.
    Replies a :class:`Lease`; raises LockTimeout.
    """

    name: str = attrs.field(converter=v.converter(v.lock_name, "name"))
    timeout: float | None = attrs.field(default=None, converter=v.converter(v.timeout, "timeout"))
    ttl: float | None = attrs.field(default=None, converter=v.converter(v.ttl, "ttl"))


def _lease_or_name(value: Any) -> Any:
    if isinstance(value, Lease):
        return value
    try:
        return v.lock_name(value, "name_or_lease")
    except InvalidArgument:
        raise InvalidArgument(f"'name_or_lease' must be a Lease or a lock name (got {value!r})") from None


@attrs.frozen
class Release(Message):
    """Release a lock, by name or by the Lease.  Replies None; raises LockNotHeld."""

    name_or_lease: Any = attrs.field(converter=_lease_or_name)

    @property
    def name(self) -> str:
        """The lock's name."""
        target = self.name_or_lease
        return target.name if isinstance(target, Lease) else target
