"""file:// and ipc:// coordinate separate processes of one host."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from coordactors import errors
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Release

HERE = os.path.dirname(os.path.abspath(__file__))


class Child:
    """A coordinator in another process (see child_worker.py)."""

    def __init__(self, url: str, member: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "child_worker.py"), url, member],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[str] = []
        self._events_changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self._reply(timeout=30) == "ready"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            message = json.loads(line)
            if "event" in message:
                with self._events_changed:
                    self.events.append(message["event"])
                    self._events_changed.notify_all()
            else:
                self.replies.put(message)

    def _reply(self, timeout: float = 30) -> Any:
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the child did not answer within {timeout}s") from None
        if "error" in message:
            raise AssertionError(f"child raised {message['error']}: {message['text']}")
        return message["reply"]

    def do(self, op: str, **args: Any) -> Any:
        """Run one command in the child and return its reply."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def wait_for_event(self, text: str, timeout: float = 10) -> None:
        """Wait until the child reported an event whose repr contains ``text``."""
        with self._events_changed:
            if not self._events_changed.wait_for(lambda: any(text in e for e in self.events), timeout):
                raise AssertionError(f"the child never reported {text!r}; it reported {self.events}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(10)


@pytest.fixture
def child(cross_process_url):
    made: list[Child] = []

    def make(member: str, url: str | None = None) -> Child:
        made.append(Child(url or cross_process_url, member))
        return made[-1]

    yield make
    for c in made:
        c.close()


@pytest.fixture
def parent(cross_process_url, coordinators):
    return lambda member="parent", url=None: coordinators(member, url or cross_process_url)


def test_two_processes_exclude_each_other(child, parent):
    other = child("child")
    coord = parent()
    child_fence = other.do("acquire", name="jobs")
    with pytest.raises(errors.LockTimeout):
        coord.ask(Acquire("jobs", timeout=0), block=True, timeout=10)
    waiting = coord.submit(Acquire("jobs", timeout=30))
    assert not waiting.done()
    other.do("release", name="jobs")
    lease = waiting.result(timeout=10)
    assert lease.fence > child_fence
    with pytest.raises(AssertionError, match="LockTimeout"):
        other.do("acquire", name="jobs", timeout=0)
    coord.ask(Release(lease), block=True, timeout=10)
    assert other.do("acquire", name="jobs", timeout=5) > lease.fence


def test_processes_see_each_others_memberships_and_leadership(child, parent, recorder):
    other = child("child")
    coord = parent()
    coord.create_group("g")
    coord.watch("g", recorder)
    other.do("join", group="g", capabilities={"pid": other.process.pid})
    other.do("campaign", group="g")
    recorder.wait_for(lambda events: events[:2] == [MemberJoined("g", "child"), LeaderElected("g", "child")])
    assert coord.members("g") == {"child"}
    assert coord.capabilities("g", "child") == {"pid": other.process.pid}
    assert coord.leader("g") == "child"
    coord.join("g")
    coord.campaign("g")
    other.do("leave", group="g")
    recorder.wait_for(lambda events: LeaderElected("g", "parent") in events)
    assert other.do("leader", group="g") == "parent"
    assert MemberLeft("g", "child") in recorder.events


def test_a_holder_killed_with_sigkill_frees_its_lock_and_leaves_its_groups(child, parent, recorder):
    other = child("child")
    coord = parent()
    coord.create_group("g")
    other.do("join", group="g")
    other.do("campaign", group="g")
    fence = other.do("acquire", name="jobs")
    coord.watch("g", recorder)
    coord.campaign("g")
    waiting = coord.submit(Acquire("jobs", timeout=30))
    other.kill()
    lease = waiting.result(timeout=15)
    assert lease.fence > fence
    recorder.wait_for(lambda events: MemberLeft("g", "child") in events and LeaderElected("g", "parent") in events)
    assert coord.members("g") == frozenset()


def test_a_paused_holder_loses_its_lease_before_another_is_granted(child, parent, cross_process_url):
    url = cross_process_url + ("&" if "?" in cross_process_url else "?") + "session_ttl=0.6"
    other = child("child", url)
    coord = parent(url=url)
    fence = other.do("acquire", name="jobs")
    assert other.do("check", name="jobs") == "held"
    os.kill(other.process.pid, signal.SIGSTOP)
    try:
        lease = coord.ask(Acquire("jobs", timeout=20), block=True, timeout=30)
    finally:
        os.kill(other.process.pid, signal.SIGCONT)
    assert lease.fence > fence
    # The child's own clock says its lease ran out while it was paused, and
    # its heartbeat finds the session gone: SessionLost then LockLost.
    with pytest.raises(AssertionError, match="LockLost"):
        other.do("check", name="jobs")
    other.wait_for_event("SessionLost")
    other.wait_for_event("LockLost(name='jobs'")
    other.wait_for_event("SessionRestored")


def test_an_ipc_mutex_holder_killed_with_sigkill_does_not_wedge_others(coordinators):
    from coordactors.backend_actors.ipc import destroy

    name = f"wedge{os.getpid()}"
    url = f"ipc://{name}?mutex_timeout=0.2"
    try:
        coord = coordinators("parent", url)
        coord.join("g", create=True)
        other = Child(url, "child")
        try:
            assert other.do("hold_ipc_mutex", name=name) == "locked"
            other.kill()
            # Recovered by the waiter once it sees the holder is dead.
            assert coord.members("g") == {"parent"}
        finally:
            other.close()
    finally:
        destroy(name)
