"""Run the safety checker on every backend and cluster; print the README's table.

    python3 scripts/checker_table.py [--seconds 5] [--json results.json] [ROW ...]

Each row is one ``coordactors check`` run in a process of its own, against a
private server (``--private``), a private cluster (``--cluster``) or, for the
backends without a server, the host itself, with every nemesis the row can
take.  Rows are run one after another (faults need the machine to themselves).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from typing import Any

ROWS: dict[str, list[str]] = {
    # row label: coordactors check arguments (URL and the kind of server)
    "memory": ["memory://checker"],
    "file": ["file:///tmp/coordactors-checker-table"],
    "ipc": ["ipc://checker"],
    "redis": ["redis://", "--private"],
    "zookeeper": ["zookeeper://", "--private"],
    "memcached": ["memcached://", "--private"],
    "postgresql": ["postgresql://", "--private"],
    "mysql": ["mysql://", "--private"],
    "etcd": ["etcd://", "--private"],
    "etcd3": ["etcd3+http://", "--private"],
    "consul (fake agent)": ["consul://", "--private", "--ttl", "10"],
    "zookeeper, 3-server ensemble": ["zookeeper://", "--cluster"],
    "etcd, 3-member cluster": ["etcd://", "--cluster"],
    "etcd3, 3-member cluster": ["etcd3+http://", "--cluster"],
    "redis, Sentinel + replica": ["redis://", "--cluster"],
}
NEMESES = ("none", "holder-kill", "holder-pause", "server-restart", "partition", "node-kill")


def run_row(arguments: list[str], seconds: float) -> dict[str, Any]:
    """One ``coordactors check`` run; its JSON report (or the error it printed)."""
    command = [sys.executable, "-m", "coordactors", "check", *arguments, "--nemesis", "all", "--seconds", str(seconds), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode not in (0, 1):
        return {"error": (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]}
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def cell(report: dict[str, Any], nemesis: str) -> str:
    """What one nemesis did on one row, in a few words."""
    if nemesis in report.get("skipped", {}):
        return "n/a"
    phase = next((p for p in report["phases"] if p["nemesis"] == nemesis), None)
    if phase is None:
        return "n/a"
    verdict = "ok" if phase["ok"] else ("SLOW" if all(p.startswith("SLOW:") for p in phase["problems"]) else "FAIL")
    if nemesis == "holder-kill" and "kill_to_next_grant" in phase:
        return f"{verdict}, {phase['kill_to_next_grant']:.2f} s"
    if nemesis == "holder-pause":
        first = phase.get("paused_holder_learned_first")
        return f"{verdict}, {'told first' if first else 'lower fence' if first is False else 'told'}"
    if nemesis in ("server-restart", "partition", "node-kill") and "restore_after_heal" in phase:
        return f"{verdict}, {phase.get('sessions_lost', 0)} lost, {phase['restore_after_heal']:.2f} s"
    return f"{verdict}, {phase['longest_unavailable']:.2f} s"


def table(results: dict[str, dict[str, Any]]) -> str:
    """The RST table: a row per backend, a column per nemesis, then the safety counts."""
    # Overlaps: holds that began while an earlier holder still believed, not told of a loss -- except
    # that a paused holder cannot be told; there only an overlap whose earlier fence is not lower counts.
    header = ["backend", *NEMESES, "overlaps", "lost updates", "stale writes refused"]
    rows = []
    for label, report in results.items():
        if "error" in report:
            rows.append([label, f"error: {report['error']}"] + [""] * (len(header) - 2))
            continue
        phases = report["phases"]
        rows.append([label, *(cell(report, n) for n in NEMESES), str(sum(p["overlaps_fence_inverted"] if p["nemesis"] == "holder-pause" else p["overlaps"] for p in phases)),
                     str(sum(p["lost_updates"] for p in phases)), str(sum(p["stale_rejected"] for p in phases))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([*lines, rule])


def main() -> int:
    """Run the rows asked for (default: all) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", help=f"rows to run (default all): {', '.join(ROWS)}")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write every report to this file")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for label in args.rows or ROWS:
        started = time.monotonic()
        results[label] = run_row(ROWS[label], args.seconds)
        print(f"{label}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "results": results}, out, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
