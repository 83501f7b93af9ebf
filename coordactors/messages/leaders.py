"""Leader election messages.

Leadership of a group is a lock named ``__leader__/<group>`` held by the
campaigning member; ``GetLeader`` reads its holder and a change of holder is a
``LeaderElected`` event.
"""

from __future__ import annotations

import attrs

from coordactors.messages import _validate as v
from coordactors.messages.base import Message

__all__ = ["Campaign", "GetLeader", "StandDown"]

_group = v.converter(v.name, "group")


@attrs.frozen
class Campaign(Message):
    """Stand for leader of ``group`` until ``StandDown`` or ``Leave``.

    Replies None at once; leadership comes as a ``LeaderElected`` event and
    ``GetLeader``.  Raises GroupNotFound.
    """

    group: str = attrs.field(converter=_group)


@attrs.frozen
class StandDown(Message):
    """Stop standing for leader of ``group``, releasing leadership if held.
    Replies None."""

    group: str = attrs.field(converter=_group)


@attrs.frozen
class GetLeader(Message):
    """Read the leader of ``group``.  Replies a member id or None; raises GroupNotFound."""

    group: str = attrs.field(converter=_group)
