"""The names of ``tooz.coordination``, served by coordactors.

Code written for tooz does ``from tooz import coordination``; change that
line to ``from coordactors.compat.tooz import coordination`` and
``coordination.get_coordinator``, the exception and event classes,
``Characteristics`` and ``CoordAsyncResult`` are all here.
"""

from __future__ import annotations

from coordactors.characteristics import Characteristics
from coordactors.compat.tooz.driver import CoordinationDriver, Hooks, get_coordinator
from coordactors.compat.tooz.events import Event, LeaderElected, MemberJoinedGroup, MemberLeftGroup
from coordactors.compat.tooz.exceptions import (
    GroupAlreadyExist,
    GroupNotCreated,
    GroupNotEmpty,
    InvalidArgument,
    LockAcquireFailed,
    MemberAlreadyExist,
    MemberNotJoined,
    OperationTimedOut,
    SerializationError,
    ToozConnectionError,
    ToozDriverChosenPoorly,
    ToozError,
    WatchCallbackNotFound,
)
from coordactors.compat.tooz.results import CoordAsyncResult, CoordinatorResult

__all__ = [
    "Characteristics",
    "CoordAsyncResult",
    "CoordinationDriver",
    "CoordinatorResult",
    "Event",
    "GroupAlreadyExist",
    "GroupNotCreated",
    "GroupNotEmpty",
    "Hooks",
    "InvalidArgument",
    "LeaderElected",
    "LockAcquireFailed",
    "MemberAlreadyExist",
    "MemberJoinedGroup",
    "MemberLeftGroup",
    "MemberNotJoined",
    "OperationTimedOut",
    "SerializationError",
    "ToozConnectionError",
    "ToozDriverChosenPoorly",
    "ToozError",
    "WatchCallbackNotFound",
    "get_coordinator",
]
