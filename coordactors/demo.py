"""A tour of coordactors on the embedded backend: ``python -m coordactors.demo``.

Three workers join a group with capabilities and campaign for leader; an
observer prints the events pushed to it; the workers take a fenced lock in
turn from threads of their own; the leader stands down and leadership moves.
"""

from __future__ import annotations

import argparse
import threading
import time

import coordactors
from coordactors.events import Event, LeaderElected, MemberLeft
from coordactors.messages import Acquire, Join, Release
from coordactors.testing import EventRecorder


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration; return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="memory://demo", help="backend URL (default: memory://demo)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def show(text: str) -> None:
        print(f"[{time.monotonic() - started:6.3f}s] {text}", flush=True)

    events = EventRecorder()

    def print_event(event: Event) -> None:
        events(event)
        show(f"observer got {event}")

    with coordactors.connect(args.url, "observer") as observer:
        show(f"connected to {observer.url}: {sorted(c.name for c in observer.characteristics)}")
        observer.create_group("workers")
        observer.watch("workers", print_event)

        workers = [coordactors.connect(args.url, f"worker-{n}") for n in range(3)]
        try:
            for n, worker in enumerate(workers):
                worker.ask(Join("workers", {"slots": 2 * (n + 1), "zone": "eu"}), block=True, timeout=10)
                worker.campaign("workers")
            events.wait_for(lambda seen: any(isinstance(e, LeaderElected) for e in seen))
            show(f"members: {sorted(observer.members('workers'))}")
            show(f"capabilities of worker-2: {observer.capabilities('workers', 'worker-2')}")
            show(f"leader: {observer.leader('workers')}")

            fences: list[int] = []
            fences_lock = threading.Lock()

            def critical_section(worker: coordactors.Coordinator) -> None:
                for _ in range(2):
                    lease = worker.ask(Acquire("payroll", timeout=10), block=True, timeout=15)
                    with fences_lock:
                        fences.append(lease.fence)
                    show(f"{worker.member_id} holds 'payroll' with fence {lease.fence}")
                    worker.ask(Release(lease), block=True, timeout=10)

            threads = [threading.Thread(target=critical_section, args=(w,)) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            show(f"fences in grant order: {fences} (strictly increasing: {fences == sorted(set(fences))})")

            leader = observer.leader("workers")
            show(f"{leader} stands down")
            next(w for w in workers if w.member_id == leader).stand_down("workers")
            events.wait_for(lambda seen: [e.member for e in seen if isinstance(e, LeaderElected)][-1] != leader)
            show(f"new leader: {observer.leader('workers')}")

            leaving = workers.pop(0)
            leaving.stop()
            events.wait_for(lambda seen: MemberLeft("workers", leaving.member_id) in seen)
            show(f"members after {leaving.member_id} stopped: {sorted(observer.members('workers'))}")
        finally:
            for worker in workers:
                worker.stop()
    show("done: every coordinator stopped, locks released, groups left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
