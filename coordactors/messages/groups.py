"""Group membership messages."""

from __future__ import annotations

from typing import Any

import attrs

from coordactors.messages import _validate as v
from coordactors.messages.base import Message

__all__ = [
    "CreateGroup",
    "DeleteGroup",
    "GetCapabilities",
    "GetGroups",
    "GetMembers",
    "Join",
    "Leave",
    "UpdateCapabilities",
]

_group = v.converter(v.name, "group")


@attrs.frozen
class CreateGroup(Message):
    """Create ``group``.  Replies None; raises GroupAlreadyExists."""

    group: str = attrs.field(converter=_group)


@attrs.frozen
class DeleteGroup(Message):
    """Delete an empty ``group``.  Replies None; raises GroupNotFound, GroupNotEmpty."""

    group: str = attrs.field(converter=_group)


@attrs.frozen
class GetGroups(Message):
    """List every group.  Replies ``frozenset[str]``."""


@attrs.frozen
class Join(Message):
    """Join ``group`` with ``capabilities`` (any JSON value).

    Replies None; raises GroupNotFound (unless ``create``, which creates the
    group first), MemberAlreadyJoined.  The membership lives as long as the
    session: the supervisor re-joins it after a session is restored.
    """

    group: str = attrs.field(converter=_group)
    capabilities: Any = None
    create: bool = attrs.field(default=False, converter=v.converter(v.flag, "create"))
    capabilities_json: str = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "capabilities_json", v.capabilities_json(self.capabilities))


@attrs.frozen
class Leave(Message):
    """Leave ``group`` (standing down if leader).  Replies None; raises
    GroupNotFound, MemberNotJoined."""

    group: str = attrs.field(converter=_group)


@attrs.frozen
class GetMembers(Message):
    """List the members of ``group``.  Replies ``frozenset[str]``; raises GroupNotFound."""

    group: str = attrs.field(converter=_group)


@attrs.frozen
class GetCapabilities(Message):
    """Read the capabilities of ``member`` in ``group``.  Replies the value;
    raises GroupNotFound, MemberNotJoined."""

    group: str = attrs.field(converter=_group)
    member: str = attrs.field(converter=v.converter(v.name, "member"))


@attrs.frozen
class UpdateCapabilities(Message):
    """Replace this member's capabilities in ``group``.  Replies None; raises
    GroupNotFound, MemberNotJoined."""

    group: str = attrs.field(converter=_group)
    capabilities: Any = None
    capabilities_json: str = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "capabilities_json", v.capabilities_json(self.capabilities))
