"""A kazoo handler whose ``select`` is one ``poll`` call.

kazoo's threading handler answers every ``select`` by building an epoll
selector (``epoll_create``, a registration per socket, the wait, ``close``)
and tearing it down again.  Its connection thread selects about five times
per request (before reading the wake-up pipe, before writing, before each
read of a reply's length and body): on a busy ZooKeeper session that was
the largest part of the connection thread's CPU, which is the session's
throughput limit on a small machine.  ``poll`` takes the same descriptors
without a descriptor limit (the reason kazoo left ``select.select``) in one
system call.
"""

from __future__ import annotations

import select
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler  # type: ignore[import-untyped]

__all__ = ["PollingHandler"]

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


def poll_select(rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """``select.select``'s contract, as kazoo reads it: a descriptor in error
    or hung up is readable if it was asked for reading, else writable."""
    if timeout is not None and timeout < 0:  # a negative poll() timeout would wait forever
        raise ValueError("timeout must be non-negative")
    poller = select.poll()
    reads: dict[int, Any] = {}
    for fileobj in rlist:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        reads[fd] = fileobj
        poller.register(fd, _READ)
    writes: dict[int, Any] = {}
    for fileobj in wlist:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        writes[fd] = fileobj
        poller.register(fd, _WRITE | (_READ if fd in reads else 0))
    ready = poller.poll(None if timeout is None else timeout * 1000)
    if not ready:
        return [], [], []
    readable: list[Any] = []
    writable: list[Any] = []
    for fd, events in ready:
        if fd in reads and events & ~_WRITE:
            readable.append(reads[fd])
        elif fd in writes and events & ~_READ:
            writable.append(writes[fd])
    return readable, writable, []


class PollingHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler, selecting with one ``poll`` call."""

    def select(self, *args: Any, **kwargs: Any) -> tuple[list[Any], list[Any], list[Any]]:
        """``select.select``'s contract, as kazoo's connection uses it."""
        return poll_select(*args, **kwargs)
