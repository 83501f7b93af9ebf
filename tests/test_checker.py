"""The safety checker: it passes every backend, and it catches what it is meant to catch."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from coordactors import errors
from coordactors.testing.checker import main, run_check
from coordactors.testing.checker.history import Hold, holds_from, judge_phase, longest_unavailability
from coordactors.testing.checker.register import FencedRegister, Outcome

CONSUL_MIN_TTL = 10.0  # Consul refuses session TTLs under 10 s


def _ttl(url: str) -> float:
    return CONSUL_MIN_TTL if url.startswith("consul://") else 1.5


def test_every_backend_keeps_its_lock_safe_with_no_fault_and_with_a_killed_holder(backend_url: str) -> None:
    report = run_check(backend_url, ["none", "holder-kill"], workers=3, seconds=1.0, ttl=_ttl(backend_url))
    assert report.unsafe == [], report.text()
    none, kill = report.phases
    assert none["holds"] >= 2 and none["writes"] >= 2, report.text()  # the lock went round
    assert none["overlaps"] == kill["overlaps"] == 0
    assert none["lost_updates"] == kill["lost_updates"] == 0
    assert kill["faults"] == 1 and "kill_to_next_grant" in kill, report.text()  # a holder died and the lock moved on


def test_a_private_redis_through_every_nemesis(tmp_path) -> None:
    from coordactors.testing.checker import private_server

    context = private_server("redis://")
    server, url = next(context)
    try:
        report = run_check(url, ["holder-pause", "server-restart", "partition"], workers=3, seconds=1.0, ttl=1.5, server=server)
    finally:
        context.close()
    assert report.skipped == {}
    assert report.unsafe == [], report.text()
    pause, restart, partition = report.phases
    assert pause["faults"] == restart["faults"] == partition["faults"] == 1
    assert pause.get("paused_holder_learned_first") is True, report.text()
    assert restart["sessions_lost"] >= 1 and "restore_after_heal" in restart, report.text()
    assert restart["campaigns_restored"] and restart["watches_restored"], report.text()
    assert partition["campaigns_restored"] and partition["watches_restored"], report.text()


def test_nemeses_a_backend_cannot_have_are_listed_as_skipped_with_why() -> None:
    report = run_check(f"memory://c{uuid.uuid4().hex[:8]}", ["none", "holder-pause", "server-restart", "partition"], seconds=0.5)
    assert [p["nemesis"] for p in report.phases] == ["none"]
    assert set(report.skipped) == {"holder-pause", "server-restart", "partition"}
    assert "--cluster" in run_check(f"memory://c{uuid.uuid4().hex[:8]}", ["node-kill"], seconds=0.5).skipped["node-kill"]
    assert "threads" in report.skipped["holder-pause"]


def test_bad_arguments_are_invalid_argument_and_usage_status() -> None:
    with pytest.raises(errors.InvalidArgument, match="nemesis"):
        run_check("memory://", ["flood"])
    with pytest.raises(errors.InvalidArgument):
        run_check("memory://", ["none"], workers=1)
    assert main(["memory://", "--nemesis", "flood"]) == 64
    assert main(["nope://x"]) == 64
    assert main(["--no-such-flag"]) == 64
    assert main(["memcached://", "--cluster"]) == 64  # no cluster of that kind
    assert main(["redis://", "--cluster", "--private"]) == 64


def test_an_unreachable_backend_is_status_69(capsys) -> None:
    import socket

    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    assert main([f"redis://127.0.0.1:{port}?connect_timeout=0.5", "--nemesis", "none"]) == 69
    assert "BackendUnavailable" in capsys.readouterr().err


def test_the_command_prints_the_table_and_exits_0_when_safe() -> None:
    done = subprocess.run(check=False, args=[sys.executable, "-m", "coordactors.testing.checker", f"memory://c{uuid.uuid4().hex[:8]}",
                           "--nemesis", "none", "--seconds", "0.5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "none" in done.stdout and " ok" in done.stdout


# -- the judge: it must catch what it is meant to catch ----------------------------------------------


def test_the_register_rejects_stale_fences_and_logs_lost_updates(tmp_path) -> None:
    register = FencedRegister(str(tmp_path / "r")).create()
    assert register.read("a", 5) == (Outcome.OK, 0, 0)
    assert register.read("b", 6) == (Outcome.OK, 0, 0)  # a new holder read: fence 5 can no longer write
    assert register.write("a", 5, 0, 1) == Outcome.STALE
    assert register.write("b", 6, 0, 1) == Outcome.OK
    assert register.write("c", 6, 0, 1) == Outcome.LOST_UPDATE  # same fence, stale base: b's update overwritten
    assert register.state() == {"value": 1, "version": 2, "max_fence": 6}
    assert [op["outcome"] for op in register.log()] == ["ok", "ok", "stale", "ok", "lost-update"]


def _records(*items):
    return [(worker, dict(k=kind, at=at, **extra)) for worker, kind, at, extra in items]


def test_an_overlap_without_a_loss_notice_is_reported_as_unsafe_when_the_fence_is_not_lower() -> None:
    records = _records(
        ("a", "grant", 1.0, {"fence": 7}),
        ("b", "grant", 2.0, {"fence": 6}),  # granted while a still believes, with a LOWER fence
        ("b", "end", 2.5, {"fence": 6, "why": "release"}),
        ("a", "end", 3.0, {"fence": 7, "why": "release"}),
    )
    holds = holds_from(records, {}, 10.0)
    phase = {"name": "none", "start": 0.0, "end": 10.0, "faults": []}
    result = judge_phase(phase, holds, [], records, 2.0, 0.5)
    assert result["overlaps"] == 1 and result["overlaps_fence_inverted"] == 1
    assert not result["ok"] and any(p.startswith("UNSAFE") for p in result["problems"])


def test_a_hold_ends_when_its_holder_is_told_or_its_own_clock_expires_it() -> None:
    records = _records(
        ("a", "grant", 1.0, {"fence": 1}),
        ("a", "end", 5.0, {"fence": 1, "why": "check", "expires_at": 2.9}),  # paused; its clock gave up at 2.9
        ("b", "grant", 3.0, {"fence": 2}),
        ("b", "lost", 4.0, {"fence": 2, "cause": "x"}),
        ("b", "believe", 4.5, {"fence": 2}),  # a check passed after the LockLost event: a bug
    )
    a, b = holds_from(records, {}, 10.0)
    assert (a.end, a.told) == (2.9, True)
    assert (b.end, b.told, b.believed_after_loss) == (4.0, True, True)
    result = judge_phase({"name": "none", "start": 0.0, "end": 10.0, "faults": []}, [a, b], [], records, 2.0, 0.5)
    assert result["overlaps"] == 0 and not result["ok"]


def test_unavailability_is_the_longest_time_without_an_accepted_write() -> None:
    log = [{"op": "write", "at": t, "outcome": o} for t, o in ((1.0, "ok"), (2.0, "stale"), (5.0, "ok"), (6.0, "lost-update"))]
    log.append({"op": "read", "at": 3.0, "outcome": "ok"})
    assert longest_unavailability(log, 0.0, 7.0) == 4.0  # 1.0 -> 5.0: a stale write or a read is no progress
    assert longest_unavailability(log, 0.0, 20.0) == 14.0  # and to the end of the phase


def test_lost_updates_a_slow_recovery_and_a_silent_paused_holder_are_problems() -> None:
    records = _records(("a", "grant", 1.0, {"fence": 1}), ("b", "grant", 9.0, {"fence": 2}))
    holds = [Hold("a", 1, 1.0, 2.0), Hold("b", 2, 9.0, 10.0)]
    log = [{"op": "write", "at": 1.5, "outcome": "lost-update"}]
    kill = {"name": "holder-kill", "start": 0.0, "end": 10.0, "faults": [{"kind": "kill", "at": 2.0, "worker": "a", "fence": 1}]}
    result = judge_phase(kill, holds, log, records, 2.0, 0.5)
    assert result["lost_updates"] == 1 and result["kill_to_next_grant"] == 7.0
    assert any("lost update" in p for p in result["problems"]) and any(p.startswith("SLOW") for p in result["problems"])
    pause = {"name": "holder-pause", "start": 0.0, "end": 10.0, "faults": [{"kind": "pause", "at": 1.5, "worker": "a", "fence": 1}]}
    result = judge_phase(pause, holds, [], records, 2.0, 0.5)
    assert any("never told" in p for p in result["problems"])


def test_a_restored_session_without_its_campaign_or_watch_is_a_problem() -> None:
    records = _records(("a", "grant", 1.0, {"fence": 1}), ("b", "grant", 6.0, {"fence": 2}),
                       ("a", "session", 3.0, {"type": "lost"}), ("a", "session", 5.5, {"type": "restored"}))
    holds = holds_from(records, {}, 10.0)
    fault = {"kind": "restart", "at": 2.0, "healed_at": 5.0, "members": {"a", "b"}, "expected_members": {"a", "b"},
             "leader": None, "watch_missing": ["a"]}
    result = judge_phase({"name": "server-restart", "start": 0.0, "end": 10.0, "faults": [fault]}, holds, [], records, 2.0, 0.5)
    assert result["restore_after_heal"] == 0.5 and result["grant_after_heal"] == 1.0
    assert result["campaigns_restored"] is False and result["watches_restored"] is False
    assert any("campaigns not restored" in p for p in result["problems"])
    assert any("watches not restored" in p for p in result["problems"])


def test_a_session_lost_after_a_phase_ended_is_the_next_phases_doing() -> None:
    # The restart healed at 5.0 and the phase ended at 10.0; the partition
    # that came next cut "a" off at 11.0.  That loss is not the restart's.
    records = _records(("a", "grant", 1.0, {"fence": 1}), ("a", "end", 1.5, {"fence": 1, "why": "release"}),
                       ("b", "grant", 6.0, {"fence": 2}), ("b", "end", 6.5, {"fence": 2, "why": "release"}),
                       ("a", "session", 11.0, {"type": "lost", "cause": "cut off"}), ("a", "session", 14.0, {"type": "restored"}))
    holds = holds_from(records, {}, 20.0)
    fault = {"kind": "restart", "at": 2.0, "healed_at": 5.0, "members": {"a", "b"}, "expected_members": {"a", "b"}, "leader": "a"}
    result = judge_phase({"name": "server-restart", "start": 0.0, "end": 10.0, "faults": [fault]}, holds, [], records, 2.0, 0.5)
    assert result["sessions_lost"] == 0 and result["restore_after_heal"] == 0.0
    assert result["problems"] == []
    late = dict(fault, at=10.5, healed_at=12.0, kind="partition", worker="a")
    result = judge_phase({"name": "partition", "start": 10.0, "end": 20.0, "faults": [late]}, holds, [], records, 2.0, 0.5)
    assert result["sessions_lost"] == 1 and result["restore_after_heal"] == 2.0
    assert any(p.startswith("SLOW") and "a: lost +0.50s after the fault" in p and "cut off" in p for p in result["problems"])
