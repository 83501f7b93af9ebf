"""tooz's event classes: what ``run_watchers()`` passes to the callbacks.

Same names, constructor arguments and attributes as ``tooz.coordination``
(``group_id``, ``member_id``); unlike tooz's they are frozen and compare by
value.  ``group_id`` is the group id as the watcher registered it, and
``member_id`` is bytes, as tooz gives it.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Event", "LeaderElected", "MemberJoinedGroup", "MemberLeftGroup"]


class Event:
    """Base class of the events."""

    __slots__ = ()


@attrs.frozen(repr=False)
class MemberJoinedGroup(Event):
    """``member_id`` joined ``group_id``."""

    group_id: Any
    member_id: Any

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: group {self.group_id}: +member {self.member_id}>"


@attrs.frozen(repr=False)
class MemberLeftGroup(Event):
    """``member_id`` left ``group_id`` (asked to, or its session died)."""

    group_id: Any
    member_id: Any

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: group {self.group_id}: -member {self.member_id}>"


@attrs.frozen(repr=False)
class LeaderElected(Event):
    """``member_id`` (this member) was elected leader of ``group_id``."""

    group_id: Any
    member_id: Any

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: group {self.group_id}: leader {self.member_id}>"
