"""tooz's lock object over a coordactors fenced lease.

``acquire(blocking=True)`` waits for ever, ``acquire(False)`` tries once,
``acquire(5)`` (or ``acquire(True, timeout=5)``) waits up to 5 s; each returns
True or False.  ``release()`` returns True, or False if this object did not
hold the lock (never acquired, already released, or lost: the backend gave it
up because the session failed).  ``with lock:`` raises
:class:`~coordactors.compat.tooz.exceptions.LockAcquireFailed` when it cannot
acquire, as tooz's does.

coordactors' addition: ``lock.fence``, the fence of the lease held (an int
strictly increasing across every holder of the lock name), to pass to the
resource the lock protects so it can refuse a stale holder's writes.

Leases are refreshed by the coordinator's own heartbeat, so
``lock.heartbeat()`` only reports whether the lease is still held.
"""

from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING, Any

from coordactors import errors
from coordactors.compat.tooz.exceptions import LockAcquireFailed, NotImplemented, translate
from coordactors.messages import Acquire, Release

if TYPE_CHECKING:
    from coordactors import Coordinator
    from coordactors.messages import Lease

__all__ = ["CoordactorsLock", "Lock"]

RELEASE_TIMEOUT = 30.0
"""Seconds ``release()`` waits for the backend."""


class _LockProxy:
    """``with lock(blocking=False):`` -- tooz passes ``__enter__`` arguments through a call."""

    def __init__(self, lock: Lock, *args: Any, **kwargs: Any) -> None:
        self.lock, self.args, self.kwargs = lock, args, kwargs

    def __enter__(self) -> Lock:
        return self.lock.__enter__(*self.args, **self.kwargs)

    def __exit__(self, *exc_info: Any) -> None:
        self.lock.__exit__(*exc_info)


class Lock(abc.ABC):
    """The lock interface of ``tooz.locking.Lock``."""

    def __init__(self, name: Any) -> None:
        if not name:
            raise ValueError("Locks must be provided a name")
        self._name = name

    @property
    def name(self) -> Any:
        """The lock's name, as given to ``get_lock``."""
        return self._name

    def __call__(self, *args: Any, **kwargs: Any) -> _LockProxy:
        return _LockProxy(self, *args, **kwargs)

    def __enter__(self, *args: Any, **kwargs: Any) -> Lock:
        if not self.acquire(*args, **kwargs):
            raise LockAcquireFailed(f"Acquiring lock {self.name} failed")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def is_still_owner(self) -> bool:
        """True if this object holds the lock and the backend still guarantees it."""
        raise NotImplemented("is_still_owner is not implemented")

    def break_(self) -> bool:
        """Forcefully release someone's lock: refused, as fences make it unnecessary."""
        raise NotImplemented("break_() is not supported: a lease expires with its holder's session")

    @abc.abstractmethod
    def acquire(self, blocking: Any = True, shared: bool = False, timeout: float | None = None) -> bool:
        """Acquire the lock; see the module docstring for ``blocking``."""

    @abc.abstractmethod
    def release(self) -> bool:
        """Release the lock; True if released."""


class CoordactorsLock(Lock):
    """A tooz lock served by ``Acquire``/``Release`` on a coordactors coordinator.

    Each lock object holds at most one lease; two lock objects of the same
    name exclude each other even on one coordinator, as in tooz.
    """

    def __init__(self, coordinator: Coordinator, name: Any) -> None:
        super().__init__(name)
        self._coordinator = coordinator
        self._guard = threading.Lock()
        self._lease: Lease | None = None

    def __repr__(self) -> str:
        lease = self._lease
        state = f"held, fence {lease.fence}" if lease is not None and not lease.lost.is_set() else "not held"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    @property
    def fence(self) -> int | None:
        """The fence of the lease this object holds, or None."""
        lease = self._lease
        return lease.fence if lease is not None else None

    @property
    def lease(self) -> Lease | None:
        """The coordactors Lease this object holds, or None."""
        return self._lease

    @property
    def acquired(self) -> bool:
        """True while this object holds a lease the backend still guarantees."""
        lease = self._lease
        return lease is not None and not lease.lost.is_set()

    def acquire(self, blocking: Any = True, shared: bool = False, timeout: float | None = None) -> bool:
        """Acquire the lock: ``blocking`` True waits (up to ``timeout`` if given), False tries once, a number is a timeout."""
        if shared:
            raise NotImplemented("shared locks are not supported")
        if not isinstance(blocking, bool):
            blocking, timeout = True, float(blocking)
        wait: float | None = (timeout if timeout is not None else None) if blocking else 0.0
        try:
            lease = self._coordinator.ask(Acquire(self.name, wait), block=True)
        except errors.LockTimeout:
            return False
        except errors.CoordinationError as exc:
            raise translate(exc) from exc
        with self._guard:
            self._lease = lease
        return True

    def release(self) -> bool:
        """Release the lease; False if this object held none (or it was lost)."""
        with self._guard:
            lease, self._lease = self._lease, None
        if lease is None:
            return False
        try:
            self._coordinator.ask(Release(lease), block=True, timeout=RELEASE_TIMEOUT)
        except (errors.LockNotHeld, errors.CoordinatorStopped):
            return False
        except errors.CoordinationError as exc:
            raise translate(exc) from exc
        return True

    def heartbeat(self) -> bool:
        """True if the lease is still held (the coordinator refreshes it by itself)."""
        return self.acquired

    def is_still_owner(self) -> bool:
        """True if this object holds the lock and the backend still guarantees it."""
        return self.acquired
