"""SessionActor: the one actor that owns a backend connection.

A backend subclasses :class:`SessionActor` and implements ``open()`` plus one
``do_*`` hook per primitive.  The base checks arguments, ownership and
deadlines, translates errors once, tells the supervisor about state changes
(off the reply path), and runs everything that waits -- blocking acquires,
reconnects -- without ever sleeping on the actor thread.

Threads: every ``do_*`` hook, ``on_connected`` and ``close`` run on the
actor's own thread and must not block for longer than one backend round trip.
``open`` runs on the runtime's blocking executor and may block; it must not
touch the actor's state, only return a connection.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable, ClassVar

import pykka
from pykka._envelope import Envelope

from coordactors import errors
from coordactors._protocol import (
    NO_REPLY,
    AddSubscriber,
    AwaitConnected,
    Call,
    DesiredCampaign,
    DesiredJoin,
    DesiredLeave,
    DesiredState,
    GetStatistics,
    InjectFailure,
    LeaseEnded,
    LeaseGranted,
    PykkaReply,
    Publish,
    Reconnect,
    RemoveSubscriber,
    SessionCrashed,
    SessionDown,
    SessionUp,
    Shutdown,
)
from coordactors.characteristics import Characteristics
from coordactors.events import Event, LeaderElected, LockLost, MemberJoined, MemberLeft
from coordactors.messages import (
    Acquire,
    Campaign,
    CreateGroup,
    DeleteGroup,
    GetCapabilities,
    GetGroups,
    GetLeader,
    GetMembers,
    Heartbeat,
    Join,
    Lease,
    Leave,
    Message,
    Release,
    StandDown,
    Unwatch,
    UpdateCapabilities,
    Watch,
)
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.messages.locks import LeaseState
from coordactors.urls import SessionOptions

logger = logging.getLogger(__name__)

__all__ = ["CallInbox", "SessionActor", "fence_floor", "leader_lock_name"]

CONNECTING, CONNECTED, SUSPENDED, DOWN, STOPPED = "CONNECTING", "CONNECTED", "SUSPENDED", "DOWN", "STOPPED"

_PENDING = object()
"""Returned by a handler that will reply later (a waiting acquire)."""


def leader_lock_name(group: str) -> str:
    """The name of the lock whose holder leads ``group``."""
    return RESERVED_LOCK_PREFIX + group


def fence_floor() -> int:
    """Microseconds since the epoch: the seed of a fence counter that is missing
    (first use, or a backend that lost or evicted it), so fences never go
    backwards.  Microseconds, not milliseconds times 1,000: a counter evicted
    and re-seeded within the millisecond it was seeded would otherwise hand
    out fences already issued (memcached can do that)."""
    return time.time_ns() // 1000


RETRIED_WHEN_RESUMED = frozenset({GetGroups, GetMembers, GetCapabilities, GetLeader, UpdateCapabilities, Heartbeat})
"""Requests that a suspended connection interrupted and that are run again
once it resumes: reads, and writes that set a value (applying one twice is
applying it once).  Others fail with ``ConnectionSuspended``: whether they
were applied is unknown."""


def drift_margin(ttl: float) -> float:
    """How much earlier than the backend a holder gives up on a TTL: 5%, at most 1 s."""
    return min(ttl * 0.05, 1.0)


class CallInbox(queue.SimpleQueue):  # type: ignore[type-arg]
    """An actor inbox that turns pykka ``ask``s of public messages into Calls.

    Actor systems use ``actor_ref.ask(Join(...))``; pykka would reply with
    whatever ``on_receive`` returns, but a lock may be granted minutes later.
    Converting at ``put`` (on the caller's thread) lets every request reply
    when it is ready, through one path.
    """

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item.reply_to is not None and isinstance(item.message, Message):
            item = Envelope(Call(item.message, PykkaReply(item.reply_to)))
        super().put(item, block, timeout)


class _Tick:
    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Opened:
    __slots__ = ("conn", "desired", "error", "generation", "sent_at")

    def __init__(self, generation: int, desired: DesiredState, conn: Any = None, error: BaseException | None = None) -> None:
        self.generation = generation
        self.desired = desired
        self.conn = conn
        self.error = error


class _Expire:
    __slots__ = ("waiter",)

    def __init__(self, waiter: _Waiter) -> None:
        self.waiter = waiter


class _Wake:
    """A backend learnt that locks may have been freed (None: any of them)."""

    __slots__ = ("names",)

    def __init__(self, names: Any = None) -> None:
        self.names = names


class _Run:
    """Run ``fn(*args)`` on the actor thread (sent from a client library's thread)."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args


class _Waiter:
    __slots__ = ("call", "lock_deadline", "name", "timeout", "timer", "ttl")

    def __init__(self, call: Call, name: str, ttl: float | None, timeout: float | None) -> None:
        self.call = call
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self.lock_deadline = None if timeout is None else time.monotonic() + timeout
        self.timer: Any = None


class SessionActor(pykka.ThreadingActor):
    """Base of every backend session: dispatch, waiting, supervision hooks.

    Subclasses set the class attributes and implement the hooks below.  The
    reference implementation is :class:`~coordactors.backend_actors.memory.MemorySession`.

    Class attributes:
        CHARACTERISTICS: what the backend guarantees (see Characteristics).
        DEFAULTS: overrides of the common URL options' defaults.
        OPTIONS: backend-specific URL options: name -> converter.
        POLLS: True if events and freed locks are only seen by polling, in
            which case ``do_poll`` runs every ``poll_interval``.
        LEASE_TTL: False where a lock lives exactly as long as the session
            (a ZooKeeper ephemeral node, a database connection): an explicit
            ``Acquire(ttl=...)`` is refused with NotSupported rather than
            silently ignored.
        RETRY_ONCE_WAITING: True where the event reader drops the news of a
            freed lock while the session has no waiter (it woke the actor
            for every release in the namespace): a lock freed between a
            waiter's failed try and its registration is caught by trying
            once more, registered.
    """

    use_daemon_thread = True
    CHARACTERISTICS: ClassVar[frozenset[Characteristics]] = frozenset()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    OPTIONS: ClassVar[dict[str, Callable[[str, str], Any]]] = {}
    POLLS: ClassVar[bool] = False
    LEASE_TTL: ClassVar[bool] = True
    RETRY_ONCE_WAITING: ClassVar[bool] = False

    @staticmethod
    def _create_actor_inbox() -> CallInbox:
        return CallInbox()

    def _start_actor_loop(self) -> None:
        # Name the thread after backend and member (pykka would say
        # "MemorySession-7"), so a thread dump says whose session it is.
        thread = threading.Thread(target=self._actor_loop, name=f"{type(self).__name__}[{self.member_id}]", daemon=self.use_daemon_thread)
        thread.start()

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        """Raise InvalidArgument if the URL's host/path make no sense for this backend."""

    def __init__(
        self,
        options: SessionOptions,
        member_id: str,
        supervisor: pykka.ActorRef[Any],
        runtime: Any,
        desired: DesiredState | None = None,
        *,
        restarting: bool = False,
        wait_while_down: bool = True,
        session_token: str | None = None,
    ) -> None:
        super().__init__()
        self.session_token = session_token or uuid.uuid4().hex
        """Identifies this coordinator's session to the backend across reconnects
        and actor replacements, so a restored session reclaims its own state."""
        self.options = options
        self.url = options.redacted
        self.member_id = member_id
        self.supervisor = supervisor
        self.runtime = runtime
        self.wait_while_down = wait_while_down
        self.conn: Any = None
        self.state = CONNECTING
        self._first_connect = not restarting
        self._generation = 0
        self._desired = desired or DesiredState()
        self._connect_replies: list[Any] = []
        self._connect_error: BaseException | None = None
        self._joined: dict[str, str] = {}
        self._campaigns: set[str] = set()
        self._watched: dict[str, int] = {}
        self._leases: dict[str, Lease] = {}
        self._leaders: dict[str, Lease] = {}
        self._lost: dict[str, str] = {}
        self._waiters: dict[str, collections.deque[_Waiter]] = {}
        self._parked: collections.deque[Call] = collections.deque()
        self._session_valid_until: float | None = None
        self._suspension_timers: list[Any] = []
        self._probe_delay = 0.0
        self._timers: list[Any] = []
        self._poll_queued = False
        self._heartbeat_queued = False
        self._handlers: dict[type, Callable[[Any, Call], Any]] = {
            CreateGroup: self._on_create_group,
            DeleteGroup: self._on_delete_group,
            GetGroups: self._on_get_groups,
            Join: self._on_join,
            Leave: self._on_leave,
            GetMembers: self._on_get_members,
            GetCapabilities: self._on_get_capabilities,
            UpdateCapabilities: self._on_update_capabilities,
            Campaign: self._on_campaign,
            StandDown: self._on_stand_down,
            GetLeader: self._on_get_leader,
            Acquire: self._on_acquire,
            Release: self._on_release,
            Heartbeat: self._on_heartbeat,
            Watch: self._on_watch,
            Unwatch: self._on_unwatch,
            Shutdown: self._on_shutdown,
            AwaitConnected: self._on_await_connected,
            GetStatistics: self._on_statistics,
        }
        self._control: dict[type, Callable[[Any], None]] = {
            _Tick: self._on_tick,
            _Opened: self._on_opened,
            _Expire: self._on_expire,
            _Wake: self._on_wake,
            Reconnect: self._on_reconnect,
            InjectFailure: self._on_inject_failure,
            _Run: self._on_run,
        }
        self._snapshots: dict[str, tuple[frozenset[str], str | None]] = {}

    # -- hooks for backends ------------------------------------------------

    def open(self) -> Any:
        """Connect to the backend and return the connection.  Runs on an executor thread; may block."""
        raise NotImplementedError

    def on_connected(self) -> None:
        """Set up the new ``self.conn`` (register the session).  Actor thread."""

    def close(self) -> None:
        """Close ``self.conn``, quietly.  Actor thread."""

    def do_create_group(self, group: str) -> None:
        raise NotImplementedError

    def do_delete_group(self, group: str) -> None:
        raise NotImplementedError

    def do_get_groups(self) -> frozenset[str]:
        raise NotImplementedError

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        raise NotImplementedError

    def do_leave(self, group: str) -> None:
        raise NotImplementedError

    def do_get_members(self, group: str) -> frozenset[str]:
        raise NotImplementedError

    def do_get_capabilities(self, group: str, member: str) -> str:
        """Return the member's capabilities as JSON text."""
        raise NotImplementedError

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        raise NotImplementedError

    def do_group_exists(self, group: str) -> bool:
        raise NotImplementedError

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        """Take lock ``name`` if free; return its new fence, or None if held."""
        raise NotImplementedError

    def do_release(self, name: str, fence: int) -> bool:
        """Release the lock if this session still holds it with ``fence``; False if it did not."""
        raise NotImplementedError

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        """Extend every lease's TTL in as few round trips as possible; return the (name, fence) pairs lost."""
        raise NotImplementedError

    def do_lock_holder(self, name: str) -> str | None:
        """The member id holding lock ``name``, or None."""
        raise NotImplementedError

    def do_heartbeat(self) -> None:
        """Prove the session alive; raise BackendUnavailable if the backend dropped it."""

    def do_watch(self, group: str) -> None:
        """Start pushing ``group``'s events (via ``self.emit``); called before
        ``group`` joins ``watched_groups``, so only later events are sent."""

    def do_unwatch(self, group: str) -> None:
        """Stop pushing ``group``'s events."""

    def do_poll(self) -> None:
        """For POLLS backends: look for changes; ``emit`` events and ``wake`` waiters."""

    def do_shutdown(self) -> None:
        """Deregister the session before ``close`` (graceful stop)."""

    def probe(self) -> bool:
        """While suspended: whether the session's backend answers again (one
        cheap request).  The default, False, suits client libraries that
        report resumption themselves (kazoo)."""
        return False

    def on_resumed(self) -> None:
        """After ``resume()``: catch up with what happened while suspended
        (re-read watched groups, clean up requests whose replies were lost)."""

    def on_waiting(self) -> None:
        """Actor thread: an acquire started waiting, or a campaign was
        recorded: a backend whose event reader rests while nothing waits or
        watches wakes it here."""

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        """Map a client library's exception to ours (one table per backend)."""
        if isinstance(exc, OSError):
            return errors.BackendUnavailable(f"{self.url} is unreachable: {exc}")
        return errors.BackendUnavailable(f"unexpected {type(exc).__name__} from {self.url}: {exc}")

    # -- helpers for backends ---------------------------------------------

    def emit(self, event: Event) -> None:
        """Send an event to the supervisor for fan-out."""
        self.supervisor.tell(Publish(event))

    def wake(self, names: Any = None) -> None:
        """Retry waiting acquires and campaigns (of ``names``, or all).  Actor thread only."""
        self._retry_waiters(names)

    def suspend(self, cause: str) -> None:
        """Actor thread: the connection dropped, but the session may live on at
        the backend (ZooKeeper's SUSPENDED) until the client reconnects.

        Requests wait (as while the session is down); leases stand until
        their local expiry, when each gets ``LockLost``; the session itself
        fails at its own local expiry.  ``resume()`` when the same session is
        back; a backend that learns the session is gone calls ``fail()``.
        """
        if self.state is not CONNECTED:
            return
        self.state = SUSPENDED
        logger.warning("%r: connection suspended: %s", self, cause)
        valid_until = self._session_valid_until
        if valid_until is not None:
            # A precise check at the session's local expiry, between heartbeats.
            self._suspension_timers.append(self.runtime.ticker.call_later(
                max(0.0, valid_until - time.monotonic()), self._queue_heartbeat))
        self._probe_after(self.options.backoff_initial)

    def resume(self) -> None:
        """Actor thread: the suspended session is connected again, intact.
        Serve the requests that waited, refresh the leases, retry waiters,
        then ``on_resumed()``."""
        if self.state is not SUSPENDED:
            return
        self.state = CONNECTED
        self._cancel_suspension_timers()
        logger.info("%r: connection resumed with the same session", self)
        self._run_guarded(self.on_resumed)
        if self.state is CONNECTED:
            self._run_guarded(self._heartbeat)
        self._serve_parked()
        if self.state is CONNECTED:
            # A lock freed while the connection was down woke nobody (or woke
            # a retry that failed against the dropped connection).
            self._run_guarded(self._retry_waiters)

    def _cancel_suspension_timers(self) -> None:
        for timer in self._suspension_timers:
            timer.cancel()
        self._suspension_timers.clear()

    def _probe_after(self, delay: float) -> None:
        self._probe_delay = delay
        self._suspension_timers.append(self.runtime.ticker.call_later(delay, lambda: self.tell_self(_Tick("probe"))))

    def _probe(self) -> None:
        """While suspended, with backoff: ask the backend whether the session is reachable again."""
        try:
            back = self.probe()
        except Exception:  # noqa: BLE001 - still unreachable
            logger.debug("%r: probe failed", self, exc_info=True)
            back = False
        if self.state is not SUSPENDED:
            return
        if back:
            self.resume()
        else:
            self._probe_after(min(self.options.backoff_max, self._probe_delay * 2))

    def fail(self, cause: str) -> None:
        """Actor thread: the session is gone (expired, closed): fail it now."""
        self._fail(errors.BackendUnavailable(cause))

    def tell_self(self, message: Any) -> None:
        """Tell this actor ``message`` from any thread; a no-op once it is dead."""
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    def run_on_actor(self, fn: Callable[..., Any], *args: Any) -> None:
        """From any thread (a watch callback, a stream reader): run ``fn(*args)``
        on the actor thread, in order with everything else the actor does.
        A BackendUnavailable it raises fails the session."""
        self.tell_self(_Run(fn, args))

    def _on_run(self, msg: _Run) -> None:
        if self.state is CONNECTED or self.state is SUSPENDED:
            self._run_guarded(msg.fn, *msg.args)

    def resync(self, group: str) -> None:
        """Read ``group``'s members and leader and emit what changed since the
        last look, for backends that can see state but keep no event log.
        Changes that came and went between two looks are not seen."""
        try:
            members = self.do_get_members(group)
        except errors.GroupNotFound:
            members = frozenset()
        leader = self.do_lock_holder(leader_lock_name(group))
        old_members, old_leader = self._snapshots.get(group, (frozenset(), None))
        self._snapshots[group] = (members, leader)
        for member in sorted(old_members - members):
            self.emit(MemberLeft(group, member))
        for member in sorted(members - old_members):
            self.emit(MemberJoined(group, member))
        if leader is not None and leader != old_leader:
            self.emit(LeaderElected(group, leader))

    def snapshot(self, group: str) -> None:
        """Record ``group``'s state without emitting: later ``resync`` reports changes from now."""
        try:
            members = self.do_get_members(group)
        except errors.GroupNotFound:
            members = frozenset()
        self._snapshots[group] = (members, self.do_lock_holder(leader_lock_name(group)))

    def apply_logged(self, group: str, kind: str, member: str) -> None:
        """A watched ``group``'s event log says ``member`` joined, left or
        became leader (``kind``: ``join``, ``leave``, ``leader``): update the
        snapshot, and emit the event unless the snapshot already had it."""
        members, leader = self._snapshots[group]
        if kind == "join" and member not in members:
            self._snapshots[group] = (members | {member}, leader)
            self.emit(MemberJoined(group, member))
        elif kind == "leave" and member in members:
            self._snapshots[group] = (members - {member}, leader)
            self.emit(MemberLeft(group, member))
        elif kind == "leader" and member != leader:
            self._snapshots[group] = (members, member)
            self.emit(LeaderElected(group, member))

    def forget_snapshot(self, group: str) -> None:
        """Drop ``group``'s snapshot (it is no longer watched)."""
        self._snapshots.pop(group, None)

    @property
    def watched_groups(self) -> frozenset[str]:
        """The groups whose events someone subscribed to."""
        return frozenset(self._watched)

    # -- actor lifecycle ---------------------------------------------------

    def on_start(self) -> None:
        """Actor thread: start the first connect and the tickers."""
        ticker = self.runtime.ticker
        self._timers.append(ticker.every(self.options.heartbeat_interval, self._queue_heartbeat))
        if self.POLLS:
            self._timers.append(ticker.every(self.options.poll_interval, self._queue_poll))
        self._connect(self._desired)

    def on_stop(self) -> None:
        """Actor thread: cancel timers, close the connection, fail what waits."""
        self._stop_everything(errors.CoordinatorStopped(f"the session with {self.url} was stopped"))

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        """Actor thread, after a bug escaped a handler: report, close, fail what waits."""
        self.supervisor.tell(SessionCrashed(f"{exc_type.__name__}: {exc_value}"))
        self._stop_everything(errors.BackendUnavailable(f"the session with {self.url} crashed: {exc_value!r}"))

    def _actor_loop_teardown(self) -> None:
        # pykka drops queued tells silently; our requests are tells, so fail
        # them here, or their callers would wait forever.
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, Call):
                envelope.message.reply.reject(errors.CoordinatorStopped(f"the session with {self.url} stopped before serving {envelope.message.message!r}"))
            elif envelope.reply_to is not None:
                envelope.reply_to.set(None)

    def _stop_everything(self, exc: errors.CoordinationError) -> None:
        self._cancel_suspension_timers()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.conn is not None:
            self._close_quietly()
        self.state = STOPPED
        self._reject_all_waiting(exc)

    def _reject_all_waiting(self, exc: errors.CoordinationError) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                waiter.call.reply.reject(exc)
        self._waiters.clear()
        while self._parked:
            self._parked.popleft().reply.reject(exc)
        for reply in self._connect_replies:
            reply.reject(exc)
        self._connect_replies.clear()

    def _queue_heartbeat(self) -> None:
        if not self._heartbeat_queued:
            self._heartbeat_queued = True
            self.tell_self(_Tick("heartbeat"))

    def _queue_poll(self) -> None:
        if not self._poll_queued and (self._watched or self._waiters or self._campaigns):
            self._poll_queued = True
            self.tell_self(_Tick("poll"))

    # -- dispatch ------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Actor thread: serve a Call, or a control message."""
        if type(message) is Call:
            self._serve(message)
            return None
        handler = self._control.get(type(message))
        if handler is None:
            logger.warning("%r ignored an unknown message %r", self, message)
            return None
        handler(message)
        return None

    def _serve(self, call: Call) -> None:
        message = call.message
        handler = self._handlers.get(type(message))
        if handler is None:
            call.reply.reject(errors.InvalidArgument(f"{type(message).__name__} is not a coordactors message"))
            return
        if self.state is not CONNECTED and type(message) not in (Shutdown, AwaitConnected, GetStatistics, Watch, Unwatch):
            if self.state is STOPPED:
                call.reply.reject(errors.CoordinatorStopped(f"cannot serve {message!r}: the session with {self.url} is stopped"))
            elif self.wait_while_down or self.state is CONNECTING:
                self._parked.append(call)
            else:
                call.reply.reject(errors.BackendUnavailable(f"cannot serve {message!r}: the session with {self.url} is down and restarting"))
            return
        try:
            result = handler(message, call)
        except Exception as exc:
            failure = exc if isinstance(exc, errors.CoordinationError) else self._translated(exc)
            if isinstance(failure, errors.ConnectionSuspended) and type(message) in RETRIED_WHEN_RESUMED and self.wait_while_down:
                # Safe to run again (a read, or setting a value): it waits
                # for the session to resume, like a request sent meanwhile.
                self._parked.append(call)
                self._unavailable(failure)
                return
            self._reject(call, failure)
            return
        if result is not _PENDING:
            self._deliver(call, result)

    def _translated(self, exc: Exception) -> errors.CoordinationError:
        translated = self.translate_error(exc)
        translated.__cause__ = exc
        if not isinstance(translated, errors.BackendUnavailable):
            logger.error("%r: unexpected error", self, exc_info=exc)
        return translated

    def _reject(self, call: Call, exc: errors.CoordinationError) -> None:
        exc.with_context(call.message, self.url)
        if call.reply is NO_REPLY:
            logger.warning("%r: told %r failed: %s", self, call.message, exc)
        call.reply.reject(exc)
        if isinstance(exc, errors.BackendUnavailable) and not isinstance(exc, errors.CoordinatorStopped):
            self._unavailable(exc)

    def _deliver(self, call: Call, value: Any) -> None:
        if not call.reply.resolve(value) and isinstance(value, Lease):
            # Granted after the caller gave up: release it at once.
            self._release_lease(value)

    # -- groups ---------------------------------------------------------------

    def _on_create_group(self, msg: CreateGroup, call: Call) -> None:
        self.do_create_group(msg.group)

    def _on_delete_group(self, msg: DeleteGroup, call: Call) -> None:
        self.do_delete_group(msg.group)

    def _on_get_groups(self, msg: GetGroups, call: Call) -> frozenset[str]:
        return self.do_get_groups()

    def _on_join(self, msg: Join, call: Call) -> None:
        self.do_join(msg.group, msg.capabilities_json, msg.create)
        self._joined[msg.group] = msg.capabilities_json
        self.supervisor.tell(DesiredJoin(msg.group, msg.capabilities_json))

    def _on_leave(self, msg: Leave, call: Call) -> None:
        self.do_leave(msg.group)
        self._joined.pop(msg.group, None)
        self.supervisor.tell(DesiredLeave(msg.group))
        if msg.group in self._campaigns:
            self._stand_down(msg.group)

    def _on_get_members(self, msg: GetMembers, call: Call) -> frozenset[str]:
        return self.do_get_members(msg.group)

    def _on_get_capabilities(self, msg: GetCapabilities, call: Call) -> Any:
        return json.loads(self.do_get_capabilities(msg.group, msg.member))

    def _on_update_capabilities(self, msg: UpdateCapabilities, call: Call) -> None:
        self.do_update_capabilities(msg.group, msg.capabilities_json)
        self._joined[msg.group] = msg.capabilities_json
        self.supervisor.tell(DesiredJoin(msg.group, msg.capabilities_json))

    # -- leaders ----------------------------------------------------------------

    def _on_campaign(self, msg: Campaign, call: Call) -> None:
        if not self.do_group_exists(msg.group):
            raise errors.GroupNotFound(f"cannot campaign for leader of {msg.group!r}: no such group")
        if msg.group not in self._campaigns:
            self._campaigns.add(msg.group)
            self.supervisor.tell(DesiredCampaign(msg.group, True))
            self.on_waiting()
        # The campaign is recorded: if the connection drops now, the restored
        # session campaigns again, so the caller need not hear of it.
        self._run_guarded(self._try_lead, msg.group)

    def _on_stand_down(self, msg: StandDown, call: Call) -> None:
        self._stand_down(msg.group)

    def _stand_down(self, group: str) -> None:
        if group in self._campaigns:
            self._campaigns.discard(group)
            self.supervisor.tell(DesiredCampaign(group, False))
        lease = self._leaders.pop(group, None)
        if lease is not None:
            self._end_lease(lease, "stood down")
            self.do_release(lease.name, lease.fence)
            self._retry_waiters([lease.name])

    def _on_get_leader(self, msg: GetLeader, call: Call) -> str | None:
        if not self.do_group_exists(msg.group):
            raise errors.GroupNotFound(f"cannot read the leader of {msg.group!r}: no such group")
        return self.do_lock_holder(leader_lock_name(msg.group))

    def _try_lead(self, group: str) -> None:
        if group in self._leaders or group not in self._campaigns:
            return
        ttl = self.options.lease_ttl
        sent_at = time.monotonic()
        fence = self.do_try_acquire(leader_lock_name(group), ttl)
        if fence is not None:
            lease = self._new_lease(leader_lock_name(group), fence, ttl, sent_at)
            self._leaders[group] = lease
            self.supervisor.tell(LeaseGranted(lease))

    # -- locks -------------------------------------------------------------------

    def _new_lease(self, name: str, fence: int, ttl: float | None, sent_at: float) -> Lease:
        return Lease(name, fence, self.member_id, ttl=ttl, state=LeaseState(self._expiry(ttl, sent_at)))

    def _expiry(self, ttl: float | None, sent_at: float) -> float | None:
        if ttl is not None:
            return sent_at + ttl - drift_margin(ttl)
        return self._session_valid_until

    def _on_acquire(self, msg: Acquire, call: Call) -> Any:
        if msg.ttl is not None and not self.LEASE_TTL:
            raise errors.NotSupported(
                f"cannot acquire {msg.name!r} with ttl={msg.ttl}: on this backend a lock lives exactly as long as "
                "the session (see session_ttl), so a per-lease TTL is not supported"
            )
        ttl = self.lease_ttl_of(msg)
        queued = self._waiters.get(msg.name)
        lost_connection: errors.BackendUnavailable | None = None
        if not queued and msg.name not in self._leases:
            sent_at = time.monotonic()
            try:
                fence = self.do_try_acquire(msg.name, ttl)
            except errors.BackendUnavailable as exc:
                # A caller prepared to wait may wait for the restored session
                # too; a try-lock, or a caller who chose to fail fast, is told.
                if msg.timeout == 0 or not self.wait_while_down:
                    raise
                fence, lost_connection = None, exc
            except errors.CoordinationError:
                raise  # already ours: a foreign format, a refusal...
            except Exception as exc:
                translated = self._translated(exc)
                if msg.timeout == 0 or not self.wait_while_down or not isinstance(translated, errors.BackendUnavailable):
                    raise translated from exc
                fence, lost_connection = None, translated
            if fence is not None:
                return self._hold(msg.name, fence, ttl, sent_at)
        if msg.timeout == 0:
            raise errors.LockTimeout(f"lock {msg.name!r} is held by another holder (try-lock, timeout=0)")
        waiter = _Waiter(call, msg.name, ttl, msg.timeout)
        deadlines = [d for d in (waiter.lock_deadline, call.deadline) if d is not None]
        if deadlines:
            waiter.timer = self.runtime.ticker.call_later(min(deadlines) - time.monotonic(), lambda: self.tell_self(_Expire(waiter)))
        self._waiters.setdefault(msg.name, collections.deque()).append(waiter)
        self.on_waiting()
        if lost_connection is not None:
            self._unavailable(lost_connection)
        if self.RETRY_ONCE_WAITING:
            self._run_guarded(self._retry_waiters, [msg.name])
        return _PENDING

    def lease_ttl_of(self, msg: Acquire) -> float | None:
        """The TTL an acquire's lease gets: its own, else the URL's ``lease_ttl``."""
        return msg.ttl if msg.ttl is not None else self.options.lease_ttl

    def _hold(self, name: str, fence: int, ttl: float | None, sent_at: float) -> Lease:
        lease = self._new_lease(name, fence, ttl, sent_at)
        self._leases[name] = lease
        self._lost.pop(name, None)
        self.supervisor.tell(LeaseGranted(lease))
        return lease

    def _on_release(self, msg: Release, call: Call) -> None:
        name = msg.name
        lease = self._leases.get(name)
        wanted = msg.name_or_lease if isinstance(msg.name_or_lease, Lease) else None
        if lease is None or (wanted is not None and wanted.fence != lease.fence):
            held = f"; it holds fence {lease.fence}" if lease is not None else ""
            lost = f" ({self._lost[name]})" if name in self._lost else ""
            which = f"fence {wanted.fence}" if wanted is not None else "no lease"
            raise errors.LockNotHeld(f"cannot release {name!r}: this member holds {which} on it{held}{lost}")
        if not self._release_lease(lease):
            raise errors.LockNotHeld(f"cannot release {name!r}: fence {lease.fence} had already been lost on the backend")

    def _release_lease(self, lease: Lease) -> bool:
        """Release a held lease; False (and a LockLost) if the backend had lost it."""
        if self._leases.get(lease.name) is not lease:
            return True
        del self._leases[lease.name]
        still_ours = self.do_release(lease.name, lease.fence)
        if still_ours:
            self._end_lease(lease, "released")
        else:
            self._lose(lease, "the backend no longer held it at release")
        self._retry_waiters([lease.name])
        return still_ours

    def _end_lease(self, lease: Lease, cause: str) -> None:
        lease._state.mark_lost(cause)  # noqa: SLF001
        self.supervisor.tell(LeaseEnded(lease.name, lease.fence))

    def _lose(self, lease: Lease, cause: str) -> None:
        """The world took ``lease``: mark it, tell the supervisor, emit LockLost."""
        self._leases.pop(lease.name, None)
        for group, held in list(self._leaders.items()):
            if held is lease:
                del self._leaders[group]
        self._lost[lease.name] = f"fence {lease.fence} was lost at {time.strftime('%H:%M:%S')}: {cause}"
        self._end_lease(lease, cause)
        self.emit(LockLost(lease.name, lease.fence, cause))

    def _on_expire(self, msg: _Expire) -> None:
        waiter = msg.waiter
        queue_ = self._waiters.get(waiter.name)
        if not queue_ or waiter not in queue_:
            return
        queue_.remove(waiter)
        if not queue_:
            del self._waiters[waiter.name]
        if waiter.lock_deadline is not None and time.monotonic() >= waiter.lock_deadline - 0.001:
            self._reject(waiter.call, errors.LockTimeout(f"lock {waiter.name!r} was held by another holder for the whole {waiter.timeout}s timeout"))
        else:
            waiter.call.reply.reject(errors.OperationTimedOut(f"no grant of {waiter.name!r} before the caller's deadline"))

    def _on_wake(self, msg: _Wake) -> None:
        if self.state is CONNECTED:
            self._run_guarded(self._retry_waiters, msg.names)

    def _retry_waiters(self, names: Any = None) -> None:
        for name in list(self._waiters if names is None else names):
            waiters = self._waiters.get(name)
            while waiters:
                waiter = waiters[0]
                if not waiter.call.reply.wanted():
                    waiters.popleft()
                    if waiter.timer is not None:
                        waiter.timer.cancel()
                    continue
                if name in self._leases:
                    break
                sent_at = time.monotonic()
                fence = self.do_try_acquire(name, waiter.ttl)
                if fence is None:
                    break
                waiters.popleft()
                if waiter.timer is not None:
                    waiter.timer.cancel()
                self._deliver(waiter.call, self._hold(name, fence, waiter.ttl, sent_at))
            if not waiters:
                self._waiters.pop(name, None)
        for group in list(self._campaigns):
            if names is None or leader_lock_name(group) in names:
                self._try_lead(group)

    # -- heartbeat and polling ----------------------------------------------------

    def _on_heartbeat(self, msg: Heartbeat, call: Call) -> float:
        self._heartbeat()
        return self.options.heartbeat_interval

    def _heartbeat(self) -> None:
        sent_at = time.monotonic()
        self.do_heartbeat()
        ttl = self.options.session_ttl
        self._session_valid_until = sent_at + ttl - drift_margin(ttl) if ttl is not None else None
        # A lease whose local expiry passed was already given up by its
        # holder's clock (check() raised): it stays lost, even if a refresh
        # would still find the key ours.  Never revive it.
        self._expire_locally()
        held = [*self._leases.values(), *self._leaders.values()]
        if held:
            lost = self.do_refresh(held)
            for lease in held:
                if (lease.name, lease.fence) in lost:
                    self._lose(lease, "its refresh found it expired or taken")
                else:
                    lease._state.expires_at = self._expiry(lease.ttl, sent_at)  # noqa: SLF001
        self._retry_waiters()

    def _expire_locally(self) -> None:
        now = time.monotonic()
        for lease in [*self._leases.values(), *self._leaders.values()]:
            expires_at = lease._state.expires_at  # noqa: SLF001
            if expires_at is not None and expires_at <= now:
                self._lose(lease, "it expired locally: no refresh landed within its TTL")
                if self.state is CONNECTED:
                    self._abandon_quietly([lease])

    def _expire_while_suspended(self) -> None:
        """A suspended session's clock runs on: the session, or else leases, expire locally."""
        valid_until = self._session_valid_until
        if valid_until is not None and valid_until <= time.monotonic():
            self._fail(errors.BackendUnavailable(
                f"the connection to {self.url} stayed suspended past the session's timeout: the session is presumed expired"))
        else:
            self._expire_locally()

    def _on_tick(self, msg: _Tick) -> None:
        if msg.kind == "heartbeat":
            self._heartbeat_queued = False
            if self.state is CONNECTED:
                self._run_guarded(self._heartbeat)
            elif self.state is SUSPENDED:
                self._expire_while_suspended()
        elif msg.kind == "probe":
            if self.state is SUSPENDED:
                self._probe()
        else:
            self._poll_queued = False
            if self.state is CONNECTED:
                self._run_guarded(self._poll)

    def _poll(self) -> None:
        self.do_poll()
        self._retry_waiters()

    def _run_guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run background work; a backend failure fails the session, a bug is logged."""
        try:
            fn(*args)
        except errors.BackendUnavailable as exc:
            self._unavailable(exc)
        except errors.CoordinationError:
            logger.exception("%r: background %s failed", self, getattr(fn, "__name__", fn))
        except Exception as exc:
            translated = self._translated(exc)
            if isinstance(translated, errors.BackendUnavailable):
                self._unavailable(translated)

    def _unavailable(self, exc: errors.BackendUnavailable) -> None:
        """A request found the backend unreachable: fail the session -- unless
        it is suspended (or the error says it just was), when ``resume()``
        catches up or the session's local expiry fails it."""
        if isinstance(exc, errors.ConnectionSuspended):
            self.suspend(str(exc))
        elif self.state is not SUSPENDED:
            self._fail(exc)

    # -- watches ------------------------------------------------------------------

    def _on_watch(self, msg: Watch, call: Call) -> None:
        self.supervisor.tell(AddSubscriber(msg.group, msg.subscriber, msg.events))
        if msg.group is None:
            return
        count = self._watched.get(msg.group, 0)
        if count == 0 and self.state is CONNECTED:
            self.do_watch(msg.group)
        self._watched[msg.group] = count + 1

    def _on_unwatch(self, msg: Unwatch, call: Call) -> None:
        self.supervisor.tell(RemoveSubscriber(msg.group, msg.subscriber))
        if msg.group is None or msg.group not in self._watched:
            return
        self._watched[msg.group] -= 1
        if self._watched[msg.group] <= 0:
            del self._watched[msg.group]
            if self.state is CONNECTED:
                self.do_unwatch(msg.group)

    # -- connection, failure, restore ---------------------------------------------

    def _connect(self, desired: DesiredState) -> None:
        self._generation += 1
        generation = self._generation
        self.state = CONNECTING if self._first_connect else DOWN

        def open_in_background() -> None:
            try:
                conn = self.open()
            except BaseException as exc:  # noqa: BLE001 - reported to the actor
                self.tell_self(_Opened(generation, desired, error=exc))
            else:
                self.tell_self(_Opened(generation, desired, conn=conn))

        self.runtime.blocking.submit(open_in_background)

    def _on_opened(self, msg: _Opened) -> None:
        if msg.generation != self._generation or self.state is STOPPED:
            if msg.conn is not None:
                self.conn, stale = msg.conn, self.conn
                self._close_quietly()
                self.conn = stale
            return
        if msg.error is None:
            self.conn = msg.conn
            try:
                registered_at = time.monotonic()
                self.on_connected()
                ttl = self.options.session_ttl
                # The session's lifetime runs from its registration, not from
                # its first heartbeat: a lease granted before that heartbeat
                # must still expire locally if the process stalls.
                self._session_valid_until = registered_at + ttl - drift_margin(ttl) if ttl is not None else None
                self._restore(msg.desired)
                error: BaseException | None = None
            except Exception as exc:  # noqa: BLE001
                error = exc
        else:
            error = msg.error
        if error is not None:
            failure = error if isinstance(error, errors.CoordinationError) else self.translate_error(error)
            if failure is not error:
                failure.__cause__ = error
            failure.with_context(None, self.url)
            if self.conn is not None:
                self._close_quietly()
            if self._first_connect:
                self._connect_error = failure
                for reply in self._connect_replies:
                    reply.reject(failure)
                self._connect_replies.clear()
                return
            self.state = DOWN
            self.supervisor.tell(SessionDown(str(failure), ()))
            return
        self.state = CONNECTED
        restored = not self._first_connect
        self._first_connect = False
        for reply in self._connect_replies:
            reply.resolve(True)
        self._connect_replies.clear()
        self.supervisor.tell(SessionUp(restored))
        self._serve_parked()

    def _serve_parked(self) -> None:
        parked, self._parked = self._parked, collections.deque()
        for call in parked:
            if call.reply.wanted():
                self._serve(call)
        if self.state is CONNECTED:
            self._run_guarded(self._retry_waiters)

    def _restore(self, desired: DesiredState) -> None:
        """Re-apply what the application asked for, on a fresh connection."""
        self._joined = {}
        for group, capabilities_json in desired.joined:
            try:
                self.do_join(group, capabilities_json, True)
            except errors.MemberAlreadyJoined:
                # Our old membership outlived the old session (its expiry has
                # not come yet): take it over with the capabilities we want.
                self.do_update_capabilities(group, capabilities_json)
            self._joined[group] = capabilities_json
        for group in desired.watched:
            self._watched.setdefault(group, 1)
        for group in self._watched:
            self.do_watch(group)
        self._campaigns = set(desired.campaigns)
        if self._campaigns:
            self.on_waiting()
        for group in self._campaigns:
            self._try_lead(group)

    def _fail(self, exc: BaseException) -> None:
        """The connection is gone: every lease is lost; the supervisor restarts us."""
        if self.state is not CONNECTED and self.state is not SUSPENDED:
            return
        self._cancel_suspension_timers()
        suspended = self.state is SUSPENDED
        self.state = DOWN
        cause = str(exc) or type(exc).__name__
        lost = [*self._leases.values(), *self._leaders.values()]
        for lease in lost:
            lease._state.mark_lost(f"session lost: {cause}")  # noqa: SLF001
            self._lost[lease.name] = f"fence {lease.fence} was lost at {time.strftime('%H:%M:%S')} with the session"
        self._leases.clear()
        self._leaders.clear()
        if not suspended:  # a suspended connection cannot free anything
            self._abandon_quietly(lost)
        self._close_quietly()
        logger.warning("%r: session lost: %s", self, cause)
        self.supervisor.tell(SessionDown(cause, tuple(lost)))

    def _abandon_quietly(self, leases: list[Lease]) -> None:
        """Best effort: free what was just declared lost, if the backend still
        answers, so others need not wait out the TTL.  On a dead connection
        this fails at once and the backend's own expiry frees them."""
        for lease in leases:
            try:
                self.do_release(lease.name, lease.fence)
            except Exception:  # noqa: BLE001 - the connection is likely gone
                logger.debug("%r: could not free %r after the session failed", self, lease.name, exc_info=True)
                return

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail
            logger.debug("%r: close failed", self, exc_info=True)
        self.conn = None

    def _on_reconnect(self, msg: Reconnect) -> None:
        if self.state is DOWN:
            self._connect(msg.desired)

    def _on_inject_failure(self, msg: InjectFailure) -> None:
        if msg.crash:
            raise RuntimeError(f"crash injected: {msg.cause}")
        self._fail(errors.BackendUnavailable(msg.cause))

    def _on_await_connected(self, msg: AwaitConnected, call: Call) -> Any:
        if self.state is CONNECTED:
            return True
        if self._connect_error is not None:
            raise self._connect_error
        self._connect_replies.append(call.reply)
        return _PENDING

    def _on_shutdown(self, msg: Shutdown, call: Call) -> None:
        if self.state is CONNECTED:
            try:
                for group in list(self._campaigns):
                    self._stand_down(group)
                for lease in list(self._leases.values()):
                    self._release_lease(lease)
                for group in list(self._joined):
                    try:
                        self.do_leave(group)
                    except (errors.GroupNotFound, errors.MemberNotJoined):
                        pass
                self.do_shutdown()
            except Exception:  # noqa: BLE001 - a dead backend cannot be left politely
                logger.debug("%r: graceful shutdown failed", self, exc_info=True)
        self._stop_everything(errors.CoordinatorStopped(f"the session with {self.url} was stopped"))

    def _on_statistics(self, msg: GetStatistics, call: Call) -> dict[str, Any]:
        return {
            "state": self.state,
            "leases": len(self._leases),
            "leaderships": sorted(self._leaders),
            "waiting": sum(len(w) for w in self._waiters.values()),
            "parked": len(self._parked),
            "joined": sorted(self._joined),
            "campaigns": sorted(self._campaigns),
            "watched": sorted(self._watched),
            "connections": self._generation,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} {getattr(self, 'state', '?')} member={getattr(self, 'member_id', '?')!r} leases={len(getattr(self, '_leases', ()))}>"
