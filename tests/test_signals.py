"""coordactors' threads leave the application's signals to the application.

The kernel gives a signal sent to the process to any thread not blocking it;
Python runs the handler in the main thread, but a main thread waiting for a
lock is only woken if the signal landed on it.  So no thread coordactors
starts may take one.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable

import pytest

from coordactors.events import MemberJoined
from coordactors.messages import Acquire, Release
from coordactors.testing import EventRecorder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread masks from /proc")

APPLICATION_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD}


def _tasks() -> set[int]:
    return {int(task) for task in os.listdir("/proc/self/task")}


def _blocked(task: int) -> set[int] | None:
    """The signals thread ``task`` blocks, or None if it has exited."""
    try:
        with open(f"/proc/self/task/{task}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigBlk:"):
                    mask = int(line.split()[1], 16)
                    return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}
    except FileNotFoundError:
        return None
    raise AssertionError(f"no SigBlk line for thread {task}")


def test_no_thread_of_a_coordinator_takes_the_applications_signals(connect: Callable[..., Any]) -> None:
    before = _tasks()
    holder, waiter = connect("holder"), connect("waiter")
    # Wake every kind of thread a session runs: event readers (a watch, a
    # waiter), the blocking pool, the subscriber callbacks' pool.
    seen = EventRecorder()
    holder.create_group("g")
    waiter.watch("g", seen)
    lease = holder.ask(Acquire("jobs"), block=True, timeout=10)
    waiting = waiter.submit(Acquire("jobs", timeout=30))
    holder.join("g")
    seen.wait_for(lambda events: MemberJoined("g", "holder") in events, timeout=10)
    holder.ask(Release(lease), block=True, timeout=10)
    waiter.ask(Release(waiting.result(timeout=10)), block=True, timeout=10)

    started = _tasks() - before - {os.getpid()}
    assert started, "the coordinators started no thread?"
    taking = {}
    for task in sorted(started):
        blocked = _blocked(task)
        if blocked is not None and not APPLICATION_SIGNALS <= blocked:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as comm:
                taking[task] = (comm.read().strip(), sorted(signal.Signals(s).name for s in APPLICATION_SIGNALS - blocked))
    assert not taking, f"threads that would take the application's signals: {taking}"
