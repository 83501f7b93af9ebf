"""SupervisorActor: keeps what the application asked for alive.

It owns the session actor of one coordinator.  It learns of state changes by
``tell`` from the session (off the reply path), restarts a failed session with
capped exponential backoff, replays the desired state, and fans events out to
subscribers, in order per subscriber.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable

import pykka

from coordactors import errors
from coordactors._protocol import (
    AddSubscriber,
    Call,
    DesiredCampaign,
    DesiredJoin,
    DesiredLeave,
    DesiredState,
    LeaseEnded,
    LeaseGranted,
    Publish,
    Reconnect,
    RemoveSubscriber,
    SessionCrashed,
    SessionDown,
    SessionUp,
)
from coordactors.backend_actors.base import CallInbox
from coordactors.events import GROUP_EVENTS, Event, LockLost, SessionLost, SessionRestored
from coordactors.messages import Lease, Unwatch, Watch
from coordactors.runtime import SerialQueue

logger = logging.getLogger(__name__)

__all__ = ["Backoff", "Ledger", "Route", "SupervisorActor", "SupervisorLink"]


class Ledger:
    """What the application asked for and which leases the session holds.

    Written by the session actor as it serves requests and read by the
    supervisor when it restarts or replaces the session.  Shared under a lock
    instead of sent as messages: a message to the supervisor per join, grant
    or release woke the supervisor's thread on every request, and on a busy
    machine that thread switch competed with the reply's."""

    __slots__ = ("_lock", "campaigns", "joined", "leases")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.joined: dict[str, str] = {}
        self.campaigns: set[str] = set()
        self.leases: dict[tuple[str, int], Lease] = {}

    def apply(self, message: Any) -> bool:
        """Record a session -> supervisor state change; False if ``message`` is not one."""
        kind = type(message)
        with self._lock:
            if kind is LeaseGranted:
                self.leases[(message.lease.name, message.lease.fence)] = message.lease
            elif kind is LeaseEnded:
                self.leases.pop((message.name, message.fence), None)
            elif kind is DesiredJoin:
                self.joined[message.group] = message.capabilities_json
            elif kind is DesiredLeave:
                self.joined.pop(message.group, None)
            elif kind is DesiredCampaign:
                if message.active:
                    self.campaigns.add(message.group)
                else:
                    self.campaigns.discard(message.group)
            else:
                return False
        return True

    def desired(self, watched: frozenset[str]) -> DesiredState:
        """The state a new session must restore."""
        with self._lock:
            return DesiredState(tuple(self.joined.items()), frozenset(self.campaigns), watched)

    def drop_leases(self, leases: Any = None) -> list[Lease]:
        """Forget ``leases`` (default: all); return those that were recorded."""
        with self._lock:
            if leases is None:
                dropped = list(self.leases.values())
                self.leases.clear()
                return dropped
            return [lease for lease in (self.leases.pop((lease.name, lease.fence), None) for lease in leases) if lease is not None]


_LEDGER_MESSAGES = frozenset({LeaseGranted, LeaseEnded, DesiredJoin, DesiredLeave, DesiredCampaign})


class SupervisorLink:
    """What a session holds as its ``supervisor``: state changes go straight
    into the shared :class:`Ledger` (on the session's thread, in order with
    everything it tells afterwards); events and failures are told to the
    supervisor actor."""

    __slots__ = ("_ledger", "_ref")

    def __init__(self, ref: pykka.ActorRef[Any], ledger: Ledger) -> None:
        self._ref = ref
        self._ledger = ledger

    def tell(self, message: Any) -> None:
        """Record a state change, or tell the supervisor ``message``."""
        if type(message) in _LEDGER_MESSAGES:
            self._ledger.apply(message)
            return
        try:
            self._ref.tell(message)
        except pykka.ActorDeadError:
            # The coordinator stopped: its supervisor is gone and stops this
            # session next.  Raising here would crash the session before it
            # closed its connection (a session that reconnected just then
            # left its connection and event reader behind).
            logger.debug("the supervisor is gone; dropped %r", message)

    @property
    def actor_ref(self) -> pykka.ActorRef[Any]:
        """The supervisor actor."""
        return self._ref


class Route:
    """Where a coordinator's requests go: the current session actor.

    Shared by the coordinator (reads) and the supervisor (swaps it when a
    crashed session actor is replaced)."""

    __slots__ = ("ledger", "restarts", "retry_delays", "session", "token")

    def __init__(self) -> None:
        self.ledger = Ledger()
        """The application's desired state and the session's leases."""
        self.session: pykka.ActorRef[Any] | None = None
        self.token = uuid.uuid4().hex
        """The session's identity at the backend, kept across restarts."""
        self.restarts = 0
        self.retry_delays: list[float] = []
        """The latest reconnect delays, for statistics()."""


