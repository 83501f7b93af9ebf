"""Session-level messages."""

from __future__ import annotations

from typing import Any

import attrs
import pykka

from coordactors.errors import InvalidArgument
from coordactors.events import ALL, Event
from coordactors.messages import _validate as v
from coordactors.messages.base import Message

__all__ = ["Heartbeat", "Unwatch", "Watch"]


@attrs.frozen
class Heartbeat(Message):
    """Refresh the session, its memberships and leases now.

    Replies a float: seconds until the next heartbeat is due.  The process-wide
    ticker sends this on its own; applications need not.
    """


def _subscriber(value: Any) -> Any:
    if isinstance(value, pykka.ActorRef) or callable(value):
        return value
    raise InvalidArgument(f"'subscriber' must be a pykka.ActorRef or a callable (got {type(value).__name__})")


def _events(value: Any) -> frozenset[type[Event]]:
    if isinstance(value, type):
        value = (value,)
    try:
        chosen = frozenset(value)
    except TypeError:
        raise InvalidArgument(f"'events' must be event classes from coordactors.events (got {value!r})") from None
    unknown = [e for e in chosen if e not in ALL]
    if unknown or not chosen:
        raise InvalidArgument(f"'events' must be a non-empty set of classes from coordactors.events.ALL (got {sorted(map(repr, unknown))})")
    return chosen


@attrs.frozen
class Watch(Message):
    """Send events of ``group`` to ``subscriber``.

    ``group=None`` subscribes to the coordinator's own events (SessionLost,
    SessionRestored, LockLost).  A subscriber is a ``pykka.ActorRef`` (events
    arrive by ``tell``) or a callable (called on an executor thread, in order).
    Replies None.
    """

    group: str | None = attrs.field(converter=v.optional_group)
    subscriber: Any = attrs.field(converter=_subscriber)
    events: frozenset[type[Event]] = attrs.field(default=ALL, converter=_events)


@attrs.frozen
class Unwatch(Message):
    """Stop sending events of ``group`` to ``subscriber``.  Replies None."""

    group: str | None = attrs.field(converter=v.optional_group)
    subscriber: Any = attrs.field(converter=_subscriber)
