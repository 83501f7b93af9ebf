"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["BusySession", "check_a_watch_wakes_a_resting_reader", "wait_until"]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate()`` until it returns a truthy value and return that value.

    Raises AssertionError if it is still falsy after ``timeout`` seconds.
    ``message`` (a string, or a callable evaluated on timeout so it can show
    the latest state) is added to the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            text = f"condition {name} still false after {timeout}s"
            raise AssertionError(f"{text}: {detail}" if detail else text)
        time.sleep(interval)


class BusySession:
    """Keeps a session actor's thread busy until ``release`` (bounded), so
    that requests sent meanwhile are known to queue up together."""

    def __init__(self, session: Any) -> None:
        self.started = threading.Event()
        self._go = threading.Event()
        session.run_on_actor(self._hold)
        assert self.started.wait(30), "the session never ran the blocking call"

    def _hold(self) -> None:
        self.started.set()
        self._go.wait(30)

    def release(self) -> None:
        self._go.set()


def check_a_watch_wakes_a_resting_reader(holder: Any, watcher: Any, session: Any) -> None:
    """``watcher``'s reader rests (``session`` is its session actor): a watch
    wakes it, and ``holder``'s join in the watched group arrives."""
    from coordactors.events import MemberJoined
    from coordactors.testing import EventRecorder

    seen = EventRecorder()
    holder.create_group("g")
    watcher.watch("g", seen)
    holder.join("g")
    seen.wait_for(lambda events: MemberJoined("g", "holder") in events, timeout=10)
    assert not session.conn.rest.resting
