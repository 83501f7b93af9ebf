"""Run one operation for one contender at one concurrency on one backend.

Modes: ``c1``/``c4``/``c16`` are that many callers sharing one coordinator
(one tooz coordinator or raw connection cannot be shared between threads, so
those contenders run ``c1`` and ``sep16`` only); ``sep16`` is 16 callers with
a coordinator (or connection) each.  The asyncio contender's callers are tasks
on one event loop.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import coordactors
from coordactors import errors
from coordactors.bench.backends import Backend
from coordactors.bench.contenders import AwaitedHandOffSession, HandedOffSession, RawSession, open_tooz
from coordactors.bench.measure import Sample, histogram, summarise, time_async_callers, time_callers
from coordactors.bench.operations import Operation, drive, drive_async
from coordactors.messages import CreateGroup, DeleteGroup, Join, Leave

logger = logging.getLogger(__name__)

__all__ = ["MODES", "Fixture", "Trial", "run_interleaved", "run_trial"]

MODES = {"c1": (1, True), "c4": (4, True), "c16": (16, True), "sep16": (16, False)}
"""mode -> (callers, sharing one coordinator)."""
REQUEST_TIMEOUT = 30.0
RAW_SESSIONS = {"raw": RawSession, "handoff": HandedOffSession, "async_handoff": AwaitedHandOffSession}
"""The contenders that drive the backend by hand, and how each makes its calls."""


class Fixture:
    """What a backend's trials share: URL, the contended lock's holder and the big group."""

    def __init__(self, backend: Backend, namespace: str, big_group_size: int) -> None:
        self.backend = backend
        self.namespace = namespace
        self.url = backend.url(namespace)
        self.tooz_url = backend.private_tooz_url(namespace)
        self.big_group = f"{namespace}-big"
        self.held_lock = f"{namespace}-held"
        self._closers: list[Callable[[], Any]] = []
        self._serial = 0
        self.tooz_held: Any = None
        self.tooz_setup_error: str | None = None
        try:
            self._setup(backend, namespace, big_group_size)
        except BaseException:
            self.close()
            raise

    def _setup(self, backend: Backend, namespace: str, big_group_size: int) -> None:
        # The contended lock is held by another member for the whole run.
        holder = coordactors.connect(self.url, "bench-holder")
        self._closers.append(holder.stop)
        holder.ask(coordactors.messages.Acquire(self.held_lock), block=True, timeout=REQUEST_TIMEOUT)
        # The big group: one connection joining as 1,000 members, alive for the run.
        populator = RawSession(backend.url(namespace, session_ttl=3600) if backend.name not in ("memory",) else self.url, "bench-populator")
        self._closers.append(populator.close)
        populator.session.do_create_group(self.big_group)
        for i in range(big_group_size):
            populator.as_member(f"member-{i:04d}")
            populator.session.do_join(self.big_group, "null", False)
        if self.tooz_url is not None:
            try:
                self._tooz_setup(big_group_size)
            except Exception as exc:  # noqa: BLE001 - tooz lacks it: its trials say so
                self.tooz_setup_error = f"{type(exc).__name__}: {exc}"

    def _tooz_setup(self, size: int) -> None:
        # It beats on its own: the contended lock must outlive its session's
        # TTL (tooz's Consul session expired mid-run and freed it).
        holder = open_tooz(self.tooz_url, "bench-tooz-holder", heart=True)
        self._closers.append(holder.stop)
        lock = holder.get_lock(self.held_lock.encode())
        if not lock.acquire(blocking=False):
            raise RuntimeError("tooz: could not take the contended lock")
        self.tooz_held = lock
        self._closers.append(lock.release)
        # It beats too: on etcd3 its memberships share its lease, which
        # expired mid-run and emptied the group tooz then listed.
        populator = open_tooz(self.tooz_url, "bench-tooz-populator", heart=True)
        self._closers.append(populator.stop)
        group = self.big_group.encode()
        populator.create_group(group).get()
        for i in range(size):
            # One connection joining as many members (tooz keys members by these attributes).
            member = f"member-{i:04d}".encode()
            populator._member_id = member  # noqa: SLF001
            if hasattr(populator, "_safe_member_id"):
                populator._safe_member_id = populator._make_filesystem_safe(member)  # noqa: SLF001
            populator.join_group(group).get()

    def fresh(self, what: str) -> str:
        """A name never used before in this run."""
        self._serial += 1
        return f"{self.namespace}-{what}{self._serial}"

    def close(self) -> None:
        """Release the holder, drop the populators."""
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:  # noqa: BLE001
                logger.debug("fixture close failed", exc_info=True)


def _caller_state(fixture: Fixture, op: Operation, admin: Any, client: Any, kind: str, index: int, undo: list[Callable[[], Any]]) -> Any:
    """Prepare caller ``index``'s argument for ``op``; append to ``undo`` (run
    last to first) what takes it away again.

    Every contender starts from the same backend state: a trial's groups are
    left and deleted after it, and caller ``index`` of every trial locks the
    same name (a registry keeps a fence per lock name ever used: fresh names
    per trial made file and IPC slower for each contender measured later)."""
    if op.needs == "lock":
        name = f"{fixture.namespace}-lock{index}"
        return client.get_lock(name.encode()) if kind == "tooz" else name
    if op.needs == "held":
        return client.get_lock(fixture.held_lock.encode()) if kind == "tooz" else fixture.held_lock
    if op.needs == "big":
        return fixture.big_group.encode() if kind == "tooz" else fixture.big_group
    group = fixture.fresh("group")
    if kind == "tooz":
        client.create_group(group.encode()).get()
        undo.append(lambda: client.delete_group(group.encode()).get())
        if op.needs == "joined":
            client.join_group(group.encode()).get()
            undo.append(lambda: client.leave_group(group.encode()).get())
        return group.encode()
    admin(CreateGroup(group))
    undo.append(lambda: admin(DeleteGroup(group)))
    if op.needs == "joined":
        if kind == "raw":
            client.session.do_join(group, "null", False)
            undo.append(lambda: client.session.do_leave(group))
        else:
            client.ask(Join(group), block=True, timeout=REQUEST_TIMEOUT)
            undo.append(lambda: client.ask(Leave(group), block=True, timeout=REQUEST_TIMEOUT))
    return group


class Trial:
    """One contender's callers of one operation in one mode, set up once and
    timed in as many slices as asked; :meth:`sample` summarises them all."""

    def __init__(self, fixture: Fixture, op: Operation, contender: str, mode: str) -> None:
        self.contender = contender
        self._closers: list[Callable[[], Any]] = []
        self._latencies = histogram()
        self._seconds = 0.0
        try:
            self._time = self._prepare(fixture, op, contender, mode)
        except BaseException:
            self.close()
            raise

    def _prepare(self, fixture: Fixture, op: Operation, contender: str, mode: str) -> Callable[[int, float], tuple[Any, float]]:
        callers, shared = MODES[mode]
        closers = self._closers
        admin_coord = coordactors.connect(fixture.url, fixture.fresh("admin"))
        closers.append(admin_coord.stop)

        def admin(message: Any) -> Any:
            return admin_coord.ask(message, block=True, timeout=REQUEST_TIMEOUT)

        if contender in ("ask", "submit", "asyncio"):
            coords: list[Any] = []
            for _ in range(1 if shared else callers):
                coord = coordactors.connect(fixture.url, fixture.fresh("member"))
                closers.append(coord.stop)
                coords.append(coord)
            clients = [coords[0] if shared else coords[i] for i in range(callers)]
            states = [_caller_state(fixture, op, admin, client, "coordactors", i, closers) for i, client in enumerate(clients)]
            if contender == "asyncio":
                coroutines = [_async_op(op, client, state) for client, state in zip(clients, states)]
                return lambda iterations, duration: time_async_callers(coroutines, iterations=iterations, duration=duration)
            make = _ask_op if contender == "ask" else _submit_op
            ops = [make(op, client, state) for client, state in zip(clients, states)]
        elif contender in RAW_SESSIONS:
            raws = []
            for _ in range(callers):
                raw = RAW_SESSIONS[contender](fixture.url, fixture.fresh("member"))
                closers.append(raw.close)
                raws.append(raw)
            states = [_caller_state(fixture, op, admin, raw, "raw", i, closers) for i, raw in enumerate(raws)]
            ops = [(lambda r=raw, s=state: op.raw(r, s)) for raw, state in zip(raws, states)]
            if contender == "async_handoff":
                return lambda iterations, duration: time_async_callers(ops, iterations=iterations, duration=duration)
        elif contender == "tooz":
            if fixture.tooz_url is None:
                raise errors.NotSupported("tooz has no driver for this backend here")
            if op.needs == "big" and fixture.tooz_setup_error is not None:
                raise errors.NotSupported(f"tooz could not build the group: {fixture.tooz_setup_error}")
            toozs = []
            for _ in range(callers):
                coord = open_tooz(fixture.tooz_url, fixture.fresh("member"))
                closers.append(coord.stop)
                toozs.append(coord)
            states = [_caller_state(fixture, op, admin, coord, "tooz", i, closers) for i, coord in enumerate(toozs)]
            ops = [(lambda c=coord, s=state: op.tooz(c, s)) for coord, state in zip(toozs, states)]
        else:
            raise ValueError(f"unknown contender {contender!r}")
        return lambda iterations, duration: time_callers(ops, iterations=iterations, duration=duration)

    def time(self, *, iterations: int, duration: float) -> None:
        """Run the callers once more: at most ``iterations`` calls each, for at most ``duration`` seconds."""
        latencies, seconds = self._time(iterations, duration)
        self._latencies.add(latencies)
        self._seconds += seconds

    def sample(self) -> Sample:
        """Every slice timed so far, as one sample."""
        return summarise(self._latencies, self._seconds)

    def close(self) -> None:
        """Undo the setup, last step first."""
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                closer()
        self._closers.clear()


def run_trial(fixture: Fixture, op: Operation, contender: str, mode: str, *, iterations: int, duration: float) -> Sample:
    """Measure ``op`` for ``contender`` (``ask``, ``submit``, ``asyncio``,
    ``raw``, ``handoff``, ``async_handoff``, ``tooz``) in ``mode`` on the fixture's backend, in one slice."""
    trial = Trial(fixture, op, contender, mode)
    try:
        trial.time(iterations=iterations, duration=duration)
        return trial.sample()
    finally:
        trial.close()


