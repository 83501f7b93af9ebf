"""The tooz ``CoordinationDriver`` API served by a coordactors Coordinator.

Every tooz call maps onto one coordactors message; asynchronous calls return
a :class:`~coordactors.compat.tooz.results.CoordAsyncResult` over the
request's ``concurrent.futures.Future``.  Group and member ids come back as
bytes, as tooz gives them, and capabilities come back exactly as given (see
:mod:`~coordactors.compat.tooz.capabilities`).

Watchers, tooz-style but pushed: the first ``watch_*`` of a group subscribes
to its coordactors events, which arrive on an executor thread and are
queued; ``run_watchers()`` runs the callbacks of the queued events in the
caller's thread and returns their results, as tooz's does.  Nothing polls the
backend, and no change is missed between two calls (tooz diffs snapshots, so
a member that joined and left in between is never seen there; here both
events are delivered, in order).

Leader election, tooz-style: ``watch_elected_as_leader`` registers a
callback; the next ``run_watchers()`` (or ``run_elect_coordinator()``)
makes this member stand for leader of the group (a coordactors ``Campaign``),
and the callback runs, once, when this member becomes leader.
``stand_down_group_leader`` gives leadership up; as in tooz, this member
stands again at the next ``run_watchers()`` while callbacks are registered.
The group must exist for this member to stand (tooz's Redis driver does not
need it); until it does, ``run_watchers()`` simply tries again.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import Any, Callable

import coordactors
from coordactors import errors, events
from coordactors.compat.tooz import capabilities as caps
from coordactors.compat.tooz import partitioner as _partitioner
from coordactors.compat.tooz.events import LeaderElected, MemberJoinedGroup, MemberLeftGroup
from coordactors.compat.tooz.exceptions import (
    GroupNotCreated,
    ToozDriverChosenPoorly,
    ToozError,
    WatchCallbackNotFound,
    translate,
    translated,
)
from coordactors.compat.tooz.locking import CoordactorsLock
from coordactors.compat.tooz.results import CoordAsyncResult, CoordinatorResult, ImmediateResult
from coordactors.compat.tooz.urls import to_coordactors_url
from coordactors.messages import (
    Campaign,
    CreateGroup,
    DeleteGroup,
    GetCapabilities,
    GetGroups,
    GetLeader,
    GetMembers,
    Heartbeat,
    Join,
    Leave,
    Message,
    StandDown,
    Unwatch,
    UpdateCapabilities,
    Watch,
)
from coordactors.messages import _validate as v
from coordactors.urls import parse_url

logger = logging.getLogger(__name__)

__all__ = ["CoordinationDriver", "Hooks", "get_coordinator"]

CALL_TIMEOUT = 30.0
"""Seconds the facade's own synchronous steps (watch, campaign) wait for the backend."""


