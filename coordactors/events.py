"""Events pushed to subscribers (frozen attrs values).

Group events (:class:`MemberJoined`, :class:`MemberLeft`,
:class:`LeaderElected`) go to the subscribers of ``Watch(group, ...)``, in
the order the backend applied them.  Session events (:class:`SessionLost`,
:class:`SessionRestored`, :class:`LockLost`) go to the subscribers of
``Watch(None, ...)`` / ``coord.subscribe(...)``.
"""

from __future__ import annotations

import attrs

__all__ = [
    "ALL",
    "GROUP_EVENTS",
    "SESSION_EVENTS",
    "Event",
    "LeaderElected",
    "LockLost",
    "MemberJoined",
    "MemberLeft",
    "SessionLost",
    "SessionRestored",
]


class Event:
    """Base class of all events."""

    __slots__ = ()


@attrs.frozen
class MemberJoined(Event):
    """``member`` joined ``group``."""

    group: str
    member: str


@attrs.frozen
class MemberLeft(Event):
    """``member`` left ``group``: it asked to, or its session died or expired."""

    group: str
    member: str


@attrs.frozen
class LeaderElected(Event):
    """``member`` became the leader of ``group``."""

    group: str
    member: str


@attrs.frozen
class LockLost(Event):
    """The lease with ``fence`` on lock ``name`` is no longer guaranteed.

    From the moment this is emitted (and ``lease.lost`` is set) another member
    may be granted the lock with a higher fence.  Work done under the lease
    after this point must be fenced or abandoned.
    """

    name: str
    fence: int
    cause: str


@attrs.frozen
class SessionLost(Event):
    """The session with the backend failed.

    Every lease it held is lost (a :class:`LockLost` follows for each), and
    other members may see this member leave its groups.  The supervisor
    reconnects with capped exponential backoff.
    """

    cause: str


@attrs.frozen
class SessionRestored(Event):
    """The session is back: groups, capabilities, campaigns and watches are
    as the application had asked.  Leases are not restored: acquire again.

    ``downtime`` is the number of seconds since :class:`SessionLost`.
    """

    downtime: float


GROUP_EVENTS: frozenset[type[Event]] = frozenset({MemberJoined, MemberLeft, LeaderElected})
SESSION_EVENTS: frozenset[type[Event]] = frozenset({SessionLost, SessionRestored, LockLost})
ALL: frozenset[type[Event]] = GROUP_EVENTS | SESSION_EVENTS
"""Every event class: the default filter of ``Watch`` and ``subscribe``."""
