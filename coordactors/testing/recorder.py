"""EventRecorder: a callable subscriber to wait on in tests."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from coordactors.events import Event

__all__ = ["EventRecorder"]


class EventRecorder:
    """Records the events it is called with; tests wait on it with deadlines.

    Example::

        recorder = EventRecorder()
        coord.watch("workers", recorder)
        other.join("workers")
        recorder.wait_for(lambda events: MemberJoined("workers", "b") in events)
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    @property
    def events(self) -> list[Event]:
        """A copy of the events so far, in arrival order."""
        with self._cond:
            return list(self._events)

    def of_type(self, *types: type[Event]) -> list[Event]:
        """The events so far of the given classes."""
        return [e for e in self.events if isinstance(e, types)]

    def wait_for(self, predicate: Callable[[list[Event]], Any], timeout: float = 10.0) -> list[Event]:
        """Wait until ``predicate(events)`` is true; raise AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"events never satisfied the condition within {timeout}s; got {self._events!r}")
                self._cond.wait(remaining)
            return list(self._events)

    def wait_for_event(self, event: Event, timeout: float = 10.0) -> list[Event]:
        """Wait until ``event`` has been recorded."""
        return self.wait_for(lambda events: event in events, timeout)

    def clear(self) -> None:
        """Forget the events so far."""
        with self._cond:
            self._events.clear()
