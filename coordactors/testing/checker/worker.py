"""One checker worker: contend for the lock, read-modify-write the register under it.

Runs in its own process (``python -m coordactors.testing.checker.worker
CONFIG_JSON``, one JSON record per stdout line, ends when stdin closes) or,
for backends that only coordinate threads of one process, in a thread
(:func:`run`).  Every record carries ``at``, the host's monotonic clock
(``CLOCK_MONOTONIC`` is one clock for every process of a host), so records
from all workers can be put on one timeline.

Records (``k``): ``ready``; ``grant`` (fence); ``believe`` (a ``check()``
passed, right before a write); ``end`` (why: ``release``, ``check`` -- with
the lease's local expiry if it had one -- or ``stop``); ``lost`` (a LockLost
event); ``session`` (SessionLost / SessionRestored, with downtime);
``write`` (the register's outcome); ``group`` (an event of the watched group:
joined / left / leader); ``error`` (an unexpected exception).  Each worker also
joins the group with capabilities, watches it and campaigns for its leadership,
so the checker can tell whether all of that comes back after a fault.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import coordactors
from coordactors import errors
from coordactors.events import LeaderElected, LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, Release
from coordactors.testing.checker.register import FencedRegister, Outcome

__all__ = ["run"]

Emit = Callable[[dict[str, Any]], None]


def run(config: dict[str, Any], emit: Emit, stop: threading.Event, crash: threading.Event | None = None) -> None:
    """Work until ``stop`` is set; with ``crash`` set, abandon everything as a killed process would."""
    member = config["member"]
    register = FencedRegister(config["register"])
    crash = crash or threading.Event()
    try:
        coord = coordactors.connect(config["url"], member)
    except Exception as exc:  # noqa: BLE001  (reported to the checker, which stops)
        emit({"k": "error", "at": time.monotonic(), "error": f"connect: {type(exc).__name__}: {exc}"[:500]})
        return

    def on_event(event: Any) -> None:
        now = time.monotonic()
        if isinstance(event, LockLost):
            emit({"k": "lost", "fence": event.fence, "at": now, "cause": event.cause[:200]})
        elif isinstance(event, SessionLost):
            emit({"k": "session", "type": "lost", "at": now, "cause": event.cause[:200]})
        elif isinstance(event, SessionRestored):
            emit({"k": "session", "type": "restored", "at": now, "downtime": event.downtime})

    def on_group_event(event: Any) -> None:
        kind = {MemberJoined: "joined", MemberLeft: "left", LeaderElected: "leader"}.get(type(event))
        if kind is not None:
            emit({"k": "group", "type": kind, "member": event.member, "at": time.monotonic()})

    try:
        coord.subscribe(on_event)
        coord.join(config["group"], {"worker": member}, create=True)
        coord.watch(config["group"], on_group_event)  # restored after a lost session, like the membership
        coord.campaign(config["group"])
        emit({"k": "ready", "at": time.monotonic()})
        ttl = config.get("ttl")
        while not stop.is_set() and not crash.is_set():
            try:
                lease = coord.ask(Acquire(config["lock"], timeout=config["acquire_timeout"], ttl=ttl), block=True,
                                  timeout=config["acquire_timeout"] + 10)
            except (errors.LockTimeout, errors.OperationTimedOut, errors.BackendUnavailable):
                continue
            emit({"k": "grant", "fence": lease.fence, "at": time.monotonic()})
            why = _hold(lease, member, register, config, emit, stop, crash)
            if crash.is_set():
                break
            if why == "release":
                emit({"k": "end", "fence": lease.fence, "at": time.monotonic(), "why": "release"})
                try:
                    coord.ask(Release(lease), block=True, timeout=10)
                except (errors.LockNotHeld, errors.LockLost, errors.OperationTimedOut, errors.BackendUnavailable):
                    pass
            stop.wait(random.uniform(0.0, config["op_pause"]))  # let the others in
    except Exception as exc:  # noqa: BLE001  (reported, never silent)
        emit({"k": "error", "at": time.monotonic(), "error": f"{type(exc).__name__}: {exc}"[:500]})
    finally:
        if crash.is_set():
            coord.inject_failure("checker: worker killed", crash=True)
        coord.stop(timeout=5)


def _hold(lease: Any, member: str, register: FencedRegister, config: dict[str, Any], emit: Emit,
          stop: threading.Event, crash: threading.Event) -> str:
    """Do ``hold_ops`` read-modify-writes under ``lease``; return why the hold ended."""
    for _ in range(config["hold_ops"]):
        if stop.is_set() or crash.is_set():
            break
        if not _check(lease, emit):
            return "check"
        outcome, value, version = register.read(member, lease.fence)
        if outcome == Outcome.STALE:
            emit({"k": "write", "fence": lease.fence, "at": time.monotonic(), "outcome": "stale-read"})
            continue
        stop.wait(config["op_pause"])  # widens the window a fault can fall into; not synchronisation
        if not _check(lease, emit):
            return "check"
        emit({"k": "believe", "fence": lease.fence, "at": time.monotonic()})
        outcome = register.write(member, lease.fence, version, value + 1)
        emit({"k": "write", "fence": lease.fence, "at": time.monotonic(), "outcome": outcome})
    return "release"


def _check(lease: Any, emit: Emit) -> bool:
    try:
        lease.check()
        return True
    except errors.LockLost:
        expires_at = lease._state.expires_at  # when the holder's own clock gave the lease up
        emit({"k": "end", "fence": lease.fence, "at": time.monotonic(), "why": "check", "expires_at": expires_at})
        return False


class _MonotonicFormatter(logging.Formatter):
    """Log lines stamped with the host's monotonic clock, the checker's timeline."""

    def format(self, record: logging.LogRecord) -> str:
        record.monotonic = time.monotonic()
        return super().format(record)


def main() -> None:
    """Entry point of a worker process: config as argv[1]; stop when stdin closes."""
    config = json.loads(sys.argv[1])
    if config.get("log"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_MonotonicFormatter("%(monotonic).3f %(threadName)s %(name)s %(levelname)s %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    out_lock = threading.Lock()

    def emit(record: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the checker is done (or gone)
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    run(config, emit, stop)
    emit({"k": "stopped", "at": time.monotonic()})


if __name__ == "__main__":
    main()
