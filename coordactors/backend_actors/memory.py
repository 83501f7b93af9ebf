"""memory:// (alias zake://): the embedded, in-process backend.

Every coordinator of the process that names the same namespace shares one
registry (``memory://`` is the default namespace, ``memory://name`` another),
kept in a dict under a threading lock.  Changes are pushed to every session
at once, so events and lock hand-overs need no polling.  This is the
reference backend: every behaviour test passes on it first.

URL: ``memory://[namespace]`` -- common options only.  By default a session
never expires (``session_ttl`` = none): it lives as long as its coordinator.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from coordactors.backend_actors._registry import Registry, new_document
from coordactors.backend_actors.local import LocalSession
from coordactors.characteristics import Characteristics as C

__all__ = ["MemorySession", "MemoryStore", "store"]


class MemoryStore:
    """One in-process registry and the sessions listening to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._doc = new_document("memory")
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        # In-process owners never die unseen (they deregister or expire), so
        # the registry needs a reap only once the clock reaches an expiry.
        self._reap_at = float("inf")

    def transaction(self) -> _Transaction:
        """The registry, exclusively, for one ``with`` block; listeners are told after a change."""
        return _Transaction(self)

    def changed(self) -> bool:
        return False

    def listen(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def close(self) -> None:
        """Nothing to close: the registry lives as long as the process."""


class _Transaction:
    """``MemoryStore.transaction()``: a plain class, cheaper per request than a generator context manager."""

    __slots__ = ("_registry", "_store")

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __enter__(self) -> Registry:
        store = self._store
        store._lock.acquire()
        try:
            now = time.monotonic()
            self._registry = registry = Registry(store._doc, now, _always_alive, 0)
            if now >= store._reap_at:
                store._reap_at = registry.reap()
        except BaseException:
            store._lock.release()
            raise
        return registry

    def __exit__(self, *exc_info: object) -> None:
        store, registry = self._store, self._registry
        try:
            if registry.next_expiry < store._reap_at:
                store._reap_at = registry.next_expiry
            listeners = list(store._listeners) if registry.dirty and exc_info[0] is None else ()
        finally:
            store._lock.release()
        for listener in listeners:
            listener()


def _always_alive(owner: dict[str, Any]) -> bool:
    return True  # in-process: a session is gone when it deregisters or expires


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def store(name: str = "") -> MemoryStore:
    """The process-wide registry of namespace ``name``."""
    with _stores_lock:
        found = _stores.get(name)
        if found is None:
            found = _stores[name] = MemoryStore(name)
        return found


class MemorySession(LocalSession):
    """Session of ``memory://`` and ``zake://``: in-process, pushed events."""

    CHARACTERISTICS = frozenset(
        {C.DISTRIBUTED_ACROSS_THREADS, C.NON_TIMEOUT_BASED, C.LINEARIZABLE, C.SEQUENTIAL, C.CAUSAL,
         C.SERIALIZABLE, C.SAME_VIEW_UNDER_PARTITIONS, C.SAME_VIEW_ACROSS_CLIENTS}
    )
    DEFAULTS = {"session_ttl": None}

    def open_storage(self) -> MemoryStore:
        return store((self.options.host or "") + self.options.path.rstrip("/"))
