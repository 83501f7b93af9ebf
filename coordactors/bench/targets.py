"""The issue's targets, checked against one run's numbers.

Each check yields a row: what was compared, the measured value, the limit and
whether it holds.  The report prints every row, failures included, with the
numbers -- a target that cannot hold on this machine is shown, never hidden.
"""

from __future__ import annotations

from typing import Any, Iterator

from coordactors.bench.backends import LOCAL_BACKENDS, PUSH_BACKENDS, ROUND_TRIP_BACKENDS, SHARED_GAIN_BACKENDS

__all__ = ["check", "shared_gains"]

OVERHEAD_FACTOR = 1.2
"""coordactors' p50 minus the raw client's, at most this many thread ping-pongs per request."""
SHARED_GAIN = 3.0
HEARTBEAT_ROUND_TRIPS = 100
"""A heartbeat with 1,000 leases must cost fewer round-trip equivalents than this (one per lease would be 1,000)."""
EVENT_ROUND_TRIPS = 3
FAILOVER_SLACK = 0.5
REQUESTS_PER_OPERATION = {"lock": 2, "trylock": 1, "join_leave": 2, "get_members": 1, "update_capabilities": 1}


def _index(results: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {(r["backend"], r["operation"], r["contender"], r["mode"]): r["sample"] for r in results if r.get("sample")}


def shared_gains(data: dict[str, Any], backend: str, op: str) -> list[float]:
    """Throughput with 16 callers over throughput with one, via ask: the sweep's
    pair first, then each repeated pair (``gain_repeats``)."""
    pairs: dict[int, dict[str, float]] = {}
    for row in data["results"]:
        if (row["backend"], row["operation"], row["contender"]) == (backend, op, "ask") and row["mode"] in ("c1", "c16") and row.get("sample"):
            pairs.setdefault(1, {})[row["mode"]] = row["sample"]["throughput"]
    for row in data.get("gain_repeats", []):
        if (row["backend"], row["operation"]) == (backend, op) and row.get("sample"):
            pairs.setdefault(row["run"], {})[row["mode"]] = row["sample"]["throughput"]
    return [pair["c16"] / pair["c1"] for _run, pair in sorted(pairs.items()) if pair.get("c1") and "c16" in pair]


def median(values: list[float]) -> float:
    """The middle value (the lower of the two middle ones for an even count)."""
    return sorted(values)[(len(values) - 1) // 2]


def check(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target row for the run in ``data`` (the JSON document)."""
    return list(_rows(data))


def _row(target: str, backend: str, what: str, value: float, limit: float, ok: bool, detail: str) -> dict[str, Any]:
    return {"target": target, "backend": backend, "what": what, "value": round(value, 2), "limit": round(limit, 2), "ok": ok, "detail": detail}


def _rows(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    samples = _index(data["results"])
    pingpong = data["floors"]["queue_pingpong"]["p50_us"]
    loop_pingpong = data["floors"].get("loop_pingpong", {}).get("p50_us")
    backends = [b for b in data["backends"]]
    for backend in backends:
        for op, requests in REQUESTS_PER_OPERATION.items():
            raw = samples.get((backend, op, "raw", "c1"))
            for contender in ("ask", "submit", "asyncio"):
                ours = samples.get((backend, op, contender, "c1"))
                if raw is None or ours is None:
                    continue
                # An awaited request's floor is the hand-off awaited from an
                # event loop (older runs measured only the threads' one).
                awaited = contender == "asyncio" and (backend, op, "async_handoff", "c1") in samples
                handoff = samples.get((backend, op, "async_handoff" if awaited else "handoff", "c1"))
                overhead = ours["p50_us"] - raw["p50_us"]
                limit = OVERHEAD_FACTOR * pingpong * requests
                beyond = ("" if handoff is None else
                          f"; raw behind a bare{' awaited' if awaited else ''} hand-off {handoff['p50_us']:.0f} µs, so {contender} adds "
                          f"{(ours['p50_us'] - handoff['p50_us']) / requests:.0f} µs per request beyond any actor's floor")
                if contender == "asyncio" and loop_pingpong is not None:
                    beyond += f" (an event loop's own ping-pong: {loop_pingpong:.0f} µs)"
                row = _row("overhead", backend, f"{op} via {contender}", overhead, limit, overhead <= limit,
                           f"p50 {ours['p50_us']:.0f} µs - raw {raw['p50_us']:.0f} µs over {requests} request(s); ping-pong {pingpong:.0f} µs"
                           + beyond)
                if handoff is not None:
                    # The bare hand-off's own cost: above ``limit``, no actor meets the target here.
                    row["handoff_overhead"] = round(handoff["p50_us"] - raw["p50_us"], 2)
                yield row
        for op in REQUESTS_PER_OPERATION:
            ours, tooz = samples.get((backend, op, "ask", "c1")), samples.get((backend, op, "tooz", "c1"))
            if ours is None or tooz is None:
                continue
            expected = backend in ROUND_TRIP_BACKENDS
            faster = ours["p50_us"] < tooz["p50_us"]
            raw, handoff = samples.get((backend, op, "raw", "c1")), samples.get((backend, op, "handoff", "c1"))
            floor = ("" if raw is None or handoff is None else
                     f"; the same protocol by hand {raw['p50_us']:.0f} µs, behind a bare hand-off {handoff['p50_us']:.0f} µs")
            row = _row("vs tooz, 1 caller" + ("" if expected else " (informational)"), backend, op, ours["p50_us"], tooz["p50_us"],
                       faster or not expected,
                       f"coordactors {ours['p50_us']:.0f} µs vs tooz {tooz['p50_us']:.0f} µs p50" + floor
                       + ("" if faster or expected else ": one thread hand-off each way costs more than tooz's whole operation here"))
            if handoff is not None:
                # Above tooz's p50, no actor in the request path wins this one here.
                row["handoff_p50"] = handoff["p50_us"]
            yield row
        for op in data["settings"]["sweep_operations"]:
            one, shared = samples.get((backend, op, "ask", "c1")), samples.get((backend, op, "ask", "c16"))
            best_shared = max((samples[k]["throughput"] for k in samples if k[0] == backend and k[1] == op and k[3] == "c16"), default=None)
            gains = shared_gains(data, backend, op)
            tooz16, raw16 = samples.get((backend, op, "tooz", "sep16")), samples.get((backend, op, "raw", "sep16"))
            if one is not None and shared is not None and gains and backend in SHARED_GAIN_BACKENDS:
                gain = median(gains)
                raw1 = samples.get((backend, op, "raw", "c1"))
                # How far the raw client itself scales here: a reference, not the target.
                scaling = ("" if raw16 is None or raw1 is None or not raw1["throughput"] else
                           f"; the protocol by hand, 16 connections over one: {raw16['throughput'] / raw1['throughput']:.1f}x "
                           f"({raw16['throughput']:.0f}/s vs {raw1['throughput']:.0f}/s)")
                row = _row("16 callers share one coordinator", backend, op, gain, SHARED_GAIN, gain >= SHARED_GAIN,
                           f"ask, 16 callers over one, median of {len(gains)} back-to-back pairs ({', '.join(f'{g:.1f}x' for g in gains)}); "
                           f"first pair {shared['throughput']:.0f}/s vs {one['throughput']:.0f}/s" + scaling)
                if scaling:
                    row["raw_scaling"] = raw16["throughput"] / raw1["throughput"]  # type: ignore[index]
                yield row
            if best_shared is not None and tooz16 is not None:
                yield _row("concurrent: one coordinator beats 16 tooz", backend, op, best_shared, tooz16["throughput"],
                           best_shared > tooz16["throughput"],
                           f"best of ask/submit/asyncio with 16 callers: {best_shared:.0f}/s; tooz, 16 coordinators: {tooz16['throughput']:.0f}/s"
                           + ("" if raw16 is None else f"; coordactors' protocol by hand, 16 connections: {raw16['throughput']:.0f}/s"))
    for row in data.get("heartbeat", []):
        if row.get("contender") != "ask" or not row.get("sample") or not row.get("round_trip_us") or row["backend"] in LOCAL_BACKENDS:
            continue  # no round trips to count where the backend is this host's memory or files
        equivalents = row["sample"]["p50_us"] / row["round_trip_us"]
        yield _row("heartbeat is batched", row["backend"], f"heartbeat with {row['leases']} leases", equivalents, HEARTBEAT_ROUND_TRIPS,
                   equivalents < HEARTBEAT_ROUND_TRIPS,
                   f"p50 {row['sample']['p50_us']:.0f} µs = {equivalents:.1f} x one try-lock round trip ({row['round_trip_us']:.0f} µs)")
    for row in data.get("events", []):
        if not row.get("sample"):
            continue
        p50 = row["sample"]["p50_us"]
        join = row.get("join", {}).get("p50_us", 0.0)
        if row["backend"] in PUSH_BACKENDS:
            if not row.get("round_trip_us"):
                continue  # the try-lock was not measured: no round trip to compare with
            # The join itself (a transaction of several statements on some
            # backends) is not the event system's: compare what comes after it.
            delivery = max(0.0, p50 - join)
            limit = EVENT_ROUND_TRIPS * row["round_trip_us"]
            yield _row("event latency", row["backend"], f"delivery within {EVENT_ROUND_TRIPS} round trips ({row['round_trip_us']:.0f} µs each: one coordactors try-lock)",
                       delivery, limit, delivery <= limit,
                       f"join -> MemberJoined p50 {p50:.0f} µs (p99 {row['sample']['p99_us']:.0f}), of which the join's own reply {join:.0f} µs")
        else:
            limit = row["poll_interval"] * 1e6
            yield _row("event latency", row["backend"], f"within one poll interval ({row['poll_interval']} s)", p50, limit, p50 <= limit,
                       f"join -> MemberJoined p50 {p50:.0f} µs, p99 {row['sample']['p99_us']:.0f} µs")
    for row in data.get("failover", []):
        if not row.get("sample"):
            continue
        worst = row["sample"]["max_us"] / 1e6
        limit = row["ttl"] + FAILOVER_SLACK
        yield _row("failover", row["backend"], f"SIGKILLed holder -> grant (ttl {row['ttl']} s)", worst, limit, worst <= limit,
                   f"worst {worst:.2f} s, p50 {row['sample']['p50_us'] / 1e6:.2f} s over {row['sample']['count']} round(s)")
