"""Exceptions raised by coordactors.

Every exception the library raises on purpose derives from
:class:`CoordinationError`::

    CoordinationError
    ├── InvalidArgument (also ValueError)        you asked for something malformed
    ├── BackendUnavailable                       the backend could not be reached
    │   ├── ConnectionSuspended                  the connection dropped; the session may live on
    │   └── CoordinatorStopped                   the coordinator was stopped
    ├── OperationTimedOut (also TimeoutError)    the caller's wait ran out
    ├── NotSupported                             the backend cannot do this
    ├── GroupNotFound
    ├── GroupAlreadyExists
    ├── GroupNotEmpty
    ├── MemberAlreadyJoined
    ├── MemberNotJoined
    ├── LockTimeout                              the backend refused a lock in time
    ├── LockNotHeld                              you released what you do not hold
    └── LockLost                                 the world took a lock you held

``LockNotHeld`` is a caller's mistake; ``LockLost`` is an external loss (the
session expired, the connection dropped, the TTL lapsed).  They are kept apart
on purpose, as trio keeps ``ClosedResourceError`` and ``BrokenResourceError``.

The dispatcher attaches ``.request`` (the message being served) and
``.backend`` (the URL, password removed) once, so backends raise plain
exceptions and the context is added in one place.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailable",
    "ConnectionSuspended",
    "CoordinationError",
    "CoordinatorStopped",
    "GroupAlreadyExists",
    "GroupNotEmpty",
    "GroupNotFound",
    "InvalidArgument",
    "LockLost",
    "LockNotHeld",
    "LockTimeout",
    "MemberAlreadyJoined",
    "MemberNotJoined",
    "NotSupported",
    "OperationTimedOut",
]


class CoordinationError(Exception):
    """Base class of every error coordactors raises on purpose.

    Attributes:
        request: the message being served when the error arose, or None.
        backend: the backend URL with any password removed, or None.
    """

    request: Any = None
    backend: str | None = None

    def with_context(self, request: Any, backend: str | None) -> CoordinationError:
        """Attach the request and backend once, unless already attached."""
        if self.request is None:
            self.request = request
        if self.backend is None:
            self.backend = backend
        return self

    def __str__(self) -> str:
        text = super().__str__()
        if self.backend and self.backend not in text:
            text = f"{text} [{self.backend}]"
        return text


class InvalidArgument(CoordinationError, ValueError):
    """An argument, URL or option is malformed; the text says which and why."""


class BackendUnavailable(CoordinationError):
    """The backend could not be reached or the connection was lost.

    The underlying client error, if any, is chained as ``__cause__``.
    """


class ConnectionSuspended(BackendUnavailable):
    """The connection dropped, but the session may live on at the backend.

    (ZooKeeper: the client is reconnecting, possibly to another server.)
    The request that got this may or may not have been applied; leases
    stand until their local expiry, and the session resumes or fails.
    """


class CoordinatorStopped(BackendUnavailable):
    """The coordinator was stopped; it serves no more requests."""


class OperationTimedOut(CoordinationError, TimeoutError):
    """The caller's wait for a reply ran out.

    Anything the request would have produced after this (a lock granted late)
    is undone by the session, so nothing is left behind.
    """


class NotSupported(CoordinationError):
    """The backend, as configured, cannot do what was asked."""


class GroupNotFound(CoordinationError):
    """The group does not exist."""


class GroupAlreadyExists(CoordinationError):
    """The group exists already."""


class GroupNotEmpty(CoordinationError):
    """The group still has members, so it cannot be deleted."""


class MemberAlreadyJoined(CoordinationError):
    """This member id is already a member of the group."""


class MemberNotJoined(CoordinationError):
    """The member is not a member of the group."""


class LockTimeout(CoordinationError):
    """The lock was held by someone else for the whole of the timeout."""


class LockNotHeld(CoordinationError):
    """This member holds no lease on the lock it tried to release."""


class LockLost(CoordinationError):
    """A lock this member held is no longer guaranteed to be held.

    Raised by ``Lease.check()``; the matching event is
    :class:`coordactors.events.LockLost`.
    """
