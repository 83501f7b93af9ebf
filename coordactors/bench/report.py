"""Writers: the JSON document, the Markdown tables and the PNG plots."""

from __future__ import annotations

import json
import os
from typing import Any

from coordactors.bench.targets import median, shared_gains

__all__ = ["write_all"]

CONTENDERS = ("raw", "handoff", "async_handoff", "ask", "submit", "asyncio", "tooz")


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 10_000:
        return f"{value / 1000:.1f} ms"
    return f"{value:.0f} µs"


def _index(results: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {(r["backend"], r["operation"], r["contender"], r["mode"]): r for r in results}


def markdown(data: dict[str, Any]) -> str:
    """The report as Markdown."""
    m = data["machine"]
    floors = data["floors"]
    lines = [
        "# coordactors benchmark",
        "",
        f"Run {data['date']} on {m.get('cpu', '?')} ({m['cpus']} CPUs, {m.get('memory', '?')}), {m['platform']}, Python {m['python']}.",
        f"Load average at start {m['loadavg_at_start']}, at end {data['loadavg_at_end']} (other jobs shared the machine: compare within this run).",
        f"Settings: {data['settings']}.",
        "",
        f"Floors: bare `queue.SimpleQueue` thread ping-pong p50 **{floors['queue_pingpong']['p50_us']:.0f} µs** "
        f"(p99 {floors['queue_pingpong']['p99_us']:.0f} µs); "
        + (f"a thread answering a task on an asyncio loop (`call_soon_threadsafe`) p50 {floors['loop_pingpong']['p50_us']:.0f} µs; "
           if "loop_pingpong" in floors else "")
        + f"plain pykka `ask` p50 {floors['pykka_ask']['p50_us']:.0f} µs "
        f"(medians of {len(data.get('floor_runs', [floors]))} measurements between backends; ping-pong p50 ranged "
        f"{min(r['queue_pingpong']['p50_us'] for r in data.get('floor_runs', [floors])):.0f}–"
        f"{max(r['queue_pingpong']['p50_us'] for r in data.get('floor_runs', [floors])):.0f} µs).",
        "",
        "Contenders: **raw** = the same backend protocol issued by the client library on the caller's thread (no actor); "
        "**handoff** = raw, each backend call handed to a thread of its own and back through two `queue.SimpleQueue`s and nothing else "
        "(the least any actor in the request path costs for that operation here); "
        "**async_handoff** = the same, each call's answer awaited by a task on an asyncio loop (the floor of **asyncio**); "
        "**ask** / **submit** / **asyncio** = coordactors' `Coordinator.ask(block=True)`, `submit()`, `await request()`; "
        "**tooz** = tooz 8.1.0's driver for the same server. Latencies are p50 (p99) of one whole operation. "
        + ("The one-caller contenders of an operation are set up together and timed in turns, first to last, then last to first, "
           f"{data['settings'].get('slices', 1)} turns each, so that a server warming up or the machine drifting weighs on all of them alike."
           if data["settings"].get("slices", 1) > 1 else ""),
        "",
    ]
    for name, note in data["backends"].items():
        lines.append(f"- {name}: {note}")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- {name}: **not run** ({why})")
    lines.append("")
    rows = _index(data["results"])
    ops = data["settings"]["operations"]
    for op in ops:
        title = data["operation_titles"][op]
        lines += [f"## {title}, one caller", "", "| backend | " + " | ".join(CONTENDERS) + " | ask − raw | ask − handoff |",
                  "|---" * (len(CONTENDERS) + 3) + "|"]
        for backend in data["backends"]:
            cells = []
            for contender in CONTENDERS:
                r = rows.get((backend, op, contender, "c1"))
                if r is None:
                    cells.append("–")
                elif r.get("sample"):
                    cells.append(f"{_fmt(r['sample']['p50_us'])} ({_fmt(r['sample']['p99_us'])})")
                else:
                    cells.append("n/a")
            ask = rows.get((backend, op, "ask", "c1"))
            diffs = []
            for floor in ("raw", "handoff"):
                other = rows.get((backend, op, floor, "c1"))
                diffs.append(f"{ask['sample']['p50_us'] - other['sample']['p50_us']:.0f} µs"
                             if ask and other and ask.get("sample") and other.get("sample") else "–")
            lines.append(f"| {backend} | " + " | ".join(cells) + f" | {diffs[0]} | {diffs[1]} |")
        lines.append("")
    for op in data["settings"]["sweep_operations"]:
        columns = [("ask", "c1"), ("ask", "c4"), ("ask", "c16"), ("submit", "c16"), ("asyncio", "c16"), ("ask", "sep16"),
                   ("raw", "c1"), ("raw", "sep16"), ("tooz", "c1"), ("tooz", "sep16")]
        lines += [f"## {data['operation_titles'][op]}: throughput (operations/s) by callers", "",
                  "cN = N callers sharing one coordinator (asyncio: N tasks on one loop); sep16 = 16 callers with a coordinator/connection each.", "",
                  "| backend | " + " | ".join(f"{c} {m}" for c, m in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for backend in data["backends"]:
            cells = []
            for contender, mode in columns:
                r = rows.get((backend, op, contender, mode))
                cells.append(f"{r['sample']['throughput']:.0f}" if r and r.get("sample") else ("n/a" if r else "–"))
            lines.append(f"| {backend} | " + " | ".join(cells) + " |")
        lines.append("")
    if data.get("heartbeat"):
        lines += ["## Heartbeat with many leases held", "", "| backend | contender | leases | p50 | p99 | round-trip equivalents |", "|---|---|---|---|---|---|"]
        for r in data["heartbeat"]:
            if r.get("sample"):
                eq = f"{r['sample']['p50_us'] / r['round_trip_us']:.1f}" if r.get("round_trip_us") else "–"
                lines.append(f"| {r['backend']} | {r['contender']} | {r['leases']} | {_fmt(r['sample']['p50_us'])} | {_fmt(r['sample']['p99_us'])} | {eq} |")
            else:
                lines.append(f"| {r['backend']} | {r['contender']} | {r['leases']} | n/a | | {r.get('error', '')} |")
        lines.append("")
    if data.get("events"):
        lines += ["## Event latency (join in one coordinator -> MemberJoined at another's subscriber)", "",
                  "| backend | how | p50 | p90 | p99 | the join's own p50 |", "|---|---|---|---|---|---|"]
        for r in data["events"]:
            if r.get("sample"):
                s = r["sample"]
                how = "pushed" if r["pushed"] else f"polled every {r['poll_interval']} s"
                join = r.get("join", {}).get("p50_us")
                lines.append(f"| {r['backend']} | {how} | {_fmt(s['p50_us'])} | {_fmt(s['p90_us'])} | {_fmt(s['p99_us'])} | {_fmt(join)} |")
            else:
                lines.append(f"| {r['backend']} | | n/a: {r.get('error', '')} | | |")
        lines.append("")
    if data.get("failover"):
        lines += ["## Failover (holder SIGKILLed -> waiting member granted)", "", "| backend | ttl | p50 | worst |", "|---|---|---|---|"]
        for r in data["failover"]:
            if r.get("sample"):
                lines.append(f"| {r['backend']} | {r['ttl']} s | {r['sample']['p50_us'] / 1e6:.2f} s | {r['sample']['max_us'] / 1e6:.2f} s |")
            else:
                lines.append(f"| {r['backend']} | | n/a: {r.get('error', '')} | |")
        lines.append("")
    lines += targets_section(data.get("targets", []))
    errors_ = [r for r in data["results"] if r.get("error") and "NotSupported" not in r["error"] and "NotImplemented" not in r["error"]]
    if errors_:
        lines += ["## Errors", ""]
        lines += [f"- {r['backend']} {r['operation']} {r['contender']} {r['mode']}: {r['error']}" for r in errors_]
        lines.append("")
    return "\n".join(lines)


def targets_section(targets: list[dict[str, Any]]) -> list[str]:
    """The report's lines on the target checks: how many hold, why those that
    fail do where the floors say so, and every one that fails."""
    failed = [t for t in targets if not t["ok"]]
    lines = ["## Targets", "", f"{len(targets) - len(failed)} of {len(targets)} checks hold.", ""]
    overheads = [t for t in failed if t["target"] == "overhead" and "handoff_overhead" in t]
    if overheads:
        floor_fails = sum(t["handoff_overhead"] > t["limit"] for t in overheads)
        lines += [f"Of the {len(overheads)} overhead checks that do not hold, {floor_fails} fail for the bare hand-off too "
                  "(the raw client behind two `queue.SimpleQueue` hand-offs per request and nothing else; for asyncio, its answer "
                  "awaited on the loop): there no actor in the request path would meet the limit on this machine. "
                  "Each row's detail says what the library adds beyond that floor.", ""]
    slower = [t for t in failed if t["target"] == "vs tooz, 1 caller" and "handoff_p50" in t]
    if slower:
        floor_fails = sum(t["handoff_p50"] >= t["limit"] for t in slower)
        lines += [f"Of the {len(slower)} checks against one tooz caller that do not hold, {floor_fails} lose to tooz with the bare "
                  "hand-off too: the raw client behind two hand-offs is already slower than tooz's whole operation, so no actor "
                  "in the request path would win them on this machine.", ""]
    gains = [t for t in failed if t["target"] == "16 callers share one coordinator" and "raw_scaling" in t]
    if gains:
        below = [t for t in gains if t["raw_scaling"] < t["limit"]]
        scalings = ", ".join(f"{t['backend']} {t['raw_scaling']:.1f}x" for t in below)
        lines += [f"Of the {len(gains)} 16-caller gains that do not hold, {len(below)} are on backends where the raw client itself, "
                  "the same protocol by hand on 16 connections of its own, scales less than that over one connection "
                  f"({scalings}): on this host the target is beyond what the backend's own client reaches with 16 connections.",
                  ""]
    if failed:
        lines += ["| target | backend | what | measured | limit | detail |", "|---|---|---|---|---|---|"]
        for t in failed:
            lines.append(f"| {t['target']} | {t['backend']} | {t['what']} | {t['value']} | {t['limit']} | {t['detail']} |")
        lines.append("")
    return lines


def plots(data: dict[str, Any], directory: str) -> list[str]:
    """PNG plots: one-caller p50 per backend and contender; throughput by callers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _index(data["results"])
    backends = list(data["backends"])
    written = []
    for op in data["settings"]["operations"]:
        fig, ax = plt.subplots(figsize=(max(6, len(backends) * 1.1), 4.2))
        width = 0.8 / len(CONTENDERS)
        for i, contender in enumerate(CONTENDERS):
            values = []
            for backend in backends:
                r = rows.get((backend, op, contender, "c1"))
                values.append(r["sample"]["p50_us"] if r and r.get("sample") else 0)
            ax.bar([x + i * width for x in range(len(backends))], values, width, label=contender)
        ax.axhline(data["floors"]["queue_pingpong"]["p50_us"], color="grey", linestyle="--", linewidth=1, label="thread ping-pong")
        ax.set_yscale("log")
        ax.set_ylabel("p50 latency (µs, log)")
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(backends))], backends, rotation=30)
        ax.set_title(f"{data['operation_titles'][op]}, one caller")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        path = os.path.join(directory, f"latency-{op}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    for op in data["settings"]["sweep_operations"]:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for backend in backends:
            xs, ys = [], []
            for callers, mode in ((1, "c1"), (4, "c4"), (16, "c16")):
                r = rows.get((backend, op, "ask", mode))
                if r and r.get("sample"):
                    xs.append(callers)
                    ys.append(r["sample"]["throughput"])
            if xs:
                ax.plot(xs, ys, marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("callers sharing one coordinator (ask)")
        ax.set_ylabel("operations / s")
        ax.set_title(f"{data['operation_titles'][op]}: throughput")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = os.path.join(directory, f"throughput-{op}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _rst_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return [*lines, rule]


def rst_summary(data: dict[str, Any]) -> str:
    """The README's excerpt: one-caller latency and shared-coordinator throughput of the lock, as reStructuredText."""
    rows = _index(data["results"])
    m = data["machine"]
    floors = data["floors"]
    out = [
        f"Measured {data['date']} on this project's CI machine: {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('memory', '?')}, "
        f"Python {m['python']}; load average {m['loadavg_at_start'][0]} at start, {data['loadavg_at_end'][0]} at end "
        f"(the machine was shared). Thread ping-pong floor p50 {floors['queue_pingpong']['p50_us']:.0f} µs, pykka ask "
        f"{floors['pykka_ask']['p50_us']:.0f} µs.",
        "",
        "Uncontended lock acquire + release, one caller, p50 (µs):",
        "",
    ]
    table = []
    for backend in data["backends"]:
        cells = [backend]
        for contender in CONTENDERS:
            r = rows.get((backend, "lock", contender, "c1"))
            cells.append(f"{r['sample']['p50_us']:.0f}" if r and r.get("sample") else "n/a")
        table.append(cells)
    out += _rst_table(["backend", *({"raw": "raw client", "async_handoff": "awaited handoff"}.get(c, c) for c in CONTENDERS)], table)
    out += ["", "Lock acquire + release throughput (operations/s): one caller, 16 callers sharing one coordinator, "
            "16 tooz coordinators; gain: ask x16 over ask x1, the median of that pair and two more run back to back:", ""]
    table = []
    for backend in data["backends"]:
        def tput(contender: str, mode: str) -> str:
            r = rows.get((backend, "lock", contender, mode))
            return f"{r['sample']['throughput']:.0f}" if r and r.get("sample") else "n/a"
        gains = shared_gains(data, backend, "lock")
        gain = f"{median(gains):.1f}x" if gains else "n/a"
        table.append([backend, tput("ask", "c1"), tput("ask", "c16"), tput("asyncio", "c16"), gain, tput("tooz", "c1"), tput("tooz", "sep16")])
    out += _rst_table(["backend", "ask x1", "ask x16", "asyncio x16", "gain", "tooz x1", "tooz 16 coords"], table)
    targets = data.get("targets", [])
    out += ["", f"{sum(t['ok'] for t in targets)} of {len(targets)} target checks hold in this run; "
            "``benchmarks/results/results.md`` lists every number and every check that does not hold."]
    return "\n".join(out) + "\n"


def write_all(data: dict[str, Any], directory: str, *, with_plots: bool = True) -> list[str]:
    """Write results.json, results.md, summary.rst and the plots into ``directory``; return the paths."""
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "results.json")
    with open(json_path, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1, sort_keys=False)
        out.write("\n")
    md_path = os.path.join(directory, "results.md")
    with open(md_path, "w", encoding="utf-8") as out:
        out.write(markdown(data))
        out.write("\n")
    rst_path = os.path.join(directory, "summary.rst")
    with open(rst_path, "w", encoding="utf-8") as out:
        out.write(rst_summary(data))
    written = [json_path, md_path, rst_path]
    if with_plots:
        written += plots(data, directory)
    return written
