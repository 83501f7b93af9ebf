"""Timing: latency histograms, caller threads started together, and the floors.

Latencies are recorded in microseconds into an HdrHistogram (3 significant
digits, 1 µs to 60 s); throughput is completed operations over the wall time
from the moment every caller was released until the last one finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from typing import Any, Callable, Iterator

import attrs
import pykka
from hdrh.histogram import HdrHistogram

__all__ = ["Sample", "histogram", "measure_floors", "run_async_callers", "run_callers", "summarise", "time_async_callers", "time_callers"]

HIGHEST_US = 60_000_000


def histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds."""
    return HdrHistogram(1, HIGHEST_US, 3)


def _record(hist: HdrHistogram, started_ns: int, ended_ns: int) -> None:
    hist.record_value(min(HIGHEST_US, max(1, (ended_ns - started_ns) // 1000)))


@attrs.frozen
class Sample:
    """The outcome of one timed run: its latency distribution and throughput."""

    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    seconds: float
    throughput: float
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return attrs.asdict(self)


def summarise(hist: HdrHistogram, seconds: float, errors: int = 0) -> Sample:
    """Percentiles and throughput of ``hist`` gathered over ``seconds``."""
    count = hist.get_total_count()
    if count == 0:
        return Sample(0, 0.0, 0.0, 0.0, 0.0, 0.0, seconds, 0.0, errors)
    return Sample(
        count,
        float(hist.get_value_at_percentile(50)),
        float(hist.get_value_at_percentile(90)),
        float(hist.get_value_at_percentile(99)),
        float(hist.get_max_value()),
        round(hist.get_mean_value(), 1),
        round(seconds, 4),
        round(count / seconds, 1) if seconds > 0 else 0.0,
        errors,
    )


def run_callers(operations: list[Callable[[], Any]], *, iterations: int, duration: float, warmup: int = 3) -> Sample:
    """:func:`time_callers`, summarised."""
    return summarise(*time_callers(operations, iterations=iterations, duration=duration, warmup=warmup))


def time_callers(operations: list[Callable[[], Any]], *, iterations: int, duration: float, warmup: int = 3) -> tuple[HdrHistogram, float]:
    """Run each callable on its own thread, repeatedly, all released together;
    return the latencies of every caller's timed calls and the seconds they took.

    Each caller runs ``warmup`` untimed calls, then timed calls until it did
    ``iterations`` or ``duration`` seconds passed.  An exception in a call is
    counted and re-raised after every caller stopped (a benchmark that errs
    must say so, not report a flattering number).
    """
    hists = [histogram() for _ in operations]
    failures: list[BaseException] = []
    ready = threading.Barrier(len(operations) + 1)
    bounds: list[float] = [0.0, 0.0]

    def caller(index: int, op: Callable[[], Any]) -> None:
        hist = hists[index]
        clock = time.perf_counter_ns
        try:
            for _ in range(warmup):
                op()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        ready.wait()
        if failures:
            return
        deadline = time.monotonic() + duration
        try:
            for done in range(iterations):
                started = clock()
                op()
                _record(hist, started, clock())
                if done % 8 == 7 and time.monotonic() > deadline:
                    break
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=caller, args=(i, op), name=f"bench-caller-{i}", daemon=True) for i, op in enumerate(operations)]
    for thread in threads:
        thread.start()
    ready.wait()
    bounds[0] = time.perf_counter()
    for thread in threads:
        thread.join(duration + 120)
    bounds[1] = time.perf_counter()
    if failures:
        raise failures[0]
    total = histogram()
    for hist in hists:
        total.add(hist)
    return total, bounds[1] - bounds[0]


def run_async_callers(operations: list[Callable[[], Any]], *, iterations: int, duration: float, warmup: int = 3) -> Sample:
    """:func:`time_async_callers`, summarised."""
    return summarise(*time_async_callers(operations, iterations=iterations, duration=duration, warmup=warmup))


def time_async_callers(operations: list[Callable[[], Any]], *, iterations: int, duration: float,
                       warmup: int = 3) -> tuple[HdrHistogram, float]:
    """As :func:`time_callers`, but each operation is a coroutine function and
    the callers are tasks on one event loop (one thread)."""

    async def main() -> tuple[HdrHistogram, float]:
        hist = histogram()
        clock = time.perf_counter_ns
        start, all_ready = asyncio.Event(), asyncio.Event()
        ready = [0]

        async def caller(op: Callable[[], Any]) -> None:
            for _ in range(warmup):
                await op()
            ready[0] += 1
            if ready[0] == len(operations):
                all_ready.set()
            await start.wait()
            deadline = time.monotonic() + duration
            for done in range(iterations):
                started = clock()
                await op()
                _record(hist, started, clock())
                if done % 8 == 7 and time.monotonic() > deadline:
                    break

        tasks = [asyncio.ensure_future(caller(op)) for op in operations]
        waiting = asyncio.ensure_future(all_ready.wait())
        await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and task.exception() is not None:
                waiting.cancel()
                raise task.exception()  # type: ignore[misc]
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return hist, time.perf_counter() - began

    return asyncio.run(main())


# -- floors --------------------------------------------------------------------------


@contextlib.contextmanager
def _echo_thread(name: str, answer: Callable[[Any], Any]) -> Iterator[queue.SimpleQueue[Any]]:
    """A thread that calls ``answer`` with each item put in the queue it
    yields, until the block ends."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def serve() -> None:
        while (item := inbox.get()) is not None:
            answer(item)

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    try:
        yield inbox
    finally:
        inbox.put(None)
        thread.join(5)


def pingpong(iterations: int, duration: float) -> Sample:
    """A bare ``queue.SimpleQueue`` ping-pong between two threads: the cost of
    one thread hand-off each way, the floor of any actor in the request path."""
    back: queue.SimpleQueue[Any] = queue.SimpleQueue()
    with _echo_thread("bench-echo", back.put) as to_echo:
        return run_callers([lambda: (to_echo.put(1), back.get())], iterations=iterations, duration=duration, warmup=100)


def loop_pingpong(iterations: int, duration: float) -> Sample:
    """A task on an asyncio loop hands an item to a thread, which hands it
    back with ``call_soon_threadsafe``: the floor of any actor answering an
    ``await`` (a loop wakes through its self-pipe, not a futex)."""

    def answer(item: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]) -> None:
        loop, future = item
        loop.call_soon_threadsafe(future.set_result, 1)

    with _echo_thread("bench-loop-echo", answer) as to_echo:

        async def one() -> None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            to_echo.put((loop, future))
            await future

        return run_async_callers([one], iterations=iterations, duration=duration, warmup=100)


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def pykka_ask(iterations: int, duration: float) -> Sample:
    """A plain pykka ``ask`` of an actor that answers at once."""
    ref = _Echo.start()
    try:
        return run_callers([lambda: ref.ask(1)], iterations=iterations, duration=duration, warmup=100)
    finally:
        ref.stop()


def measure_floors(iterations: int, duration: float) -> dict[str, Sample]:
    """The hand-off floors measured in this run."""
    return {"queue_pingpong": pingpong(iterations, duration), "loop_pingpong": loop_pingpong(iterations, duration),
            "pykka_ask": pykka_ask(iterations, duration)}
