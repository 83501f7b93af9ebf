"""A worker pool written for tooz: workers join a group and elect a leader.

Every worker joins the group ``--group`` and stands for leader.  The one
elected waits until ``--workers`` members have joined, then dismisses the
pool (through its capabilities); the others leave, and the leader leaves
last, so the pool has exactly one leader from start to end.

This is a tooz program: it runs on tooz itself after changing the one import
line marked below.  Each worker prints JSON lines (joined, elected,
following, pool, done).

Run one worker per process (``file://``, ``redis://``, ``zookeeper://``...)::

    python examples/worker_pool.py redis://127.0.0.1:6379 --member w1 --workers 3 &
    python examples/worker_pool.py redis://127.0.0.1:6379 --member w2 --workers 3 &
    python examples/worker_pool.py redis://127.0.0.1:6379 --member w3 --workers 3

or several workers as threads of one process (needed for the process-local
``memory://`` and ``zake://``)::

    python examples/worker_pool.py memory:// --threads 3 --workers 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from coordactors.compat.tooz import coordination  # with tooz: from tooz import coordination

PRINT_LOCK = threading.Lock()


def say(member: str, event: str, **fields: object) -> None:
    """Print one JSON line about ``member``."""
    with PRINT_LOCK:
        print(json.dumps({"member": member, "event": event, **fields}), flush=True)


def leader_of(coord: coordination.CoordinationDriver, group: bytes) -> tuple[bytes | None, dict]:
    """The member whose capabilities say it leads, and those capabilities."""
    for member in sorted(coord.get_members(group).get()):
        try:
            capabilities = coord.get_member_capabilities(group, member).get()
        except coordination.ToozError:
            continue  # left meanwhile, or a node that is no member (tooz's ZooKeeper leader lock)
        if isinstance(capabilities, dict) and capabilities.get("leader"):
            return member, capabilities
    return None, {}


def workers_in(coord: coordination.CoordinationDriver, group: bytes) -> set[bytes]:
    """The members of ``group`` that joined as workers."""
    found = set()
    for member in coord.get_members(group).get():
        try:
            capabilities = coord.get_member_capabilities(group, member).get()
        except coordination.ToozError:
            continue
        if isinstance(capabilities, dict) and capabilities.get("role") == "worker":
            found.add(member)
    return found


def work(url: str, member: str, group: bytes, workers: int, seconds: float) -> bool:
    """Run one worker until the pool is dismissed (True) or ``seconds`` pass (False)."""
    coord = coordination.get_coordinator(url, member.encode())
    coord.start(start_heart=True)
    me = member.encode()
    capabilities = {"role": "worker", "pid": os.getpid()}
    elected = threading.Event()
    try:
        coord.join_group_create(group, capabilities)
        coord.watch_join_group(group, lambda event: say(member, "joined", who=event.member_id.decode()))

        def on_elected(event: coordination.LeaderElected) -> None:
            say(member, "elected", group=event.group_id.decode())
            coord.update_capabilities(group, {**capabilities, "leader": True}).get()
            elected.set()

        coord.watch_elected_as_leader(group, on_elected)
        deadline = time.monotonic() + seconds
        following = None
        dismissed = False
        while time.monotonic() < deadline:
            coord.run_watchers()
            if elected.is_set():
                if not dismissed:
                    pool = workers_in(coord, group)
                    if len(pool) >= workers:
                        say(member, "pool", members=sorted(m.decode() for m in pool))
                        coord.update_capabilities(group, {**capabilities, "leader": True, "dismiss": True}).get()
                        dismissed = True
                elif workers_in(coord, group) <= {me}:
                    coord.leave_group(group).get()
                    say(member, "done", role="leader")
                    return True
            else:
                leader, leader_capabilities = leader_of(coord, group)
                if leader is not None and leader != following:
                    following = leader
                    say(member, "following", leader=leader.decode())
                if leader_capabilities.get("dismiss"):
                    coord.leave_group(group).get()
                    say(member, "done", role="worker")
                    return True
            time.sleep(0.05)
        say(member, "timeout")
        return False
    finally:
        coord.stop()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the worker(s); exit status 0 if every worker finished."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="backend URL, e.g. redis://127.0.0.1:6379")
    parser.add_argument("--member", default=f"worker-{os.getpid()}", help="this worker's member id")
    parser.add_argument("--group", default="workers", help="the pool's group")
    parser.add_argument("--workers", type=int, default=3, help="pool size the leader waits for")
    parser.add_argument("--threads", type=int, default=1, help="workers to run as threads of this process")
    parser.add_argument("--seconds", type=float, default=60.0, help="give up after this long")
    args = parser.parse_args(argv)
    group = args.group.encode()
    if args.threads == 1:
        return 0 if work(args.url, args.member, group, args.workers, args.seconds) else 1
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda m=f"{args.member}-{i}": results.append(work(args.url, m, group, args.workers, args.seconds)))
        for i in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0 if len(results) == args.threads and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
