"""``coordactors bench``: run every benchmark on every backend, write the report."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from coordactors.bench import report, scenarios
from coordactors.bench.backends import ALL_BACKENDS, Backends, machine, namespace
from coordactors.bench.measure import measure_floors
from coordactors.bench.operations import OPERATIONS
from coordactors.bench.targets import check
from coordactors.bench.trials import Fixture, run_interleaved, run_trial

logger = logging.getLogger(__name__)

__all__ = ["main"]

DEFAULT_OUTPUT = os.path.join("benchmarks", "results")
SIMPLE_CONTENDERS = ("raw", "handoff", "async_handoff", "ask", "submit", "asyncio", "tooz")
SWEEP = (("ask", "c4"), ("ask", "c16"), ("submit", "c16"), ("asyncio", "c16"), ("ask", "sep16"), ("raw", "sep16"), ("tooz", "sep16"))
SLICES = 4
"""The one-caller contenders of an operation take turns this many times (see run_interleaved)."""
GAIN_RUNS = 3
"""The 16-caller gain is the median of this many back-to-back (one caller, 16 callers) pairs: one pair swings with the machine."""


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="coordactors bench", description=(
        "Benchmark coordactors against the raw client and tooz on every backend. Without URLs, starts private servers "
        "with the real-server harness (Consul: the in-repo fake agent) and stops them at the end."))
    p.add_argument("urls", nargs="*", metavar="URL", help="benchmark these servers instead of starting private ones")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS), help="comma-separated backends to start (default: all)")
    p.add_argument("--operations", default=",".join(op.name for op in OPERATIONS), help="comma-separated operations")
    p.add_argument("--sweep", default="lock", help="operations measured at 1, 4, 16 callers and 16 coordinators (default: lock)")
    p.add_argument("--duration", type=float, default=0.6, help="seconds per timed run (default 0.6)")
    p.add_argument("--iterations", type=int, default=20000, help="at most this many operations per caller per run")
    p.add_argument("--group-size", type=int, default=1000, help="members of the get_members group (default 1000)")
    p.add_argument("--leases", type=int, default=1000, help="leases held for the heartbeat benchmark (default 1000)")
    p.add_argument("--events", type=int, default=30, help="event-latency samples per backend")
    p.add_argument("--failovers", type=int, default=2, help="failover rounds per backend")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"directory for results.json, results.md and plots (default {DEFAULT_OUTPUT})")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny counts, every operation and contender once")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``coordactors bench`` and ``python -m benchmarks``; returns the exit status."""
    args = parser().parse_args(argv)
    if args.quick:
        args.duration, args.iterations, args.group_size, args.leases, args.events, args.failovers = 0.05, 20, 20, 20, 2, 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_BACKENDS))
    if unknown:
        print(f"coordactors bench: unknown backend(s) {', '.join(unknown)}; known: {', '.join(ALL_BACKENDS)}", file=sys.stderr)
        return 64
    known_operations = [op.name for op in OPERATIONS]
    wanted = [n.strip() for n in args.operations.split(",") if n.strip()]
    sweep = [n.strip() for n in args.sweep.split(",") if n.strip()]
    for option, asked in (("--operations", wanted), ("--sweep", sweep)):
        unknown = sorted(set(asked) - set(known_operations))
        if unknown:
            print(f"coordactors bench: {option}: unknown operation(s) {', '.join(unknown)}; known: {', '.join(known_operations)}"
                  " (--sweep '' sweeps none)", file=sys.stderr)
            return 64
    operations = [op for op in OPERATIONS if op.name in wanted]
    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "settings": {"duration_s": args.duration, "iterations": args.iterations, "group_size": args.group_size, "leases": args.leases,
                     "event_samples": args.events, "failover_rounds": args.failovers, "operations": [op.name for op in operations],
                     "sweep_operations": sweep, "quick": args.quick,
                     "slices": 1 if args.quick else SLICES},
        "operation_titles": {op.name: op.title for op in OPERATIONS},
        "results": [], "gain_repeats": [], "heartbeat": [], "events": [], "failover": [],
    }
    print(f"floors ({data['machine']['loadavg_at_start']} load)...", flush=True)
    floor_runs: list[dict[str, Any]] = []

    def floors() -> None:
        floor_runs.append({k: v.as_dict() for k, v in measure_floors(max(args.iterations, 2000), max(args.duration, 0.3)).items()})

    floors()
    with Backends() as backends:
        for url in args.urls:
            backends.adopt(url)
        if not args.urls:
            backends.start(names)
        data["backends"] = {b.name: b.note for b in backends.backends}
        data["skipped"] = backends.skipped
        for backend in backends.backends:
            _bench_backend(backend, operations, sweep, args, data)
            floors()
    # The hand-off floor swings with the machine's load and with where the
    # scheduler puts the two threads: measured between backends, the median is used.
    data["floor_runs"] = floor_runs
    data["floors"] = {k: sorted((run[k] for run in floor_runs), key=lambda s: s["p50_us"])[len(floor_runs) // 2] for k in floor_runs[0]}
    data["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data["targets"] = check(data)
    written = report.write_all(data, args.output, with_plots=not args.no_plots)
    failed = [t for t in data["targets"] if not t["ok"]]
    print(f"{len(data['targets']) - len(failed)} of {len(data['targets'])} target checks hold; wrote {', '.join(written)}")
    for t in failed:
        print(f"  target not met: {t['target']} / {t['backend']} / {t['what']}: {t['detail']}")
    return 0


def _sample_or_raise(outcome: Any) -> Any:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _record(data: dict[str, Any], table: str, fields: dict[str, Any], fn: Any) -> Any:
    try:
        sample = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
        fields["error"] = f"{type(exc).__name__}: {exc}"
        logger.debug("%s failed", fields, exc_info=True)
        data[table].append(fields)
        return None
    extra = None
    if isinstance(sample, tuple):
        sample, extra = sample
    fields["sample"] = sample.as_dict()
    data[table].append(fields)
    return extra


def _bench_backend(backend: Any, operations: list[Any], sweep: list[str], args: Any, data: dict[str, Any]) -> None:
    started = time.monotonic()
    ns = namespace()
    try:
        fixture = Fixture(backend, ns, args.group_size)
    except Exception as exc:  # noqa: BLE001
        data["skipped"][backend.name] = f"setup failed: {type(exc).__name__}: {exc}"
        data["backends"].pop(backend.name, None)
        print(f"{backend.name}: setup failed: {exc}", flush=True)
        return
    try:
        for op in operations:
            one_caller = run_interleaved(fixture, op, SIMPLE_CONTENDERS, "c1", iterations=args.iterations, duration=args.duration,
                                         slices=1 if args.quick else SLICES)
            for contender, outcome in one_caller.items():
                fields = {"backend": backend.name, "operation": op.name, "contender": contender, "mode": "c1"}
                _record(data, "results", fields, lambda outcome=outcome: _sample_or_raise(outcome))
            for contender, mode in (SWEEP if op.name in sweep else ()):
                fields = {"backend": backend.name, "operation": op.name, "contender": contender, "mode": mode}
                _record(data, "results", fields, lambda: run_trial(fixture, op, contender, mode, iterations=args.iterations, duration=args.duration))
            # The sweep ran pair 1; pairs 2.. are run again, back to back (not in --quick).
            repeats = GAIN_RUNS - 1 if op.name in sweep and not args.quick else 0
            for run in range(2, 2 + repeats):
                for mode in ("c1", "c16"):
                    fields = {"backend": backend.name, "operation": op.name, "contender": "ask", "mode": mode, "run": run}
                    _record(data, "gain_repeats", fields, lambda: run_trial(fixture, op, "ask", mode, iterations=args.iterations, duration=args.duration))
        round_trip = next((r["sample"]["p50_us"] for r in data["results"] if r["backend"] == backend.name
                           and r["operation"] == "trylock" and r["contender"] == "raw" and r.get("sample")), None)
        ask_trip = next((r["sample"]["p50_us"] for r in data["results"] if r["backend"] == backend.name
                         and r["operation"] == "trylock" and r["contender"] == "ask" and r.get("sample")), None)
        hb_iterations = 5 if args.quick else 20
        for contender in ("ask", "raw", "tooz"):
            fields = {"backend": backend.name, "contender": contender, "leases": args.leases, "round_trip_us": round_trip}
            _record(data, "heartbeat", fields, lambda: scenarios.heartbeat(fixture, contender, args.leases, iterations=hb_iterations))
        session_class = backend.session_class
        fields = {"backend": backend.name, "pushed": not session_class.POLLS, "round_trip_us": ask_trip,
                  "poll_interval": parse_poll_interval(fixture.url)}
        extra = _record(data, "events", fields, lambda: scenarios.event_latency(fixture, iterations=args.events))
        if extra:
            fields.update(extra)
    finally:
        fixture.close()
    if backend.name == "memory":
        data["failover"].append({"backend": "memory", "error": "not applicable: an in-process backend dies with its process"})
    else:
        fields = {"backend": backend.name, "ttl": scenarios.failover_ttl(backend)}
        _record(data, "failover", fields, lambda: scenarios.failover(backend, namespace(), rounds=args.failovers))
    print(f"{backend.name}: done in {time.monotonic() - started:.1f}s", flush=True)


def parse_poll_interval(url: str) -> float:
    """The poll interval in force for ``url``."""
    from coordactors.urls import parse_url

    return float(parse_url(url)[1].poll_interval)
