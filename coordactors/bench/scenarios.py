"""The benchmarks that are not a request loop: heartbeat with many leases,
event latency, and failover after a SIGKILL."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import coordactors
from coordactors.bench.backends import Backend
from coordactors.bench.contenders import RawSession, open_tooz
from coordactors.bench.measure import Sample, histogram, run_callers, summarise
from coordactors.bench.trials import REQUEST_TIMEOUT, Fixture
from coordactors.events import MemberJoined, MemberLeft
from coordactors.messages import Acquire, CreateGroup, Heartbeat, Join, Leave
from coordactors.urls import parse_url

logger = logging.getLogger(__name__)

__all__ = ["event_latency", "failover", "heartbeat"]


def heartbeat(fixture: Fixture, contender: str, leases: int, *, iterations: int) -> Sample:
    """The latency of one heartbeat while ``leases`` locks are held."""
    names = [fixture.fresh("hb") for _ in range(leases)]
    if contender == "ask":
        with coordactors.connect(fixture.url, fixture.fresh("member")) as coord:
            # All queued at once: a backend that serves them one by one (Consul's
            # fake agent, ~30 ms each) needs more than one request's timeout.
            hold_timeout = max(REQUEST_TIMEOUT, leases * 0.1)
            futures = [coord.submit(Acquire(name), timeout=hold_timeout) for name in names]
            for future in futures:
                future.result(hold_timeout)
            return run_callers([lambda: coord.ask(Heartbeat(), block=True, timeout=REQUEST_TIMEOUT)],
                               iterations=iterations, duration=60, warmup=1)
    if contender == "raw":
        raw = RawSession(fixture.url, fixture.fresh("member"))
        try:
            held = raw.hold(names, None)
            return run_callers([lambda: raw.heartbeat(held)], iterations=iterations, duration=60, warmup=1)
        finally:
            raw.close()
    if fixture.tooz_url is None:
        raise coordactors.errors.NotSupported("tooz has no driver for this backend here")
    coord = open_tooz(fixture.tooz_url, fixture.fresh("member"))
    locks = []
    try:
        for name in names:
            lock = coord.get_lock(name.encode())
            if not lock.acquire(blocking=False):
                raise RuntimeError(f"tooz: {name} refused")
            locks.append(lock)
        return run_callers([coord.heartbeat], iterations=iterations, duration=60, warmup=1)
    finally:
        for lock in locks:
            with contextlib.suppress(Exception):
                lock.release()
        coord.stop()


def event_latency(fixture: Fixture, *, iterations: int) -> tuple[Sample, dict[str, Any]]:
    """From a join sent by one coordinator until a subscriber of another sees its MemberJoined.

    Also returns the join's own latency (until its reply: the join is applied
    at the backend), so the report can say how much of the event latency is
    the delivery after the join took effect.

    On a polling backend each join waits a random part of the poll interval
    first, so joins land at random moments of the watcher's poll cycle, as an
    application's would.  Without it every join followed the delivery of the
    previous leave -- which came right after a poll -- and each sample was
    the worst case, a whole interval."""
    polls = fixture.backend.session_class.POLLS
    interval = parse_url(fixture.url)[1].poll_interval if polls else 0.0
    dephase = random.Random(7)
    group = fixture.fresh("events")
    seen: dict[tuple[type, str], threading.Event] = {}
    arrived: dict[tuple[type, str], int] = {}
    lock = threading.Lock()

    def on_event(event: Any) -> None:
        key = (type(event), getattr(event, "member", ""))
        now = time.perf_counter_ns()
        with lock:
            arrived.setdefault(key, now)
            flag = seen.setdefault(key, threading.Event())
        flag.set()

    def waiter(kind: type, member: str) -> threading.Event:
        with lock:
            return seen.setdefault((kind, member), threading.Event())

    hist, joins, after = histogram(), histogram(), histogram()
    began = time.perf_counter()
    with coordactors.connect(fixture.url, fixture.fresh("watcher")) as watcher:
        watcher.ask(CreateGroup(group), block=True, timeout=REQUEST_TIMEOUT)
        watcher.watch(group, on_event)
        with coordactors.connect(fixture.url, fixture.fresh("joiner")) as joiner:
            for i in range(iterations + 1):
                member = joiner.member_id
                joined, left = waiter(MemberJoined, member), waiter(MemberLeft, member)
                if polls:
                    time.sleep(dephase.uniform(0.0, interval))
                started = time.perf_counter_ns()
                joiner.ask(Join(group), block=True, timeout=REQUEST_TIMEOUT)
                replied = time.perf_counter_ns()
                if not joined.wait(REQUEST_TIMEOUT):
                    raise TimeoutError(f"no MemberJoined within {REQUEST_TIMEOUT}s")
                if i:  # the first is a warm-up
                    seen_at = arrived[(MemberJoined, member)]
                    hist.record_value(max(1, (seen_at - started) // 1000))
                    joins.record_value(max(1, (replied - started) // 1000))
                    after.record_value(max(1, (seen_at - replied) // 1000))
                joiner.ask(Leave(group), block=True, timeout=REQUEST_TIMEOUT)
                if not left.wait(REQUEST_TIMEOUT):
                    raise TimeoutError(f"no MemberLeft within {REQUEST_TIMEOUT}s")
                with lock:
                    for key in ((MemberJoined, member), (MemberLeft, member)):
                        seen.pop(key, None)
                        arrived.pop(key, None)
    seconds = time.perf_counter() - began
    return summarise(hist, seconds), {"join": summarise(joins, seconds).as_dict(), "after_join_reply": summarise(after, seconds).as_dict()}


def failover_ttl(backend: Backend) -> float:
    """The TTL the failover benchmark configures: short, within what the backend accepts."""
    return 10.0 if backend.name == "consul" else 2.0


def failover(backend: Backend, namespace: str, *, rounds: int) -> tuple[Sample, float]:
    """From SIGKILL of a lock's holder (another process) until a waiting member is granted it.

    Returns the sample and the TTL in force (session and lease TTL where the
    backend takes one).
    """
    ttl = failover_ttl(backend)
    session_class = backend.session_class
    options: dict[str, Any] = {}
    if backend.name not in ("memory",):
        options["session_ttl"] = ttl
        if session_class.LEASE_TTL:
            options["lease_ttl"] = ttl
    url = backend.url(namespace, **options)
    hist = histogram()
    began = time.perf_counter()
    with coordactors.connect(url, "bench-failover-waiter") as waiter:
        for _ in range(rounds):
            name = f"{namespace}-failover-{time.monotonic_ns()}"
            child = subprocess.Popen(
                [sys.executable, "-m", "coordactors.bench.holder", url, name],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
            )
            try:
                line = _read_line(child, 60)
                if not line.startswith("held"):
                    raise RuntimeError(f"the holder process did not get the lock: {line!r}")
                granted: list[int] = []
                future = waiter.submit(Acquire(name, timeout=ttl + 30), timeout=ttl + 30)
                future.add_done_callback(lambda f: granted.append(time.perf_counter_ns()))
                # Let the waiting Acquire reach the backend before the kill.
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    future.result(0.2)
                if future.done():
                    raise RuntimeError("the lock was granted while its holder lived")
                killed = time.perf_counter_ns()
                os.kill(child.pid, signal.SIGKILL)
                lease = future.result(ttl + 30)
                hist.record_value(max(1, (granted[0] - killed) // 1000))
                waiter.ask(coordactors.messages.Release(lease), block=True, timeout=REQUEST_TIMEOUT)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.wait(10)
                if child.stdin:
                    child.stdin.close()
                if child.stdout:
                    child.stdout.close()
    return summarise(hist, time.perf_counter() - began), ttl


def _read_line(child: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(child.stdout.readline() if child.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""
