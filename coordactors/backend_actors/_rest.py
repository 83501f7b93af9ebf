"""The handshake by which a session's event reader rests while nothing needs it.

A backend's event reader (PostgreSQL's LISTEN, Redis's XREAD, etcd v2's long
poll) woke for every change in the namespace -- the session's own acquires,
releases and joins among them -- and every wake-up cost the session's
requests a thread switch.  A reader only matters while its session watches a
group or waits for a lock or a campaign, so otherwise it rests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ReaderRest", "RestingReader"]


class ReaderRest:
    """Whether an event reader rests, and the means to wake it.

    The reader marks itself resting *before* it looks at its session's state
    (:meth:`settle`); the actor, having registered a waiter, a campaign or a
    watch, wakes a reader so marked (:meth:`wake`).  Either the reader sees
    the new state or the actor sees the mark: no waiter is left with a
    reader asleep.  ``poke`` wakes a reader that waits on something other
    than :attr:`wanted` (PostgreSQL's reader sits in a ``select``).
    """

    def __init__(self, poke: Callable[[], None] | None = None) -> None:
        self.resting = False
        """The reader does not follow the backend's events."""
        self.wanted = threading.Event()
        """Set to wake a resting reader."""
        self._poke = poke

    def settle(self, needed: Callable[[], object]) -> bool:
        """Reader thread: whether to rest now, ``needed()`` being false.

        The reader stays marked resting until its next ``settle`` finds it
        needed."""
        self.wanted.clear()
        self.resting = True
        if needed():
            self.resting = False
        return self.resting

    def wait(self, timeout: float) -> None:
        """Reader thread: rest until woken, or for ``timeout`` seconds."""
        self.wanted.wait(timeout)

    def wake(self) -> None:
        """Any thread: wake the reader if it rests."""
        if self.resting:
            self.stop()

    def stop(self) -> None:
        """Any thread: end the reader's rest whatever it is doing (the session closes)."""
        self.wanted.set()
        if self._poke is not None:
            self._poke()


class RestingReader:
    """Mixin for a session whose connection (``conn``) carries a
    :class:`ReaderRest` as ``rest``: a waiter or a campaign wakes the reader.
    List it before ``SessionActor`` among the bases."""

    conn: Any

    def on_waiting(self) -> None:
        """Actor thread: wake the event reader if it rests."""
        if self.conn is not None:
            self.conn.rest.wake()
