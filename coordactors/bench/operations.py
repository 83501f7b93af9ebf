"""The operations, written once per contender kind.

Coordactors' side is a generator of messages (so ``ask``, ``submit`` and
asyncio drive the same sequence); the raw side calls :class:`RawSession`;
tooz's side calls tooz's driver API.  Each operation names the per-caller
state it needs (its own lock name, its own group...) so that concurrent
callers measure throughput, not contention, except where contention is the
point (``trylock``).
"""

from __future__ import annotations

from typing import Any, Callable, Generator

import attrs

from coordactors import errors
from coordactors.messages import Acquire, GetMembers, Join, Leave, Message, Release, UpdateCapabilities

__all__ = ["OPERATIONS", "Operation", "drive", "drive_async"]

Steps = Generator[Message, Any, None]


def drive(steps: Steps, call: Callable[[Message], Any]) -> None:
    """Run ``steps`` synchronously: send each message through ``call``; an
    error is thrown back into the generator (which may expect it)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            message = steps.send(value) if error is None else steps.throw(error)
        except StopIteration:
            return
        try:
            value, error = call(message), None
        except errors.CoordinationError as exc:
            value, error = None, exc


async def drive_async(steps: Steps, call: Callable[[Message], Any]) -> None:
    """As :func:`drive`, with ``call`` returning an awaitable."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            message = steps.send(value) if error is None else steps.throw(error)
        except StopIteration:
            return
        try:
            value, error = await call(message), None
        except errors.CoordinationError as exc:
            value, error = None, exc


@attrs.frozen
class Operation:
    """One benchmarked operation.

    ``steps(state)`` yields coordactors messages; ``raw(session, state)`` and
    ``tooz(coord, state)`` do the same by hand and through tooz.  ``state`` is
    the caller's: a lock name or group name prepared by the runner
    (``needs``: ``"lock"``, ``"held"``, ``"group"``, ``"joined"``, ``"big"``).
    """

    name: str
    title: str
    needs: str
    steps: Callable[[str], Steps]
    raw: Callable[[Any, str], Any]
    tooz: Callable[[Any, Any], Any]


def _lock_steps(name: str) -> Steps:
    lease = yield Acquire(name)
    yield Release(lease)


def _trylock_steps(name: str) -> Steps:
    try:
        yield Acquire(name, timeout=0)
    except errors.LockTimeout:
        return
    raise AssertionError(f"contended lock {name!r} was granted")


def _join_leave_steps(group: str) -> Steps:
    yield Join(group)
    yield Leave(group)


def _members_steps(group: str) -> Steps:
    yield GetMembers(group)


def _update_steps(group: str) -> Steps:
    yield UpdateCapabilities(group, {"load": 0.5, "zone": "a"})


def _tooz_lock(coord: Any, lock: Any) -> None:
    if not lock.acquire(blocking=True):
        raise AssertionError("tooz: uncontended lock refused")
    lock.release()


def _tooz_trylock(coord: Any, lock: Any) -> None:
    if lock.acquire(blocking=False):
        raise AssertionError("tooz: contended lock granted")


def _tooz_join_leave(coord: Any, group: bytes) -> None:
    coord.join_group(group).get()
    coord.leave_group(group).get()


CAPABILITIES_JSON = '{"load":0.5,"zone":"a"}'

OPERATIONS = (
    Operation("lock", "uncontended lock acquire+release", "lock", _lock_steps, lambda s, n: s.lock(n), _tooz_lock),
    Operation("trylock", "contended try-lock (refused)", "held", _trylock_steps, lambda s, n: s.try_lock_refused(n), _tooz_trylock),
    Operation("join_leave", "join+leave", "group", _join_leave_steps, lambda s, g: s.join_leave(g), _tooz_join_leave),
    Operation("get_members", "get_members of a group of 1,000", "big", _members_steps, lambda s, g: s.members(g),
              lambda c, g: c.get_members(g).get()),
    Operation("update_capabilities", "update_capabilities", "joined", _update_steps,
              lambda s, g: s.update_capabilities(g, CAPABILITIES_JSON), lambda c, g: c.update_capabilities(g, CAPABILITIES_JSON.encode()).get()),
)
