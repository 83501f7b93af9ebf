"""Judging a checker run: holds, overlaps, lost updates, unavailability, recoveries.

Input: every worker's records (see :mod:`coordactors.testing.checker.worker`),
the faults the nemesis injected, and the register's log.  Output: plain dicts
of numbers, so a report can be printed, compared or dumped as JSON.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Hold", "holds_from", "judge_phase", "longest_unavailability", "overlaps"]


@attrs.define
class Hold:
    """One worker's belief that it held the lock with ``fence``, from ``start`` to ``end``.

    ``end`` is the earliest of: the worker started releasing, it was told of a
    loss (LockLost event or a failing ``check()``), the lease expired on the
    worker's own clock, the worker was killed, the run ended.
    """

    worker: str
    fence: int
    start: float
    end: float
    told: bool = False  # ended by a loss notification (event, failing check, local expiry)
    believed_after_loss: bool = False  # a check() passed after the lease was lost


def holds_from(records: list[tuple[str, dict[str, Any]]], kills: dict[str, float], run_end: float) -> list[Hold]:
    """Build every hold from the workers' ``(worker, record)`` pairs, in grant order."""
    holds: dict[tuple[str, int], Hold] = {}
    believes: dict[tuple[str, int], list[float]] = {}
    ends: list[tuple[str, dict[str, Any]]] = []
    for worker, record in records:
        kind = record["k"]
        if kind == "grant":
            holds[(worker, record["fence"])] = Hold(worker, record["fence"], record["at"], min(run_end, kills.get(worker, run_end)))
        elif kind in ("end", "lost"):
            ends.append((worker, record))
        elif kind == "believe":
            believes.setdefault((worker, record["fence"]), []).append(record["at"])
    for worker, record in ends:
        hold = holds.get((worker, record["fence"]))
        if hold is None:
            continue  # a loss of a lease granted before the records start (cannot happen in one run)
        at = record["at"]
        if record["k"] == "end" and record.get("why") == "check" and record.get("expires_at") is not None:
            at = min(at, record["expires_at"])
        if at < hold.end:
            hold.end = at
            hold.told = record["k"] == "lost" or record.get("why") == "check"
    for key, times in believes.items():
        hold = holds.get(key)
        lost_at = min((r["at"] for w, r in ends if (w, r["fence"]) == key and r["k"] == "lost"), default=None)
        if hold is not None and lost_at is not None and any(t > lost_at for t in times):
            hold.believed_after_loss = True
    return sorted(holds.values(), key=lambda h: (h.start, h.fence))


def overlaps(holds: list[Hold]) -> list[tuple[Hold, Hold]]:
    """Pairs (earlier, later) where the later hold began before the earlier one's belief ended."""
    found = []
    for i, earlier in enumerate(holds):
        for later in holds[i + 1:]:
            if later.start >= earlier.end:
                continue
            found.append((earlier, later))
    return found


def longest_unavailability(register_log: list[dict[str, Any]], start: float, end: float) -> float:
    """The longest time within [start, end] in which no write was accepted by the register.

    Counted from progress, not from belief: a holder that is paused, cut off
    or dead holds the lock without anyone being able to use it.
    """
    longest, last = 0.0, start
    for op in register_log:
        if op["op"] != "write" or op["outcome"] == "stale" or not start <= op["at"] <= end:
            continue
        longest, last = max(longest, op["at"] - last), op["at"]
    return max(longest, end - last)


def judge_phase(
    phase: dict[str, Any],
    holds: list[Hold],
    register_log: list[dict[str, Any]],
    records: list[tuple[str, dict[str, Any]]],
    ttl: float,
    backoff_max: float,
) -> dict[str, Any]:
    """The numbers and the verdict for one nemesis phase (``phase``: name, start, end, faults)."""
    start, end = phase["start"], phase["end"]
    mine = [h for h in holds if start <= h.start < end]
    pairs = [(a, b) for a, b in overlaps(holds) if start <= b.start < end]
    inverted = [(a, b) for a, b in pairs if a.fence >= b.fence]
    ops = [op for op in register_log if start <= op["at"] < end]
    result: dict[str, Any] = {
        "nemesis": phase["name"],
        "seconds": round(end - start, 2),
        "holds": len(mine),
        "writes": sum(1 for op in ops if op["op"] == "write" and op["outcome"] != "stale"),
        "overlaps": len(pairs),
        "overlaps_fence_inverted": len(inverted),
        "believed_after_loss": sum(1 for h in mine if h.believed_after_loss),
        "lost_updates": sum(1 for op in ops if op["outcome"] == "lost-update"),
        "stale_rejected": sum(1 for op in ops if op["outcome"] == "stale"),
        "longest_unavailable": round(longest_unavailability(register_log, start, end), 3),
        "faults": len(phase["faults"]),
        "problems": [],
        "overlap_details": [
            f"{a.worker} fence {a.fence} [{a.start - start:+.3f}, {a.end - start:+.3f}] told={a.told} vs "
            f"{b.worker} fence {b.fence} from {b.start - start:+.3f}" for a, b in pairs[:5]
        ],
    }
    problems: list[str] = result["problems"]
    for a, b in pairs:
        what = f"{b.worker} granted fence {b.fence} at +{b.start - start:.3f}s while {a.worker} still believed in fence {a.fence}"
        if a.fence >= b.fence:
            problems.append(f"UNSAFE: {what}, and the earlier fence is not lower")
        elif phase["name"] != "holder-pause":
            problems.append(f"overlap without a prior loss notice: {what}")
    if result["believed_after_loss"]:
        problems.append(f"{result['believed_after_loss']} lease(s) passed check() after their LockLost event")
    if result["lost_updates"]:
        problems.append(f"{result['lost_updates']} lost update(s) in the register")
    for fault in phase["faults"]:
        if fault.get("fence") is not None and any(
            w == fault.get("worker") and r.get("fence") == fault["fence"] and r["k"] == "end" and r["at"] < fault["at"] for w, r in records
        ):
            result["faults_missed"] = result.get("faults_missed", 0) + 1  # the victim had just released: no holder was hit
            continue
        _judge_fault(fault, holds, records, ttl, backoff_max, result, problems, end)
    if not mine and phase["name"] == "none":
        problems.append("no hold at all: the lock was never granted")
    result["ok"] = not problems
    return result