class Backoff:
    """Capped exponential backoff: ``initial``, doubled per failure, at most ``maximum``.

    ``reset()`` after a success.  No jitter: each supervisor reconnects one
    session, so there is no herd to spread within a process.
    """

    __slots__ = ("_next", "initial", "maximum")

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt; the one after doubles, up to ``maximum``."""
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """Start again from ``initial``."""
        self._next = self.initial


class _Subscriber:
    """One subscriber: an actor ref, or a callable behind its own serial queue."""

    __slots__ = ("events", "queue", "target")

    def __init__(self, target: Any, events: frozenset[type[Event]], queue: SerialQueue | None) -> None:
        self.target = target
        self.events = events
        self.queue = queue


class SupervisorActor(pykka.ThreadingActor):
    """Restarts the session, replays the desired state, fans events out.

    All methods run on the supervisor's own thread and never block: reconnects
    are scheduled on the ticker and performed by the session on an executor.
    """

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> CallInbox:
        return CallInbox()

    def __init__(self, session_factory: Callable[[pykka.ActorRef[Any], DesiredState, bool], pykka.ActorRef[Any]], route: Route, runtime: Any, options: Any) -> None:
        super().__init__()
        self._session_factory = session_factory
        self._route = route
        self._runtime = runtime
        self._options = options
        self._ledger = route.ledger
        self._subscribers: dict[str | None, list[_Subscriber]] = {}
        self._down_since: float | None = None
        self.backoff = Backoff(options.backoff_initial, options.backoff_max)
        self._retry_timer: Any = None
        self._stopping = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            Publish: self._on_publish,
            DesiredJoin: self._on_desired_join,
            DesiredLeave: self._on_desired_leave,
            DesiredCampaign: self._on_desired_campaign,
            AddSubscriber: self._on_add_subscriber,
            RemoveSubscriber: self._on_remove_subscriber,
            LeaseGranted: self._on_lease_granted,
            LeaseEnded: self._on_lease_ended,
            SessionDown: self._on_session_down,
            SessionUp: self._on_session_up,
            SessionCrashed: self._on_session_crashed,
            Call: self._on_call,
            _DropSubscriber: self._on_drop_subscriber,
            _Retry: self._on_retry,
        }

    def on_start(self) -> None:
        """Supervisor thread: start the first session actor."""
        self._route.session = self._session_factory(self.actor_ref, self.desired_state(), False)

    def on_stop(self) -> None:
        """Supervisor thread: stop retrying, stop the session, close subscriber queues."""
        self._stopping = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        session = self._route.session
        if session is not None:
            session.stop(block=True, timeout=10)
        for subscribers in self._subscribers.values():
            for sub in subscribers:
                if sub.queue is not None:
                    sub.queue.close()

    def on_receive(self, message: Any) -> Any:
        """Supervisor thread: route by type."""
        handler = self._handlers.get(type(message))
        if handler is None:
            logger.warning("supervisor ignored an unknown message %r", message)
            return None
        try:
            handler(message)
        except Exception:
            # The supervisor must outlive its own bugs: a dead supervisor
            # would restore nothing and deliver no event.
            logger.exception("supervisor of %s failed handling %r", self._options.redacted, message)
        return None

    def desired_state(self) -> DesiredState:
        """What a new session must restore."""
        watched = frozenset(g for g, subs in self._subscribers.items() if g is not None and subs)
        return self._ledger.desired(watched)

    # -- requests from actor systems ------------------------------------------

    def _on_call(self, call: Call) -> None:
        message = call.message
        if isinstance(message, (Watch, Unwatch)) and message.group is None:
            if isinstance(message, Watch):
                self._on_add_subscriber(AddSubscriber(None, message.subscriber, message.events))
            else:
                self._on_remove_subscriber(RemoveSubscriber(None, message.subscriber))
            call.reply.resolve(None)
            return
        session = self._route.session
        try:
            if session is None:
                raise pykka.ActorDeadError("no session")
            session.tell(call)
        except pykka.ActorDeadError:
            call.reply.reject(errors.BackendUnavailable(f"the session with {self._options.redacted} is restarting"))

    # -- desired state ----------------------------------------------------------

    # A session started with a SupervisorLink records these in the ledger
    # itself; one told them as messages (an older caller) lands here.

    def _on_desired_join(self, msg: DesiredJoin) -> None:
        self._ledger.apply(msg)

    def _on_desired_leave(self, msg: DesiredLeave) -> None:
        self._ledger.apply(msg)

    def _on_desired_campaign(self, msg: DesiredCampaign) -> None:
        self._ledger.apply(msg)

    def _on_lease_granted(self, msg: LeaseGranted) -> None:
        self._ledger.apply(msg)

    def _on_lease_ended(self, msg: LeaseEnded) -> None:
        self._ledger.apply(msg)

    # -- subscribers and fan-out -----------------------------------------------------

    def _on_add_subscriber(self, msg: AddSubscriber) -> None:
        subscribers = self._subscribers.setdefault(msg.group, [])
        for sub in subscribers:
            if sub.target == msg.subscriber:
                sub.events = msg.events
                return
        queue = None
        if not isinstance(msg.subscriber, pykka.ActorRef):
            target = msg.subscriber
            queue = SerialQueue(self._runtime.callbacks, lambda exc: self._report_failed_callable(target, exc))
        subscribers.append(_Subscriber(msg.subscriber, msg.events, queue))

    def _on_remove_subscriber(self, msg: RemoveSubscriber) -> None:
        subscribers = self._subscribers.get(msg.group, [])
        for sub in list(subscribers):
            if sub.target == msg.subscriber:
                subscribers.remove(sub)
                if sub.queue is not None:
                    sub.queue.close()
        if not subscribers:
            self._subscribers.pop(msg.group, None)

    def _report_failed_callable(self, target: Any, exc: BaseException) -> None:
        # Runs on a callback thread: log here, drop on the supervisor's thread.
        logger.error("subscriber %r failed and was dropped", target, exc_info=exc)
        try:
            self.actor_ref.tell(_DropSubscriber(target))
        except pykka.ActorDeadError:
            pass

    def _on_drop_subscriber(self, msg: _DropSubscriber) -> None:
        for group in list(self._subscribers):
            self._on_remove_subscriber(RemoveSubscriber(group, msg.target))

    def _on_publish(self, msg: Publish) -> None:
        self._fan_out(msg.event)

    def _fan_out(self, event: Event) -> None:
        group = getattr(event, "group", None) if type(event) in GROUP_EVENTS else None
        for sub in list(self._subscribers.get(group, ())):
            if type(event) not in sub.events:
                continue
            if sub.queue is None:
                try:
                    sub.target.tell(event)
                except pykka.ActorDeadError:
                    logger.warning("subscriber %r is dead and was dropped", sub.target)
                    self._on_drop_subscriber(_DropSubscriber(sub.target))
            else:
                sub.queue.put(sub.target, event)

    # -- supervision ----------------------------------------------------------------

    def _on_session_down(self, msg: SessionDown) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._fan_out(SessionLost(msg.cause))
        self._ledger.drop_leases(msg.lost)
        for lease in msg.lost:
            self._fan_out(LockLost(lease.name, lease.fence, f"session lost: {msg.cause}"))
        self._schedule_retry()

    def _on_session_crashed(self, msg: SessionCrashed) -> None:
        logger.error("the session with %s crashed (%s); starting a new one", self._options.redacted, msg.cause)
        self._route.session = None
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._fan_out(SessionLost(msg.cause))
        for lease in self._ledger.drop_leases():
            lease._state.mark_lost(f"session crashed: {msg.cause}")  # noqa: SLF001
            self._fan_out(LockLost(lease.name, lease.fence, f"session crashed: {msg.cause}"))
        self._schedule_retry(replace_actor=True)

    def _schedule_retry(self, *, replace_actor: bool = False) -> None:
        if self._stopping:
            return
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        delay = self.backoff.next()
        self._route.retry_delays.append(delay)
        del self._route.retry_delays[:-32]
        ref = self.actor_ref
        self._retry_timer = self._runtime.ticker.call_later(delay, lambda: _tell_quietly(ref, _Retry(replace_actor)))

    def _on_retry(self, msg: _Retry) -> None:
        self._retry_timer = None
        if self._stopping:
            return
        self._route.restarts += 1
        if msg.replace_actor or self._route.session is None:
            self._route.session = self._session_factory(self.actor_ref, self.desired_state(), True)
            return
        try:
            self._route.session.tell(Reconnect(self.desired_state()))
        except pykka.ActorDeadError:
            self._route.session = self._session_factory(self.actor_ref, self.desired_state(), True)

    def _on_session_up(self, msg: SessionUp) -> None:
        self.backoff.reset()
        if self._down_since is not None:
            downtime = time.monotonic() - self._down_since
            self._down_since = None
            self._fan_out(SessionRestored(downtime))


class _DropSubscriber:
    __slots__ = ("target",)

    def __init__(self, target: Any) -> None:
        self.target = target


class _Retry:
    __slots__ = ("replace_actor",)

    def __init__(self, replace_actor: bool) -> None:
        self.replace_actor = replace_actor


def _tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        pass
