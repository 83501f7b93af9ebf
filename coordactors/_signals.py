"""Keep the application's signals away from coordactors' own threads.

Python runs signal handlers in the main thread, but the kernel hands a signal
sent to the process to any thread that does not block it.  When it picks one
of our threads (an actor, a reader, a pool worker), the main thread is not
woken: an application waiting in ``coord.ask(Acquire(...), block=True)``
would sit through its SIGTERM or Ctrl-C until the lock came.  So every thread
coordactors starts blocks the asynchronous signals: it is started inside
:func:`signals_blocked`, or by a thread that was, and inherits the mask.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["ASYNCHRONOUS", "signals_blocked"]

_SYNCHRONOUS = {"SIGABRT", "SIGBUS", "SIGFPE", "SIGILL", "SIGSEGV", "SIGSYS", "SIGTRAP", "SIGKILL", "SIGSTOP"}
"""Raised by a thread's own fault (or not blockable): these must reach the thread."""

ASYNCHRONOUS: frozenset[signal.Signals] = frozenset(
    signum for signum in signal.valid_signals()
    if isinstance(signum, signal.Signals) and signum.name not in _SYNCHRONOUS
)
"""The signals sent to the process from outside (SIGINT, SIGTERM, SIGHUP, SIGCHLD, ...)."""


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block :data:`ASYNCHRONOUS` in the calling thread for the block.

    Threads started inside inherit the mask, so the application's threads
    take every signal.  A signal arriving meanwhile stays pending until the
    block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNCHRONOUS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