class Hooks(list):  # type: ignore[type-arg]
    """The callbacks registered for one group and kind of event (tooz's ``Hooks``)."""

    def run(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Call every callback; return their results."""
        return [callback(*args, **kwargs) for callback in list(self)]


def _to_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _name(value: Any, what: str) -> str:
    try:
        return v.name(value, what)
    except errors.InvalidArgument as exc:
        raise translate(exc) from exc


class CoordinationDriver:
    """tooz's coordinator API on coordactors; build it with :func:`get_coordinator`.

    Attributes:
        CHARACTERISTICS: the backend's :class:`coordactors.Characteristics`.
        requires_beating: False: the coordinator heartbeats by itself
            (``heartbeat()`` may still be called, and returns seconds).
        url: the coordactors URL, password removed.
    """

    requires_beating = False

    def __init__(self, member_id: Any, url: str) -> None:
        self._member_id = member_id
        self._member_name = _name(member_id, "member_id")
        self._member_bytes = _to_bytes(member_id)
        self._url = url
        with translated():
            session_class, options = parse_url(url)
        self.url = options.redacted
        self.CHARACTERISTICS = tuple(session_class.CHARACTERISTICS)
        self._coordinator: coordactors.Coordinator | None = None
        self._started = False
        self._guard = threading.RLock()
        self._hooks_join_group: dict[str, Hooks] = collections.defaultdict(Hooks)
        self._hooks_leave_group: dict[str, Hooks] = collections.defaultdict(Hooks)
        self._hooks_elected_leader: dict[str, Hooks] = collections.defaultdict(Hooks)
        self._group_ids: dict[str, Any] = {}  # coordactors name -> the id the application used
        self._watching: set[str] = set()
        self._campaigning: set[str] = set()
        self._leading: set[str] = set()
        self._events: queue.SimpleQueue[events.Event] = queue.SimpleQueue()

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<{type(self).__name__} {self.url} member={self._member_bytes!r} {state}>"

    # -- lifecycle ------------------------------------------------------------

    @property
    def is_started(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started

    @property
    def coordinator(self) -> coordactors.Coordinator:
        """The coordactors Coordinator underneath (for fences, events, statistics)."""
        if self._coordinator is None:
            raise ToozError(f"the coordinator for {self._member_bytes!r} on {self.url} has not been started")
        return self._coordinator

    def start(self, start_heart: bool = False) -> None:
        """Connect; ``start_heart`` is accepted and needs nothing (heartbeats are automatic).

        Raises ToozError if started already, ToozConnectionError if the
        backend cannot be reached.
        """
        with self._guard:
            if self._started:
                raise ToozError("Can not start a driver which has not been stopped")
            self._watching.clear()
            self._campaigning.clear()
            self._leading.clear()
            self._events = queue.SimpleQueue()
            with translated():
                coordinator = coordactors.connect(self._url, self._member_name)
                try:
                    # Session events say when leadership was lost, so that
                    # being elected again runs the callbacks again.
                    coordinator.subscribe(self._enqueue, (events.SessionLost, events.LockLost))
                except BaseException:
                    coordinator.stop()
                    raise
            self._coordinator = coordinator
            self._started = True

    def stop(self) -> None:
        """Leave every group, release every lock, disconnect.

        Raises ToozError if not started.  Registered callbacks are kept, as in tooz.
        """
        with self._guard:
            if not self._started:
                raise ToozError("Can not stop a driver which has not been started")
            coordinator, self._coordinator = self._coordinator, None
            self._started = False
        if coordinator is not None:
            coordinator.stop()

    def heartbeat(self) -> float:
        """Refresh the session now; return the seconds until the next heartbeat is due."""
        return float(self._ask(Heartbeat()))

    # -- plumbing ---------------------------------------------------------------

    def _ask(self, message: Message, group_id: Any = None, member_id: Any = None) -> Any:
        with translated(group_id, member_id):
            return self.coordinator.ask(message, block=True, timeout=CALL_TIMEOUT)

    def _submit(self, build: Callable[[], Message], convert: Callable[[Any], Any] | None = None, *,
                group_id: Any = None, member_id: Any = None) -> CoordAsyncResult:
        try:
            with translated(group_id, member_id):
                message = build()
                future = self.coordinator.submit(message)
        except ToozError as exc:
            return ImmediateResult(error=exc)
        return CoordinatorResult(future, convert, group_id=group_id, member_id=member_id)

    def _group(self, group_id: Any) -> str:
        name = _name(group_id, "group_id")
        self._group_ids[name] = group_id
        return name

    # -- groups -------------------------------------------------------------------

    def create_group(self, group_id: Any) -> CoordAsyncResult:
        """Create ``group_id``; the result raises GroupAlreadyExist if it exists."""
        return self._submit(lambda: CreateGroup(group_id), group_id=group_id)

    def delete_group(self, group_id: Any) -> CoordAsyncResult:
        """Delete ``group_id``; GroupNotCreated, or GroupNotEmpty while it has members."""
        return self._submit(lambda: DeleteGroup(group_id), group_id=group_id)

    def get_groups(self) -> CoordAsyncResult:
        """Every group id, as a list of bytes."""
        return self._submit(GetGroups, lambda groups: sorted(_to_bytes(g) for g in groups))

    def join_group(self, group_id: Any, capabilities: Any = b"") -> CoordAsyncResult:
        """Join ``group_id`` with ``capabilities``; GroupNotCreated, MemberAlreadyExist."""
        return self._submit(lambda: Join(group_id, caps.encode(capabilities)), group_id=group_id, member_id=self._member_bytes)

    def join_group_create(self, group_id: Any, capabilities: Any = b"") -> None:
        """Join ``group_id``, creating it first if needed (synchronous, as in tooz)."""
        self._ask(Join(group_id, caps.encode(capabilities), create=True), group_id, self._member_bytes)

    def leave_group(self, group_id: Any) -> CoordAsyncResult:
        """Leave ``group_id``; GroupNotCreated, or MemberNotJoined if this member is not in it."""
        return self._submit(lambda: Leave(group_id), group_id=group_id, member_id=self._member_bytes)

    def get_members(self, group_id: Any) -> CoordAsyncResult:
        """The member ids of ``group_id``, a set of bytes; GroupNotCreated."""
        return self._submit(lambda: GetMembers(group_id), lambda members: {_to_bytes(m) for m in members}, group_id=group_id)

    def get_member_capabilities(self, group_id: Any, member_id: Any) -> CoordAsyncResult:
        """The capabilities ``member_id`` gave; GroupNotCreated, MemberNotJoined."""
        return self._submit(lambda: GetCapabilities(group_id, member_id), caps.decode, group_id=group_id, member_id=member_id)

    def get_member_info(self, group_id: Any, member_id: Any) -> CoordAsyncResult:
        """``{"capabilities": ...}`` for ``member_id`` (coordactors keeps no join timestamps)."""
        return self._submit(
            lambda: GetCapabilities(group_id, member_id),
            lambda data: {"capabilities": caps.decode(data)},
            group_id=group_id,
            member_id=member_id,
        )

    def get_members_with_capabilities(self, group_id: Any) -> CoordAsyncResult:
        """``{member_id (bytes): capabilities}`` for every member of ``group_id``.

        Members that leave while this runs are left out.
        """
        members_result = self.get_members(group_id)
        coordinator = self.coordinator

        def collect() -> dict[bytes, Any]:
            members = members_result.get()
            found = {}
            for member in members:
                try:
                    found[member] = caps.decode(coordinator.capabilities(group_id, member))
                except errors.MemberNotJoined:
                    continue
            return found

        return _Deferred(collect, group_id)

    def update_capabilities(self, group_id: Any, capabilities: Any) -> CoordAsyncResult:
        """Replace this member's capabilities in ``group_id``; GroupNotCreated, MemberNotJoined."""
        return self._submit(
            lambda: UpdateCapabilities(group_id, caps.encode(capabilities)), group_id=group_id, member_id=self._member_bytes
        )

    def join_partitioned_group(self, group_id: Any, weight: int = 1,
                               partitions: int = _partitioner.Partitioner.DEFAULT_PARTITION_NUMBER) -> _partitioner.Partitioner:
        """Join (creating if needed) ``group_id`` with ``weight``; return its Partitioner."""
        self.join_group_create(group_id, capabilities={"weight": weight})
        return _partitioner.Partitioner(self, group_id, partitions=partitions)

    def leave_partitioned_group(self, partitioner: _partitioner.Partitioner) -> Any:
        """Leave the partitioned group and stop its partitioner."""
        leave = self.leave_group(partitioner.group_id)
        partitioner.stop()
        return leave.get()

    # -- leaders -----------------------------------------------------------------------

    def get_leader(self, group_id: Any) -> CoordAsyncResult:
        """The leader's member id (bytes) or None; GroupNotCreated."""
        return self._submit(lambda: GetLeader(group_id), lambda m: None if m is None else _to_bytes(m), group_id=group_id)

    def stand_down_group_leader(self, group_id: Any) -> bool:
        """Give up leadership of ``group_id``; True if this member was standing for it."""
        name = self._group(group_id)
        with self._guard:
            was_standing = name in self._campaigning
            self._campaigning.discard(name)
            self._leading.discard(name)
        if was_standing:
            self._ask(StandDown(name), group_id)
        return was_standing

    def run_elect_coordinator(self) -> None:
        """Stand for leader of every group with a ``watch_elected_as_leader`` callback."""
        for name in list(self._hooks_elected_leader):
            if name in self._campaigning:
                continue
            self._ensure_watch(name, check_exists=False)
            try:
                self._ask(Campaign(name), self._group_ids.get(name, name))
            except GroupNotCreated:
                continue  # not yet: the group must exist to stand (see the module docstring)
            self._campaigning.add(name)
            if self.coordinator.leader(name) == self._member_name:
                self._elected(name)

    def _elected(self, name: str) -> list[Any]:
        with self._guard:
            if name in self._leading:
                return []
            self._leading.add(name)
        hooks = self._hooks_elected_leader.get(name)
        return hooks.run(LeaderElected(self._group_ids.get(name, name), self._member_bytes)) if hooks else []

    # -- watchers ---------------------------------------------------------------------------

    def _enqueue(self, event: events.Event) -> None:
        self._events.put(event)

    def _ensure_watch(self, name: str, *, check_exists: bool) -> None:
        if name in self._watching:
            return
        group_id = self._group_ids.get(name, name)
        if check_exists:
            self._ask(GetMembers(name), group_id)  # tooz raises GroupNotCreated here
        self._ask(Watch(name, self._enqueue, events.GROUP_EVENTS), group_id)
        self._watching.add(name)

    def _maybe_unwatch(self, name: str) -> None:
        if any(name in hooks for hooks in (self._hooks_join_group, self._hooks_leave_group, self._hooks_elected_leader)):
            return
        if name in self._watching and self._started:
            self._watching.discard(name)
            self._ask(Unwatch(name, self._enqueue))

    def _watch(self, table: dict[str, Hooks], group_id: Any, callback: Any, *, check_exists: bool) -> None:
        name = self._group(group_id)
        if self._started:
            self._ensure_watch(name, check_exists=check_exists)
        table[name].append(callback)

    def _unwatch(self, table: dict[str, Hooks], group_id: Any, callback: Any) -> None:
        name = self._group(group_id)
        hooks = table.get(name)
        if hooks is None or callback not in hooks:
            raise WatchCallbackNotFound(group_id, callback)
        hooks.remove(callback)
        if not hooks:
            del table[name]
        self._maybe_unwatch(name)

    def watch_join_group(self, group_id: Any, callback: Any) -> None:
        """Call ``callback(MemberJoinedGroup)`` from ``run_watchers()`` when a member joins; GroupNotCreated."""
        self._watch(self._hooks_join_group, group_id, callback, check_exists=True)

    def unwatch_join_group(self, group_id: Any, callback: Any) -> None:
        """Undo :meth:`watch_join_group`; WatchCallbackNotFound if not registered."""
        self._unwatch(self._hooks_join_group, group_id, callback)

    def watch_leave_group(self, group_id: Any, callback: Any) -> None:
        """Call ``callback(MemberLeftGroup)`` from ``run_watchers()`` when a member leaves; GroupNotCreated."""
        self._watch(self._hooks_leave_group, group_id, callback, check_exists=True)

    def unwatch_leave_group(self, group_id: Any, callback: Any) -> None:
        """Undo :meth:`watch_leave_group`; WatchCallbackNotFound if not registered."""
        self._unwatch(self._hooks_leave_group, group_id, callback)

    def watch_elected_as_leader(self, group_id: Any, callback: Any) -> None:
        """Stand for leader of ``group_id`` (from the next ``run_watchers()``); call
        ``callback(LeaderElected)`` when this member is elected."""
        self._hooks_elected_leader[self._group(group_id)].append(callback)

    def unwatch_elected_as_leader(self, group_id: Any, callback: Any) -> None:
        """Undo :meth:`watch_elected_as_leader` (leadership, if held, is kept, as in tooz)."""
        self._unwatch(self._hooks_elected_leader, group_id, callback)

    def run_watchers(self, timeout: float | None = None) -> list[Any]:
        """Run the callbacks of the events queued since the last call, in order, in this thread.

        Then stand for leader where ``watch_elected_as_leader`` asked to.
        Returns the join and leave callbacks' results, as tooz does.
        ``timeout`` is accepted for tooz's signature: the events are already
        here (pushed), so delivering them waits for nothing.
        """
        if not self._started:
            raise ToozError("run_watchers() needs a started coordinator")
        for name in list(self._hooks_join_group) + list(self._hooks_leave_group):
            self._ensure_watch(name, check_exists=False)
        results: list[Any] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            results.extend(self._dispatch(event))
        self.run_elect_coordinator()
        return results

    def _dispatch(self, event: events.Event) -> list[Any]:
        group = getattr(event, "group", None)
        group_id = self._group_ids.get(group, group)  # type: ignore[arg-type]
        if isinstance(event, events.MemberJoined):
            hooks = self._hooks_join_group.get(event.group)
            return hooks.run(MemberJoinedGroup(group_id, _to_bytes(event.member))) if hooks else []
        if isinstance(event, events.MemberLeft):
            hooks = self._hooks_leave_group.get(event.group)
            return hooks.run(MemberLeftGroup(group_id, _to_bytes(event.member))) if hooks else []
        if isinstance(event, events.SessionLost):
            self._leading.clear()
        elif isinstance(event, events.LockLost) and event.name.startswith(v.RESERVED_LOCK_PREFIX):
            self._leading.discard(event.name[len(v.RESERVED_LOCK_PREFIX):])
        elif isinstance(event, events.LeaderElected):
            if event.member == self._member_name:
                if event.group in self._campaigning:
                    self._elected(event.group)  # tooz returns only join/leave results
            else:
                self._leading.discard(event.group)
        return []

    # -- locks ----------------------------------------------------------------------------

    def get_lock(self, name: Any) -> CoordactorsLock:
        """A tooz lock named ``name`` (str or bytes) on this coordinator."""
        if not name:
            raise ValueError("Locks must be provided a name")
        with translated():
            v.lock_name(name)
        return CoordactorsLock(self.coordinator, name)


class _Deferred(CoordAsyncResult):
    """A result computed by blocking calls, run on first ``get()``."""

    def __init__(self, compute: Callable[[], Any], group_id: Any) -> None:
        self._compute = compute
        self._group_id = group_id
        self._done = False
        self._value: Any = None

    def get(self, timeout: float | None = None) -> Any:
        if not self._done:
            with translated(self._group_id):
                self._value = self._compute()
            self._done = True
        return self._value

    def done(self) -> bool:
        return self._done


def get_coordinator(backend_url: Any, member_id: Any, characteristics: Any = frozenset(), **kwargs: Any) -> CoordinationDriver:
    """Build a (not yet started) tooz-compatible coordinator for ``backend_url``.

    Args:
        backend_url: a tooz URL (see :mod:`~coordactors.compat.tooz.urls`).
        member_id: this member's id, bytes or str.
        characteristics: Characteristics the backend must have (by name:
            tooz's or coordactors' enum members, or strings).
        **kwargs: options overriding those of the same name in the URL's query.

    Raises:
        ToozDriverChosenPoorly: the backend lacks a requested characteristic.
        InvalidArgument (a ToozError and ValueError): malformed URL or option.
        NotImplemented: a scheme or option coordactors cannot serve.
    """
    url = to_coordactors_url(backend_url, kwargs)
    driver = CoordinationDriver(member_id, url)
    wanted = {getattr(c, "name", getattr(c, "value", c)) for c in characteristics}
    have = {c.name for c in driver.CHARACTERISTICS}
    missing = wanted - have
    if missing:
        raise ToozDriverChosenPoorly(
            f"Desired characteristics {sorted(wanted)} is not a strict subset of driver characteristics "
            f"{sorted(have)}, {sorted(missing)} characteristics were not found"
        )
    return driver