def run_interleaved(fixture: Fixture, op: Operation, contenders: tuple[str, ...], mode: str, *, iterations: int,
                    duration: float, slices: int) -> dict[str, Sample | Exception]:
    """Measure ``op`` for each of ``contenders``, all set up at once and timed
    in ``slices`` turns of ``duration / slices`` seconds each, in alternating
    order (first to last, then last to first): a server warming up (a JVM's
    JIT, a database's caches) or the machine drifting during the run weighs
    on every contender alike instead of on whoever went first.  A contender
    that could not be set up, or failed, maps to its exception."""
    outcomes: dict[str, Sample | Exception] = {}
    trials: dict[str, Trial] = {}
    try:
        for contender in contenders:
            try:
                trials[contender] = Trial(fixture, op, contender, mode)
            except Exception as exc:  # noqa: BLE001 - reported in the results
                outcomes[contender] = exc
        for turn in range(slices):
            for contender in list(trials)[:: 1 if turn % 2 == 0 else -1]:
                try:
                    trials[contender].time(iterations=max(1, -(-iterations // slices)), duration=duration / slices)
                except Exception as exc:  # noqa: BLE001 - reported in the results
                    outcomes[contender] = exc
                    trials.pop(contender).close()
        for contender, trial in trials.items():
            outcomes[contender] = trial.sample()
    finally:
        for trial in trials.values():
            trial.close()
    return {contender: outcomes[contender] for contender in contenders}


def _ask_op(op: Operation, coord: Any, state: Any) -> Callable[[], None]:
    steps, ask = op.steps, coord.ask

    def call(message: Any) -> Any:
        return ask(message, block=True, timeout=REQUEST_TIMEOUT)

    return lambda: drive(steps(state), call)


def _submit_op(op: Operation, coord: Any, state: Any) -> Callable[[], None]:
    steps, submit = op.steps, coord.submit

    def call(message: Any) -> Any:
        return submit(message, timeout=REQUEST_TIMEOUT).result(REQUEST_TIMEOUT)

    return lambda: drive(steps(state), call)


def _async_op(op: Operation, coord: Any, state: Any) -> Callable[[], Any]:
    steps, request = op.steps, coord.request

    def call(message: Any) -> Any:
        return request(message, timeout=REQUEST_TIMEOUT)

    return lambda: drive_async(steps(state), call)
