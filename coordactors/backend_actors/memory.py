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

import contextlib
import threading
import time
from typing import Any, Callable, Iterator

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

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Registry]:
        with self._lock:
            registry = Registry(self._doc, time.monotonic(), _always_alive, 0)
            registry.reap()
            yield registry
            listeners = list(self._listeners) if registry.dirty else ()
        for listener in listeners:
            listener()

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