def _judge_fault(fault: dict[str, Any], holds: list[Hold], records: list[tuple[str, dict[str, Any]]], ttl: float,
                 backoff_max: float, result: dict[str, Any], problems: list[str], end: float = float("inf")) -> None:
    """Judge one fault of a phase ending at ``end``: a session lost after the phase is the next fault's doing."""
    kind, at, victim = fault["kind"], fault["at"], fault.get("worker")
    if kind == "kill":
        nxt = next((h for h in holds if h.start > at and h.worker != victim), None)
        if nxt is None:
            problems.append(f"after {victim} was killed holding fence {fault['fence']}, nobody else was granted the lock")
            return
        took = nxt.start - at
        result["kill_to_next_grant"] = max(result.get("kill_to_next_grant", 0.0), round(took, 3))
        if took > ttl + 0.5:
            problems.append(f"SLOW: a killed holder's lock went to {nxt.worker} {took:.3f}s later (> TTL {ttl} + 0.5 s)")
    elif kind == "pause":
        mine = next((h for h in holds if h.worker == victim and h.fence == fault["fence"]), None)
        nxt = next((h for h in holds if h.start > at and h.worker != victim), None)
        told = any(w == victim and r.get("fence") == fault["fence"] and (r["k"] == "lost" or r.get("why") == "check")
                   for w, r in records)
        if not told:
            problems.append(f"the paused holder {victim} was never told it lost fence {fault['fence']}")
        if mine is not None and nxt is not None:
            first = mine.end <= nxt.start
            result["paused_holder_learned_first"] = result.get("paused_holder_learned_first", True) and first
            if not first and not mine.fence < nxt.fence:
                problems.append(f"UNSAFE: paused {victim} (fence {mine.fence}) believed until after {nxt.worker} was granted fence {nxt.fence}")
    elif kind in ("restart", "partition", "node-kill"):
        healed = fault["healed_at"]
        regranted = next((h.start for h in holds if h.start > healed), None)
        if regranted is None:
            problems.append(f"the lock was never granted again after the {kind} healed")
        else:
            result["grant_after_heal"] = max(result.get("grant_after_heal", 0.0), round(regranted - healed, 3))
        lost = {w for w, r in records if r["k"] == "session" and r["type"] == "lost" and at <= r["at"] < end}
        slowest, slowest_why = 0.0, ""
        for worker in sorted(lost):
            restored = [r["at"] for w, r in records if w == worker and r["k"] == "session" and r["type"] == "restored" and r["at"] >= at]
            if not restored:
                problems.append(f"{worker}'s session was lost after the {kind} and never restored")
                continue
            if restored[0] - healed > slowest:
                first_loss = min((r for w, r in records if w == worker and r["k"] == "session" and r["type"] == "lost" and at <= r["at"] < end),
                                 key=lambda r: r["at"])
                slowest = restored[0] - healed
                slowest_why = (f" ({worker}: lost {first_loss['at'] - at:+.2f}s after the fault, healed at {healed - at:+.2f}s, "
                               f"restored at {restored[0] - at:+.2f}s; cause: {first_loss.get('cause', '?')})")
        result["restore_after_heal"] = max(result.get("restore_after_heal", 0.0), round(max(slowest, 0.0), 3))
        result["sessions_lost"] = result.get("sessions_lost", 0) + len(lost)
        if slowest > 1.0 + backoff_max:
            problems.append(f"SLOW: sessions were restored {slowest:.3f}s after the {kind} healed (> 1 s + backoff {backoff_max} s)"
                            + slowest_why)
        if "leader" in fault:
            result["campaigns_restored"] = result.get("campaigns_restored", True) and fault["leader"] in fault["expected_members"]
            result["watches_restored"] = result.get("watches_restored", True) and not fault.get("watch_missing")
        if "leader" in fault and fault["leader"] not in fault["expected_members"]:
            problems.append(f"after the {kind} no live worker led the group (leader: {fault['leader']!r}): campaigns not restored")
        if fault.get("watch_missing"):
            problems.append(f"after the {kind} {', '.join(fault['watch_missing'])} never heard a member join: watches not restored")
        if fault.get("members") is not None and fault["members"] != fault["expected_members"]:
            problems.append(f"after the {kind} the group held {sorted(fault['members'])}, expected {sorted(fault['expected_members'])}")
