"""Supervision: a failed session is reported, restarted and restored."""

from __future__ import annotations

import pytest

from coordactors import errors
from coordactors.events import LeaderElected, LockLost, MemberJoined, MemberLeft, SessionLost, SessionRestored
from coordactors.messages import Acquire, GetMembers
from coordactors.testing import EventRecorder
from helpers import wait_until

FAST = "backoff_initial=0.05&backoff_max=0.2"


def _fast(url: str) -> str:
    return url + ("&" if "?" in url else "?") + FAST


def test_a_failed_session_is_lost_then_restored_with_everything_it_had(connect, backend_url):
    coord = connect("worker", url=_fast(backend_url))
    observer = connect("observer")
    own, group_events, observed = EventRecorder(), EventRecorder(), EventRecorder()
    coord.subscribe(own)
    coord.join("g", {"slots": 4}, create=True)
    coord.campaign("g")
    coord.watch("g", group_events)
    observer.watch("g", observed)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    wait_until(lambda: observer.leader("g") == "worker")

    coord.inject_failure("drill: connection dropped")

    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events))
    kinds = [type(e) for e in own.events]
    assert kinds == [SessionLost, LockLost, LockLost, SessionRestored]
    lost = {e.name for e in own.of_type(LockLost)}
    assert lost == {"jobs", "__leader__/g"}
    assert any(e == LockLost("jobs", lease.fence, e.cause) for e in own.of_type(LockLost))
    assert "drill" in own.of_type(SessionLost)[0].cause
    assert lease.lost.is_set()
    with pytest.raises(errors.LockLost):
        lease.check()

    # Restored: membership with its capabilities, the campaign, the watch.
    assert observer.members("g") == {"worker"}
    assert observer.capabilities("g", "worker") == {"slots": 4}
    wait_until(lambda: observer.leader("g") == "worker")
    observer.join("g")
    group_events.wait_for_event(MemberJoined("g", "observer"))
    # Events of a group arrive in order: the observer's own join marks the
    # point by which the failure's events, if any, have been delivered.
    # Where the failure also expired the membership (the embedded backends
    # drop the session's registration with its connection), others saw it
    # leave and come back; where the membership outlived the connection
    # (Redis keeps it until session_ttl), they saw nothing.
    before = observed.wait_for(lambda events: MemberJoined("g", "observer") in events)
    before = before[: before.index(MemberJoined("g", "observer"))]
    membership = [e for e in before if not isinstance(e, LeaderElected)]
    assert membership in ([], [MemberLeft("g", "worker"), MemberJoined("g", "worker")])
    # Leadership, if it was seen to change at all, came back to the worker.
    assert all(e == LeaderElected("g", "worker") for e in before if isinstance(e, LeaderElected))
    # The lost lease is not restored, but the lock can be taken again.
    again = coord.ask(Acquire("jobs", timeout=5), block=True, timeout=10)
    assert again.fence > lease.fence
    assert coord.statistics()["state"] == "CONNECTED"


def test_leadership_moves_while_the_leader_is_down_and_returns_only_by_campaign(connect, backend_url):
    leader = connect("leader", url=_fast(backend_url))
    other = connect("other")
    events = EventRecorder()
    leader.join("g", create=True)
    other.join("g")
    leader.campaign("g")
    other.watch("g", events)
    wait_until(lambda: other.leader("g") == "leader")
    other.campaign("g")
    restored = EventRecorder()
    leader.subscribe(restored)
    leader.inject_failure()
    events.wait_for_event(LeaderElected("g", "other"))
    restored.wait_for(lambda evs: any(isinstance(e, SessionRestored) for e in evs))
    assert other.leader("g") == "other"  # the restored campaigner waits its turn
    other.stand_down("g")
    events.wait_for_event(LeaderElected("g", "leader"))


def test_requests_sent_while_down_wait_for_the_restored_session(connect, backend_url):
    coord = connect("worker", url=_fast(backend_url))
    coord.join("g", create=True)
    coord.inject_failure()
    # Sent at once after the failure: served after restoration, not lost.
    assert coord.ask(GetMembers("g"), block=True, timeout=10) == {"worker"}


def test_requests_sent_while_down_fail_fast_when_asked_to(connect, backend_url):
    url = backend_url + ("&" if "?" in backend_url else "?") + "backoff_initial=2&backoff_max=2"
    coord = connect("worker", url=url, wait_while_down=False)
    own = EventRecorder()
    coord.subscribe(own)
    coord.join("g", create=True)
    coord.inject_failure()
    own.wait_for(lambda events: any(isinstance(e, SessionLost) for e in events))
    with pytest.raises(errors.BackendUnavailable):
        coord.ask(GetMembers("g"), block=True, timeout=10)


def test_a_crashed_session_actor_is_replaced(connect, backend_url):
    coord = connect("worker", url=_fast(backend_url))
    own = EventRecorder()
    coord.subscribe(own)
    coord.join("g", {"v": 1}, create=True)
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    old_session = coord._route.session
    coord.inject_failure("a bug", crash=True)
    own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events))
    assert coord._route.session is not old_session
    assert lease.lost.is_set()
    assert any(e.name == "jobs" for e in own.of_type(LockLost))
    assert coord.members("g") == {"worker"}
    assert coord.capabilities("g", "worker") == {"v": 1}


def test_backoff_doubles_up_to_its_cap_and_resets():
    from coordactors.supervisor import Backoff

    backoff = Backoff(0.1, 0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


def test_reconnects_back_off_while_the_backend_stays_broken(tmp_path):
    import os
    import shutil

    import coordactors

    directory = tmp_path / "coord"
    url = f"file://{directory}?backoff_initial=0.02&backoff_max=0.08"
    with coordactors.connect(url, "worker") as coord:
        own = EventRecorder()
        coord.subscribe(own)
        coord.join("g", create=True)
        shutil.rmtree(directory)
        directory.write_text("not a directory any more")
        coord.inject_failure()
        route = coord._route
        wait_until(lambda: len(route.retry_delays) >= 5, message=lambda: repr(route.retry_delays))
        assert route.retry_delays[:5] == [0.02, 0.04, 0.08, 0.08, 0.08]
        assert not own.of_type(SessionRestored)
        os.unlink(directory)
        own.wait_for(lambda events: any(isinstance(e, SessionRestored) for e in events))
        assert len(own.of_type(SessionLost)) == 1  # one outage, one report
        assert coord.members("g") == {"worker"}


def test_a_session_outliving_its_supervisor_by_a_moment_does_not_crash_on_telling_it() -> None:
    # The coordinator stopped while its session was reconnecting: the session
    # tells a supervisor that is gone.  That must not raise (a crash there left
    # the new connection and its event reader open), and state changes are
    # still recorded.
    import pykka

    from coordactors._protocol import DesiredJoin, Publish
    from coordactors.supervisor import Ledger, SupervisorLink

    ref = pykka.ThreadingActor.start()
    ref.stop()
    ledger = Ledger()
    link = SupervisorLink(ref, ledger)
    link.tell(Publish(MemberJoined("g", "a")))
    link.tell(DesiredJoin("g", "null"))
    assert ledger.joined == {"g": "null"}
