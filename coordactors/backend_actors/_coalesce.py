"""Coalescing: a session serves the requests queued behind the current one together.

When many callers share one coordinator, requests pile up in the session's
inbox while it waits on a round trip.  A backend that can serve several at
once (a Redis pipeline, one SQL statement, one etcd transaction, requests in
flight together on ZooKeeper's or etcd v2's connections) mixes in
:class:`Coalescing`: on a request of a
type in ``COALESCED`` it takes every request of such types already queued
(up to ``MAX_BATCH``) and hands them to ``serve_batch``, which the backend
implements with as few round trips as it can.  Anything else queued is
served after the batch, in order; one caller alone never waits for a batch
to fill -- only what is already queued is taken.  A backend whose batch is
many round trips in flight (etcd v2's lanes, MySQL's pipelined queries)
also takes, with ``take_queued``, what queues up while its last run is in
flight, so the next requests start without waiting for the whole run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors.base import CONNECTED
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX

__all__ = ["NOT_BATCHED", "Coalescing"]

NOT_BATCHED: Any = object()
"""``Coalescing.batch_item``'s answer for a request served the usual way."""


def _no_item(_call: Call) -> None:
    """Any queued coalescable call joins a batch as it is (``_pull``)."""
    return None


class Coalescing:
    """Mixin for a SessionActor subclass (list it first among the bases)."""

    COALESCED: ClassVar[frozenset[type]] = frozenset()
    MAX_BATCH: ClassVar[int] = 64
    MAX_RUN: ClassVar[int] = 256
    """At most this many requests served by one batch, those ``take_queued`` adds included."""

    _last_run_open = False
    _queued_behind: Any = None
    _taken = 0

    def on_receive(self, message: Any) -> Any:
        """Actor thread: serve a coalescable request together with those queued behind it."""
        coalesced = self.COALESCED
        if type(message) is not Call or type(message.message) not in coalesced or self.state is not CONNECTED:  # type: ignore[attr-defined]
            return super().on_receive(message)  # type: ignore[misc]
        self._queued_behind = None
        batch = [message] + [call for call, _item in self._pull(_no_item, self.MAX_BATCH - 1)]
        self._taken = len(batch)
        if len(batch) == 1:
            self._serve(message)  # type: ignore[attr-defined]
        else:
            self.serve_batch(batch)
        leftover, self._queued_behind = self._queued_behind, None
        if leftover is not None:
            self._handle_envelope(leftover)
        return None

    def serve_batch(self, calls: list[Call]) -> None:
        """Serve ``calls`` in order, as far as any caller can tell: each run of
        calls ``batch_item`` accepts goes to ``flush_batch`` together (a run of
        one, or any run while not connected, the usual way); anything else is
        served the usual way between the runs."""
        run: list[tuple[Call, Any]] = []
        names: set[str] = set()
        for call in calls:
            msg = call.message
            item = self.batch_item(msg, names)
            if item is NOT_BATCHED:
                self._flush_run(run)
                run, names = [], set()
                self._serve(call)  # type: ignore[attr-defined]
                continue
            run.append((call, item))
            if type(msg) in (Acquire, Release):
                names.add(msg.name)
        self._last_run_open = True
        try:
            self._flush_run(run)
        finally:
            self._last_run_open = False

    def take_queued(self, names: set[str]) -> list[tuple[Call, Any]]:
        """Actor thread, from ``flush_batch`` while the batch's last run is in
        flight: the requests queued since that can join the run (as
        ``(call, batch_item)``; ``names``: the locks the run still has in
        flight, updated with theirs), so a backend that overlaps round trips
        (etcd v2's lanes, MySQL's pipelined queries) can start them at once
        instead of after the whole run.  Taking stops at the first request that cannot
        join (it is served after the run, so the order holds) and after
        ``MAX_RUN`` requests in all."""
        if not self._last_run_open or self._queued_behind is not None or self.state is not CONNECTED:  # type: ignore[attr-defined]
            return []

        def joins(call: Call) -> Any:
            msg = call.message
            item = self.batch_item(msg, names)
            if item is not NOT_BATCHED and type(msg) in (Acquire, Release):
                names.add(msg.name)
            return item

        taken = self._pull(joins, self.MAX_RUN - self._taken)
        self._taken += len(taken)
        return taken

    def _pull(self, accept: Callable[[Call], Any], limit: int) -> list[tuple[Call, Any]]:
        """Take up to ``limit`` queued coalescable calls, each with what
        ``accept`` says of it, while it says anything but ``NOT_BATCHED``;
        the first envelope not taken is kept in ``_queued_behind``, to be
        served after the batch."""
        inbox = self.actor_inbox  # type: ignore[attr-defined]
        coalesced = self.COALESCED
        taken: list[tuple[Call, Any]] = []
        # The actor thread is the inbox's only reader: not empty means get_nowait has something.
        while len(taken) < limit and not inbox.empty():
            envelope = inbox.get_nowait()
            queued = envelope.message
            if envelope.reply_to is None and type(queued) is Call and type(queued.message) in coalesced:
                item = accept(queued)
                if item is not NOT_BATCHED:
                    taken.append((queued, item))
                    continue
            self._queued_behind = envelope
            break
        return taken

    def batch_item(self, msg: Any, names: set[str]) -> Any:
        """What ``flush_batch`` needs to serve ``msg`` in a batch (locks already
        named in the run: ``names``), or ``NOT_BATCHED``.  The default batches
        plain acquires (item None) and releases of held leases (the lease)."""
        if type(msg) is Acquire and self.batchable_acquire(msg, names):
            return None
        if type(msg) is Release and self.batchable_release(msg, names):
            return self._leases[msg.name]  # type: ignore[attr-defined]
        return NOT_BATCHED

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        """Serve a run of two or more ``(call, batch_item)`` with as few round trips as the backend can."""
        raise NotImplementedError

    def _flush_run(self, run: list[tuple[Call, Any]]) -> None:
        if len(run) < 2 or self.state is not CONNECTED:  # type: ignore[attr-defined]
            for call, _item in run:
                self._serve(call)  # type: ignore[attr-defined]
            return
        self.flush_batch(run)

    def batchable_acquire(self, msg: Acquire, names: set[str]) -> bool:
        """Can this acquire be tried in a batch?  Not if the name repeats in the
        batch, is held or waited for here, or needs what only the usual path
        does (a leader lock, a TTL the backend refuses)."""
        return (msg.name not in names and msg.name not in self._leases and not self._waiters.get(msg.name)  # type: ignore[attr-defined]
                and not msg.name.startswith(RESERVED_LOCK_PREFIX) and (msg.ttl is None or self.LEASE_TTL))  # type: ignore[attr-defined]

    def batchable_release(self, msg: Release, names: set[str]) -> bool:
        """Can this release be done in a batch?  Only of a lease held here (any
        other release gets its error from the usual path)."""
        lease = self._leases.get(msg.name)  # type: ignore[attr-defined]
        wanted = msg.name_or_lease if isinstance(msg.name_or_lease, Lease) else None
        return msg.name not in names and lease is not None and (wanted is None or wanted.fence == lease.fence)

    # -- answering a batch, as the usual path would --------------------------

    def settle_acquire(self, call: Call, fence: int | None, sent_at: float, held: bool = True,
                       later: list[Callable[[], Any]] | None = None) -> bool:
        """Answer a batched acquire: granted with ``fence`` (the lease gets the
        TTL the usual path would give it); else refused (a try-lock of a lock
        ``held`` by another), else served the usual way (it waits, or meets
        what only the usual path handles).

        With ``later``, what needs the backend (serving the usual way,
        releasing a grant whose caller gave up) is appended there to run
        later instead, and True returned: the lock's name is still in play."""
        msg = call.message
        if fence is not None:
            lease = self._hold(msg.name, fence, self.lease_ttl_of(msg), sent_at)  # type: ignore[attr-defined]
            if later is None:
                self._deliver(call, lease)  # type: ignore[attr-defined]
                return False
            if call.reply.resolve(lease):
                return False
            later.append(functools.partial(self._release_lease, lease))  # type: ignore[attr-defined]  # granted after the caller gave up
            return True
        if msg.timeout == 0 and held:
            self._reject(call, errors.LockTimeout(f"lock {msg.name!r} is held by another holder (try-lock, timeout=0)"))  # type: ignore[attr-defined]
            return False
        if later is None:
            self._serve(call)  # type: ignore[attr-defined]
            return False
        later.append(functools.partial(self._serve, call))  # type: ignore[attr-defined]
        return True

    def settle_release(self, call: Call, lease: Lease, released: bool) -> None:
        """Answer a batched release of ``lease``: done, or found lost on the backend."""
        self._leases.pop(lease.name, None)  # type: ignore[attr-defined]  # (gone already if the session failed meanwhile)
        if released:
            self._end_lease(lease, "released")  # type: ignore[attr-defined]
            self._deliver(call, None)  # type: ignore[attr-defined]
        else:
            self._lose(lease, "the backend no longer held it at release")  # type: ignore[attr-defined]
            self._reject(call, errors.LockNotHeld(  # type: ignore[attr-defined]
                f"cannot release {lease.name!r}: fence {lease.fence} had already been lost on the backend"))

    def retry_freed(self, names: list[str]) -> None:
        """After a batch released ``names``: their waiters here may take them."""
        if names and self._waiters:  # type: ignore[attr-defined]
            self._run_guarded(self._retry_waiters, names)  # type: ignore[attr-defined]

    def _handle_envelope(self, envelope: Any) -> None:
        # What pykka's loop does with one envelope; an error of a told
        # message propagates, so the loop treats it as a failure as usual.
        try:
            response = self._handle_receive(envelope.message)  # type: ignore[attr-defined]
        except Exception:
            if envelope.reply_to is None:
                raise
            envelope.reply_to.set_exception()
            return
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)
