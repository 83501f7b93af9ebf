"""Request messages: frozen attrs values validated on construction."""

from coordactors.messages.base import Message
from coordactors.messages.groups import (
    CreateGroup,
    DeleteGroup,
    GetCapabilities,
    GetGroups,
    GetMembers,
    Join,
    Leave,
    UpdateCapabilities,
)
from coordactors.messages.leaders import Campaign, GetLeader, StandDown
from coordactors.messages.locks import Acquire, Lease, Release
from coordactors.messages.session import Heartbeat, Unwatch, Watch

__all__ = [
    "Acquire",
    "Campaign",
    "CreateGroup",
    "DeleteGroup",
    "GetCapabilities",
    "GetGroups",
    "GetLeader",
    "GetMembers",
    "Heartbeat",
    "Join",
    "Lease",
    "Leave",
    "Message",
    "Release",
    "StandDown",
    "Unwatch",
    "UpdateCapabilities",
    "Watch",
]
