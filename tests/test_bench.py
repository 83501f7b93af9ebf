"""Smoke test of the benchmark suite: a tiny run on every backend.

No timing is asserted (the machine is shared and noisy): only that every
operation ran for every contender that has it, that the scenarios produced
samples, and that the report files were written.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

import pytest

pytest.importorskip("hdrh", reason="the bench extra (hdrhistogram) is not installed")

import coordactors  # noqa: E402
from coordactors.bench import main  # noqa: E402
from coordactors.bench.backends import backend_of  # noqa: E402
from coordactors.bench.operations import OPERATIONS  # noqa: E402

TOOZ_LACKS = ("NotImplemented", "NotSupported", "sysv_ipc")
"""How a tooz trial may legitimately end: tooz has no such operation or driver here."""


@pytest.mark.timeout(240)
def test_a_quick_run_measures_every_operation_and_contender(backend_url: str, tmp_path: Any) -> None:
    output = tmp_path / "results"
    status = main(["--quick", "--no-plots", "--output", str(output), backend_url])
    assert status == 0
    data = json.loads((output / "results.json").read_text())
    backend = backend_of(backend_url)
    assert list(data["backends"]) == [backend]
    rows = {(r["operation"], r["contender"], r["mode"]): r for r in data["results"]}
    for op in OPERATIONS:
        for contender in ("raw", "handoff", "async_handoff", "ask", "submit", "asyncio"):
            row = rows[(op.name, contender, "c1")]
            assert row.get("sample", {}).get("count", 0) > 0, row
        tooz = rows[(op.name, "tooz", "c1")]
        assert tooz.get("sample") or any(reason in tooz["error"] for reason in TOOZ_LACKS) or backend in ("memory", "consul"), tooz
    for contender, mode in (("ask", "c4"), ("ask", "c16"), ("submit", "c16"), ("asyncio", "c16"), ("ask", "sep16"), ("raw", "sep16")):
        assert rows[("lock", contender, mode)]["sample"]["count"] > 0
    heartbeat = {r["contender"]: r for r in data["heartbeat"]}
    assert heartbeat["ask"]["sample"]["count"] > 0 and heartbeat["raw"]["sample"]["count"] > 0
    assert data["events"][0]["sample"]["count"] > 0
    failover = data["failover"][0]
    assert failover.get("sample", {}).get("count", 0) > 0 or backend == "memory", failover
    assert data["targets"], "the report checks the targets"
    markdown = (output / "results.md").read_text()
    assert "## Targets" in markdown and backend in markdown


@pytest.mark.timeout(120)
def test_plots_are_written(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    output = tmp_path / "results"
    status = main(["--quick", "--operations", "lock", "--output", str(output), "memory://"])
    assert status == 0
    assert sorted(os.listdir(output)) == ["latency-lock.png", "results.json", "results.md", "summary.rst", "throughput-lock.png"]
    assert (output / "latency-lock.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_backend_is_refused(tmp_path: Any, capsys: Any) -> None:
    assert main(["--backends", "nosuch", "--output", str(tmp_path)]) == 64
    assert "unknown backend" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--operations", "--sweep"])
def test_an_unknown_operation_is_refused(option: str, tmp_path: Any, capsys: Any) -> None:
    assert main([option, "lock,nosuch", "--output", str(tmp_path), "memory://"]) == 64
    err = capsys.readouterr().err
    assert f"{option}: unknown operation(s) nosuch" in err and "known: lock, trylock" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(120)
def test_an_empty_sweep_measures_one_caller_only(tmp_path: Any) -> None:
    assert main(["--quick", "--operations", "trylock", "--sweep", "", "--no-plots", "--output", str(tmp_path), "memory://"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["sweep_operations"] == []
    assert {r["mode"] for r in data["results"]} == {"c1"}


@pytest.mark.timeout(120)
def test_one_caller_contenders_take_turns_in_alternating_order(monkeypatch: Any) -> None:
    # A server warming up during the run must not favour whoever is timed last.
    from coordactors.bench import trials
    from coordactors.bench.backends import Backends, namespace

    turns: list[str] = []
    time_once = trials.Trial.time

    def recorded(self: Any, *, iterations: int, duration: float) -> None:
        turns.append(self.contender)
        time_once(self, iterations=iterations, duration=duration)

    monkeypatch.setattr(trials.Trial, "time", recorded)
    [operation] = [op for op in OPERATIONS if op.name == "lock"]
    with Backends() as backends:
        backends.adopt(f"memory://bench-turns-{uuid.uuid4().hex[:8]}")
        fixture = trials.Fixture(backends.backends[0], namespace(), 3)
        try:
            outcomes = trials.run_interleaved(fixture, operation, ("raw", "ask", "tooz", "submit"), "c1",
                                              iterations=50, duration=0.08, slices=4)
        finally:
            fixture.close()
    assert turns == ["raw", "ask", "submit", "submit", "ask", "raw"] * 2
    assert isinstance(outcomes["tooz"], coordactors.errors.NotSupported)  # tooz has no in-process driver: said, not skipped
    assert list(outcomes) == ["raw", "ask", "tooz", "submit"]
    for contender in ("raw", "ask", "submit"):
        sample = outcomes[contender]
        assert sample.count >= 4 and sample.p50_us > 0  # every turn's calls, summed into one sample


# -- what the concurrency benchmark relies on: requests queued together on one
# session (coalesced into one round trip where the backend can) keep every
# lock's promises.


@pytest.mark.timeout(120)
def test_callers_sharing_a_coordinator_keep_locks_exclusive(connect: Any) -> None:
    from coordactors import errors
    from coordactors.messages import Acquire, Release

    coord = connect("shared")
    other = connect("other")
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    fences: dict[str, list[int]] = {}
    failures: list[BaseException] = []
    guard = threading.Lock()

    def caller(index: int) -> None:
        try:
            for round_ in range(8):
                own = coord.ask(Acquire(f"own-{index}"), block=True, timeout=30)
                shared = coord.ask(Acquire("shared", timeout=30), block=True, timeout=35)
                with guard:
                    inside.append(f"{index}/{round_}")
                    if len(inside) > 1:
                        overlaps.append(tuple(inside))
                    fences.setdefault("shared", []).append(shared.fence)
                    fences.setdefault(own.name, []).append(own.fence)
                with guard:
                    inside.remove(f"{index}/{round_}")
                coord.ask(Release(shared), block=True, timeout=30)
                coord.ask(Release(own), block=True, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    held = other.ask(Acquire("taken"), block=True, timeout=30)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    refused = 0
    for _ in range(20):
        with pytest.raises(errors.LockTimeout):
            coord.ask(Acquire("taken", timeout=0), block=True, timeout=30)
        refused += 1
    for thread in threads:
        thread.join(100)
    other.ask(Release(held), block=True, timeout=30)
    assert not failures, failures[0]
    assert not overlaps
    assert refused == 20
    assert len(fences["shared"]) == 12 * 8
    for name, issued in fences.items():
        assert issued == sorted(issued) and len(set(issued)) == len(issued), name


def test_the_16_caller_gain_is_the_median_of_back_to_back_pairs() -> None:
    from coordactors.bench.report import targets_section
    from coordactors.bench.targets import check, median, shared_gains

    def row(mode: str, throughput: float, run: int | None = None) -> dict[str, Any]:
        fields = {"backend": "redis", "operation": "lock", "contender": "ask", "mode": mode, "sample": {"throughput": throughput, "p50_us": 1.0}}
        return fields if run is None else {**fields, "run": run}

    data = {
        "backends": {"redis": ""}, "floors": {"queue_pingpong": {"p50_us": 40.0}}, "settings": {"sweep_operations": ["lock"]},
        # A slow moment on the first pair's one-caller run would pass alone (5x); the median of the three pairs decides.
        "results": [row("c1", 1000.0), row("c16", 5000.0)],
        "gain_repeats": [row("c1", 2000.0, 2), row("c16", 4000.0, 2), row("c1", 2000.0, 3), row("c16", 5000.0, 3)],
    }
    assert shared_gains(data, "redis", "lock") == [5.0, 2.0, 2.5]
    assert median([5.0, 2.0, 2.5]) == 2.5 and median([3.0, 1.0]) == 1.0
    [gain] = [t for t in check(data) if t["target"] == "16 callers share one coordinator"]
    assert gain["value"] == 2.5 and not gain["ok"]
    assert "median of 3 back-to-back pairs (5.0x, 2.0x, 2.5x)" in gain["detail"]
    assert "raw_scaling" not in gain  # no raw client measured: nothing to compare with

    # With the raw client measured alone and on 16 connections, the report
    # says how far the raw client itself scaled.
    raw = [{**row(mode, throughput), "contender": "raw"} for mode, throughput in (("c1", 3000.0), ("sep16", 4500.0))]
    data["results"] += raw
    [gain] = [t for t in check(data) if t["target"] == "16 callers share one coordinator"]
    assert gain["raw_scaling"] == 1.5 and "16 connections over one: 1.5x (4500/s vs 3000/s)" in gain["detail"]
    said = "\n".join(targets_section(check(data)))
    assert "Of the 1 16-caller gains that do not hold, 1 are on backends where the raw client itself" in said and "(redis 1.5x)" in said


def test_the_handoff_contender_runs_each_backend_call_on_a_thread_of_its_own() -> None:
    from coordactors.bench.contenders import HandedOffSession

    url = f"memory://bench-handoff-{uuid.uuid4().hex[:8]}"
    session = HandedOffSession(url, "m")
    try:
        served_on = set()
        real = session.session._session
        try_acquire = real.do_try_acquire

        def recorded(*args: Any) -> Any:
            served_on.add(threading.get_ident())
            return try_acquire(*args)

        real.do_try_acquire = recorded
        session.lock("jobs")
        assert served_on and threading.get_ident() not in served_on
        with pytest.raises(coordactors.errors.GroupNotFound):  # the backend's error reaches the caller
            session.join_leave("no-such-group")
        session.lock("jobs")  # and the thread serves on
    finally:
        session.close()


@pytest.mark.timeout(60)
def test_the_awaited_handoff_contender_awaits_each_backend_call_made_on_a_thread_of_its_own() -> None:
    import asyncio

    from coordactors.bench.contenders import AwaitedHandOffSession

    url = f"memory://bench-async-handoff-{uuid.uuid4().hex[:8]}"
    session = AwaitedHandOffSession(url, "m")
    try:
        served_on = set()
        try_acquire = session.session.do_try_acquire
        release_started, release_may_go = threading.Event(), threading.Event()
        do_release = session.session.do_release

        def recorded(*args: Any) -> Any:
            served_on.add(threading.get_ident())
            return try_acquire(*args)

        def held_back(*args: Any) -> Any:
            release_started.set()
            assert release_may_go.wait(10)
            return do_release(*args)

        session.session.do_try_acquire = recorded
        session.session.do_release = held_back

        async def main() -> None:
            lock = asyncio.ensure_future(session.lock("jobs"))
            # The loop runs on while a call is out on the other thread.
            while not release_started.is_set():
                await asyncio.sleep(0.001)
            assert not lock.done()
            release_may_go.set()
            await asyncio.wait_for(lock, 10)
            with pytest.raises(coordactors.errors.GroupNotFound):  # the backend's error reaches the awaiting task
                await session.join_leave("no-such-group")
            await session.lock("jobs")  # and the thread serves on

        asyncio.run(main())
        assert served_on and threading.get_ident() not in served_on
    finally:
        session.close()


def test_an_asyncio_row_is_held_to_the_awaited_handoff_floor() -> None:
    from coordactors.bench.targets import check

    def row(contender: str, p50: float) -> dict[str, Any]:
        return {"backend": "redis", "operation": "trylock", "contender": contender, "mode": "c1", "sample": {"p50_us": p50, "throughput": 1.0}}

    data = {"backends": {"redis": ""}, "floors": {"queue_pingpong": {"p50_us": 40.0}, "loop_pingpong": {"p50_us": 55.0}},
            "settings": {"sweep_operations": []},
            "results": [row("raw", 100.0), row("handoff", 130.0), row("async_handoff", 160.0), row("ask", 140.0), row("asyncio", 170.0)]}
    overhead = {t["what"]: t for t in check(data) if t["target"] == "overhead"}
    ask, awaited = overhead["trylock via ask"], overhead["trylock via asyncio"]
    assert ask["handoff_overhead"] == 30.0 and "raw behind a bare hand-off 130 µs, so ask adds 10 µs" in ask["detail"]
    assert awaited["handoff_overhead"] == 60.0 and not awaited["ok"]  # 60 > 1.2 x 40: no awaited actor meets it here
    assert "raw behind a bare awaited hand-off 160 µs, so asyncio adds 10 µs" in awaited["detail"]
    # A run from before the awaited hand-off was measured falls back to the threads' one.
    data["results"] = [r for r in data["results"] if r["contender"] != "async_handoff"]
    [awaited] = [t for t in check(data) if t["what"] == "trylock via asyncio"]
    assert awaited["handoff_overhead"] == 30.0
