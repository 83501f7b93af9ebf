"""A tooz-compatible facade: code written for OpenStack tooz runs on coordactors.

Change one import::

    from tooz import coordination                          # before
    from coordactors.compat.tooz import coordination       # after

    coord = coordination.get_coordinator("redis://127.0.0.1:6379", b"worker-1")
    coord.start(start_heart=True)
    coord.join_group_create(b"workers")
    with coord.get_lock(b"cron"):
        ...

``import coordactors.compat.tooz as tooz`` gives ``tooz.ToozError`` and
``tooz.NotImplemented``; ``hashring.HashRing`` and
``partitioner.Partitioner`` are in like-named submodules.  See
:mod:`coordactors.compat.tooz.driver` for what differs from tooz (events are
pushed but still delivered by ``run_watchers()``; locks carry fences) and
:mod:`coordactors.compat.tooz.urls` for the URL options.
"""

from coordactors.compat.tooz.exceptions import NotImplemented, ToozError  # noqa: A004 - tooz's names

# The submodules import the two names above, so they come after them.
from coordactors.compat.tooz import coordination, hashring, locking, partitioner  # noqa: E402, I001
from coordactors.compat.tooz.coordination import (  # noqa: E402
    Characteristics,
    CoordAsyncResult,
    CoordinationDriver,
    GroupAlreadyExist,
    GroupNotCreated,
    GroupNotEmpty,
    LeaderElected,
    LockAcquireFailed,
    MemberAlreadyExist,
    MemberJoinedGroup,
    MemberLeftGroup,
    MemberNotJoined,
    OperationTimedOut,
    ToozConnectionError,
    ToozDriverChosenPoorly,
    WatchCallbackNotFound,
    get_coordinator,
)

__all__ = [
    "Characteristics",
    "CoordAsyncResult",
    "CoordinationDriver",
    "GroupAlreadyExist",
    "GroupNotCreated",
    "GroupNotEmpty",
    "LeaderElected",
    "LockAcquireFailed",
    "MemberAlreadyExist",
    "MemberJoinedGroup",
    "MemberLeftGroup",
    "MemberNotJoined",
    "NotImplemented",
    "OperationTimedOut",
    "ToozConnectionError",
    "ToozDriverChosenPoorly",
    "ToozError",
    "WatchCallbackNotFound",
    "coordination",
    "get_coordinator",
    "hashring",
    "locking",
    "partitioner",
]
