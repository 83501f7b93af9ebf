"""tooz's exception classes, and the one table mapping coordactors' errors to them.

The tree mirrors tooz 8.1.0 (``tooz.ToozError`` and
``tooz.coordination.*``), names, constructor arguments and attributes
included, so ``except coordination.GroupNotCreated as e: e.group_id`` works::

    ToozError                      (.cause: the underlying exception, or None)
    ├── NotImplemented             (also NotImplementedError)
    ├── ToozConnectionError
    ├── ToozDriverChosenPoorly
    ├── OperationTimedOut
    ├── LockAcquireFailed
    ├── GroupNotCreated            (.group_id)
    ├── GroupAlreadyExist          (.group_id)
    ├── GroupNotEmpty              (.group_id)
    ├── MemberAlreadyExist         (.group_id, .member_id)
    ├── MemberNotJoined            (.group_id, .member_id)
    ├── WatchCallbackNotFound      (.group_id, .callback)
    ├── SerializationError
    └── InvalidArgument            (also ValueError; coordactors' addition)

A translated error chains the coordactors error both as ``__cause__`` and as
tooz's ``cause`` attribute.
"""

from __future__ import annotations

import builtins
import contextlib
from typing import Any, Callable, Iterator

from coordactors import errors

__all__ = [
    "GroupAlreadyExist",
    "GroupNotCreated",
    "GroupNotEmpty",
    "InvalidArgument",
    "LockAcquireFailed",
    "MemberAlreadyExist",
    "MemberNotJoined",
    "NotImplemented",
    "OperationTimedOut",
    "SerializationError",
    "ToozConnectionError",
    "ToozDriverChosenPoorly",
    "ToozError",
    "WatchCallbackNotFound",
    "translated",
]


class ToozError(Exception):
    """Base of every error the facade raises, as ``tooz.ToozError``.

    Attributes:
        cause: the exception this one was translated from, or None.
    """

    def __init__(self, message: Any, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class NotImplemented(builtins.NotImplementedError, ToozError):  # noqa: A001 - tooz's name, shadowing included
    """The operation or option has no meaning on this backend (tooz's ``NotImplemented``)."""

    def __init__(self, message: Any = "not implemented", cause: BaseException | None = None) -> None:
        ToozError.__init__(self, message, cause)


class ToozConnectionError(ToozError):
    """The backend could not be reached or the connection was lost."""


class ToozDriverChosenPoorly(ToozError):
    """The backend lacks a characteristic ``get_coordinator`` was asked for."""


class OperationTimedOut(ToozError):
    """The wait for a result ran out."""


class LockAcquireFailed(ToozError):
    """``with lock:`` could not acquire the lock."""


class SerializationError(ToozError):
    """Capabilities that cannot be stored (not made of msgpack-able values)."""


class InvalidArgument(ToozError, ValueError):
    """A malformed URL, option, group id or member id (also a ValueError, as tooz raises for bad options)."""


class GroupNotCreated(ToozError):
    """The group does not exist."""

    def __init__(self, group_id: Any) -> None:
        self.group_id = group_id
        super().__init__(f"Group {group_id} does not exist")


class GroupAlreadyExist(ToozError):
    """The group exists already."""

    def __init__(self, group_id: Any) -> None:
        self.group_id = group_id
        super().__init__(f"Group {group_id} already exists")


class MemberAlreadyExist(ToozError):
    """The member has already joined the group."""

    def __init__(self, group_id: Any, member_id: Any) -> None:
        self.group_id = group_id
        self.member_id = member_id
        super().__init__(f"Member {member_id} has already joined {group_id}")


class MemberNotJoined(ToozError):
    """The member is not in the group."""

    def __init__(self, group_id: Any, member_id: Any) -> None:
        self.group_id = group_id
        self.member_id = member_id
        super().__init__(f"Member {member_id} has not joined {group_id}")


class GroupNotEmpty(ToozError):
    """The group still has members."""

    def __init__(self, group_id: Any) -> None:
        self.group_id = group_id
        super().__init__(f"Group {group_id} is not empty")


class WatchCallbackNotFound(ToozError):
    """``unwatch_*`` was given a callback that is not registered on the group."""

    def __init__(self, group_id: Any, callback: Any) -> None:
        self.group_id = group_id
        self.callback = callback
        name = getattr(callback, "__name__", repr(callback))
        super().__init__(f"Callback {name} is not registered on group {group_id}")


def _plain(exc: errors.CoordinationError, kind: type[ToozError]) -> ToozError:
    return kind(str(exc), cause=exc)


# coordactors error -> how to build the tooz one from (exc, group_id, member_id);
# most specific first (CoordinatorStopped is a BackendUnavailable).
_TABLE: list[tuple[type[errors.CoordinationError], Callable[[errors.CoordinationError, Any, Any], ToozError]]] = [
    (errors.GroupNotFound, lambda exc, group, member: GroupNotCreated(group)),
    (errors.GroupAlreadyExists, lambda exc, group, member: GroupAlreadyExist(group)),
    (errors.GroupNotEmpty, lambda exc, group, member: GroupNotEmpty(group)),
    (errors.MemberAlreadyJoined, lambda exc, group, member: MemberAlreadyExist(group, member)),
    (errors.MemberNotJoined, lambda exc, group, member: MemberNotJoined(group, member)),
    (errors.BackendUnavailable, lambda exc, group, member: _plain(exc, ToozConnectionError)),
    (errors.OperationTimedOut, lambda exc, group, member: _plain(exc, OperationTimedOut)),
    (errors.NotSupported, lambda exc, group, member: _plain(exc, NotImplemented)),
    (errors.InvalidArgument, lambda exc, group, member: _plain(exc, InvalidArgument)),
]


def translate(exc: BaseException, group_id: Any = None, member_id: Any = None) -> BaseException:
    """The tooz exception for ``exc`` (itself if it is not a coordactors error)."""
    if isinstance(exc, ToozError) or not isinstance(exc, errors.CoordinationError):
        return exc
    for kind, build in _TABLE:
        if isinstance(exc, kind):
            result = build(exc, group_id, member_id)
            break
    else:
        result = ToozError(str(exc), cause=exc)
    result.cause = exc
    result.__cause__ = exc
    return result


@contextlib.contextmanager
def translated(group_id: Any = None, member_id: Any = None) -> Iterator[None]:
    """Re-raise coordactors errors raised in the block as tooz ones."""
    try:
        yield
    except errors.CoordinationError as exc:
        raise translate(exc, group_id, member_id) from exc
