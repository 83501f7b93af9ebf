"""LocalSession: the session of the embedded backends (memory, file, ipc).

The three keep the same registry document (see ``_registry``) and share this
session; each supplies only a storage: where the document lives, how it is
locked, and how a change is noticed (pushed by memory, polled by file and ipc).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, ContextManager, Protocol

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import Coalescing
from coordactors.backend_actors._registry import Registry
from coordactors.backend_actors.base import SessionActor
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release

logger = logging.getLogger(__name__)

__all__ = ["SAME_HOST", "LocalSession", "PolledStorage", "Storage"]

_EVENT_CLASSES = {"join": MemberJoined, "leave": MemberLeft, "leader": LeaderElected}


class Storage(Protocol):
    """Where a registry lives."""

    def transaction(self) -> ContextManager[Registry]:
        """Exclusive access to the registry, reaped; written back if changed."""

    def changed(self) -> bool:
        """Cheaply: did anything change since the last call? (for polling)"""

    def listen(self, callback: Any) -> None:
        """Call ``callback()`` after every change (push backends only)."""

    def unlisten(self, callback: Any) -> None:
        """Undo ``listen``."""

    def close(self) -> None:
        """Release the storage's handles (not the data)."""


SAME_HOST = frozenset(
    {C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.NON_TIMEOUT_BASED, C.LINEARIZABLE,
     C.SEQUENTIAL, C.CAUSAL, C.SERIALIZABLE, C.SAME_VIEW_UNDER_PARTITIONS, C.SAME_VIEW_ACROSS_CLIENTS}
)
"""What file:// and ipc:// guarantee: one host's processes, one consistent registry."""


class PolledStorage:
    """For storages shared between processes: others' changes are polled
    (``changed()``), never pushed, so there is nothing to listen to."""

    def listen(self, callback: Any) -> None:
        """Changes by other processes are polled, not pushed."""

    def unlisten(self, callback: Any) -> None:
        """Nothing to undo."""


class _Changed:
    """The storage says the registry changed (pushed)."""

    __slots__ = ()


_CHANGED = _Changed()


class LocalSession(Coalescing, SessionActor):
    """A session whose backend is a registry in local storage.

    Acquires and releases queued together (many callers sharing the
    coordinator) are done in one registry transaction: one lock of the
    storage, one write (on file://, one atomic rename) for the batch."""

    COALESCED = frozenset({Acquire, Release})
    # A release between a failed try and the waiter's registration notified
    # no one (there was no waiter yet): the waiter looks once more.
    RETRY_ONCE_WAITING = True
    token: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seq = 0
        self._change_queued = False
        self._follows_events = False
        self._control[_Changed] = self._on_changed

    def open_storage(self) -> Storage:
        """Open the storage.  Executor thread; may block."""
        raise NotImplementedError

    def open(self) -> Storage:
        return self.open_storage()

    def _txn(self) -> ContextManager[Registry]:
        return self.conn.transaction()  # type: ignore[no-any-return]

    def on_connected(self) -> None:
        self.token = uuid.uuid4().hex
        with self._txn() as reg:
            reg.register_owner(self.token, self.member_id, self.options.session_ttl)
            self._seq = reg.seq
        self.conn.listen(self._notify)

    def _notify(self) -> None:
        # Runs on whichever thread changed the registry: coalesce, then tell --
        # only a session that follows events or waits for a lock cares.  Waking
        # every session of the process on every change made each request pay
        # for the other sessions' thread switches.
        if self._change_queued or not (self._follows_events or self._waiters or self._campaigns):
            return
        self._change_queued = True
        self.tell_self(_CHANGED)

    def close(self) -> None:
        storage = self.conn
        if storage is None:
            return
        storage.unlisten(self._notify)
        try:
            with storage.transaction() as reg:
                reg.remove_owner(self.token)
        finally:
            storage.close()

    # -- groups -------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        with self._txn() as reg:
            reg.create_group(group)

    def do_delete_group(self, group: str) -> None:
        with self._txn() as reg:
            reg.delete_group(group)

    def do_get_groups(self) -> frozenset[str]:
        with self._txn() as reg:
            return reg.groups()

    def do_group_exists(self, group: str) -> bool:
        with self._txn() as reg:
            return reg.group_exists(group)

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        with self._txn() as reg:
            reg.join(group, self.member_id, capabilities_json, self.token, create)

    def do_leave(self, group: str) -> None:
        with self._txn() as reg:
            reg.leave(group, self.member_id, self.token)

    def do_get_members(self, group: str) -> frozenset[str]:
        with self._txn() as reg:
            return reg.members(group)

    def do_get_capabilities(self, group: str, member: str) -> str:
        with self._txn() as reg:
            return reg.capabilities(group, member)

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        with self._txn() as reg:
            reg.update_capabilities(group, self.member_id, capabilities_json, self.token)

    # -- locks ----------------------------------------------------------------

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        with self._txn() as reg:
            return reg.try_acquire(name, self.token, self.member_id, ttl)

    def do_release(self, name: str, fence: int) -> bool:
        with self._txn() as reg:
            return reg.release(name, self.token, fence)

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        sent_at = time.monotonic()
        ttls = [None if lease is not None else self.lease_ttl_of(call.message) for call, lease in run]
        try:
            with self._txn() as reg:
                results = [reg.try_acquire(call.message.name, self.token, self.member_id, ttl) if lease is None
                           else reg.release(lease.name, self.token, lease.fence) for (call, lease), ttl in zip(run, ttls)]
        except Exception:  # noqa: BLE001 - nothing was written; the usual path reports it, call by call
            for call, _lease in run:
                self._serve(call)
            return
        freed = []
        for (call, lease), result in zip(run, results):
            if lease is None:
                self.settle_acquire(call, result, sent_at)
            else:
                freed.append(lease.name)
                self.settle_release(call, lease, result)
        self.retry_freed(freed)

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        with self._txn() as reg:
            return reg.refresh_locks(self.token, [(lease.name, lease.fence, lease.ttl) for lease in leases])

    def do_lock_holder(self, name: str) -> str | None:
        with self._txn() as reg:
            return reg.holder(name)

    # -- liveness and events ------------------------------------------------------

    def do_heartbeat(self) -> None:
        with self._txn() as reg:
            alive = reg.refresh_owner(self.token, self.options.session_ttl)
        if not alive:
            raise errors.BackendUnavailable(
                f"the session of {self.member_id!r} on {self.url} expired: it was silent for longer than session_ttl"
            )

    def do_watch(self, group: str) -> None:
        """Events come from the registry's log: deliver what is pending for
        the groups already watched, so the new watch starts from now."""
        self._follows_events = True
        self._read_events()

    def do_poll(self) -> None:
        if self.conn.changed():
            self._read_events()

    def _on_changed(self, msg: _Changed) -> None:
        self._change_queued = False
        if self.state == "CONNECTED":
            self._run_guarded(self._on_registry_changed)

    def _on_registry_changed(self) -> None:
        self._read_events()
        self.wake()

    def _read_events(self) -> None:
        with self._txn() as reg:
            events, gap = reg.events_since(self._seq)
            self._seq = reg.seq
        if gap:
            logger.warning("%r fell behind the registry's event log; some events of watched groups were dropped", self)
        watched = self._watched
        if not watched:
            return
        for _seq, group, kind, member in events:
            if group in watched:
                self.emit(_EVENT_CLASSES[kind](group, member))

