"""Process-wide machinery shared by every coordinator: the ticker and executors.

The runtime is reference-counted: the first ``connect()`` starts it, the last
``stop()`` shuts it down and joins its threads, so a process that stops all
its coordinators is left with no coordactors thread.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

import futurist
from futurist import _utils as futurist_utils

from coordactors._signals import signals_blocked

logger = logging.getLogger(__name__)

__all__ = ["QuietThreadPool", "Runtime", "SerialQueue", "Ticker", "Timer", "runtime"]


class Timer:
    """A scheduled call on the ticker; ``cancel()`` it to stop it."""

    __slots__ = ("cancelled", "fn", "interval")

    def __init__(self, fn: Callable[[], Any], interval: float | None) -> None:
        self.fn = fn
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the timer; a call already running finishes."""
        self.cancelled = True


class Ticker:
    """One timer thread for the whole process.

    Drives heartbeats, lease refresh, campaign retries, polling watchers and
    request deadlines.  Callbacks run on the ticker thread and must not block:
    they ``tell`` actors, which do the work.  A callback that raises is logged
    and, if periodic, keeps its schedule.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="coordactors-ticker", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        """Call ``fn`` once, ``delay`` seconds from now."""
        return self._schedule(self._clock() + max(delay, 0.0), Timer(fn, None))

    def every(self, interval: float, fn: Callable[[], Any], *, first: float | None = None) -> Timer:
        """Call ``fn`` every ``interval`` seconds (first after ``first``, default one interval)."""
        if interval <= 0:
            raise ValueError("interval must be > 0")
        delay = interval if first is None else first
        return self._schedule(self._clock() + delay, Timer(fn, interval))

    def _schedule(self, when: float, timer: Timer) -> Timer:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), timer))
            if self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, timer = self._heap[0]
                    if timer.cancelled:
                        heapq.heappop(self._heap)
                        continue
                    delay = when - self._clock()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(delay)
                if self._stopped:
                    return
            try:
                timer.fn()
            except Exception:
                logger.exception("ticker callback %r failed", timer.fn)
            if timer.interval is not None and not timer.cancelled:
                # Keep the period from the scheduled time, not from when the
                # callback ran, but never schedule into the past after a stall.
                self._schedule(max(when + timer.interval, self._clock()), timer)


class SerialQueue:
    """Runs submitted calls one at a time, in order, on a shared executor.

    Gives each callable subscriber its own ordering without a thread of its
    own: at most one drain task per queue is on the executor at a time.
    """

    def __init__(self, executor: futurist.Executor, on_error: Callable[[BaseException], Any]) -> None:
        self._executor = executor
        self._on_error = on_error
        self._items: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._lock = threading.Lock()
        self._running = False
        self.closed = False

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` behind everything queued before."""
        with self._lock:
            if self.closed:
                return
            self._items.append((fn, args))
            if self._running:
                return
            self._running = True
        try:
            self._executor.submit(self._drain)
        except RuntimeError:  # executor shut down: the process is stopping
            with self._lock:
                self._running = False

    def close(self) -> None:
        """Drop whatever is queued; nothing more will run."""
        with self._lock:
            self.closed = True
            self._items.clear()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items or self.closed:
                    self._running = False
                    return
                fn, args = self._items.popleft()
            try:
                fn(*args)
            except Exception as exc:
                self.close()
                self._on_error(exc)


class Runtime:
    """The ticker and executors, started by the first user and stopped by the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self.ticker: Ticker | None = None
        self.blocking: futurist.ThreadPoolExecutor | None = None
        self.callbacks: futurist.ThreadPoolExecutor | None = None

    def acquire(self) -> Runtime:
        """Count one more user, starting the threads if this is the first."""
        with self._lock:
            if self._users == 0:
                self.ticker = Ticker()
                # Blocking work: connects, waits on native blocking calls.
                self.blocking = QuietThreadPool(max_workers=32)
                # Subscriber callables: never on an actor's thread.
                self.callbacks = QuietThreadPool(max_workers=4)
            self._users += 1
            return self

    def release(self) -> None:
        """Count one user less, stopping and joining the threads after the last."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            ticker, blocking, callbacks = self.ticker, self.blocking, self.callbacks
            self.ticker = self.blocking = self.callbacks = None
        if ticker is not None:
            ticker.stop()
        for executor in (blocking, callbacks):
            if executor is not None:
                _shutdown_promptly(executor)

    @property
    def users(self) -> int:
        """How many coordinators are using the runtime."""
        return self._users


class QuietThreadPool(futurist.ThreadPoolExecutor):
    """futurist's pool whose workers take none of the application's signals.

    It starts a worker when work is submitted, from whichever thread
    submits -- the application's among them -- so the mask is set here (see
    :mod:`coordactors._signals`)."""

    def _add_thread(self) -> None:
        with signals_blocked():
            super()._add_thread()


def _shutdown_promptly(executor: futurist.ThreadPoolExecutor) -> None:
    """Shut a futurist pool down without waiting out its workers' idle poll.

    futurist's idle workers notice a stop only when their queue ``get`` times
    out (after 1 s), which made every last ``stop()`` of a process take a
    second.  Once the queued work is done, a no-op item per worker wakes each
    one to see its stop flag at once.  A worker whose ``get`` timed out just
    as it was stopped leaves without taking its item, so the queue is not
    joined again (futurist's ``shutdown(wait=True)`` would wait for that item
    forever): the workers are.
    """
    executor._work_queue.join()  # noqa: SLF001 - let queued work finish first
    workers = list(executor._workers)  # noqa: SLF001
    executor.shutdown(wait=False)  # stops every worker
    for _ in workers:
        executor._work_queue.put(futurist_utils.WorkItem(futurist.Future(), _nothing))  # noqa: SLF001
    for worker in workers:
        worker.join()


def _nothing() -> None:
    pass


runtime = Runtime()
"""The process-wide runtime."""
