"""A cron-style job written for tooz: run once per period, whichever host is up.

Several copies of this program run the same schedule: one job per period of
``--period`` seconds, ``--periods`` times.  A tooz lock guards the job, and a
ledger (a file every copy can read, standing for the database a real job
would write to) records which periods ran: under the lock, a copy runs every
period that is due and not yet in the ledger -- late, if need be, as anacron
does -- so each period runs exactly once, however many copies run and
however slow any of them is.  The first copy to take the lock fixes the
schedule's first period in the ledger.

This is a tooz program: it runs on tooz itself after changing the one import
line marked below.  Each run prints a JSON line, and the job itself checks
that no other run overlaps it (an exclusively created marker file).

Run one copy per process (``file://``, ``redis://``, ``zookeeper://``...)::

    python examples/cron_job.py redis://127.0.0.1:6379 --ledger /tmp/ledger &
    python examples/cron_job.py redis://127.0.0.1:6379 --ledger /tmp/ledger

or several copies as threads of one process (for ``memory://``, ``zake://``)::

    python examples/cron_job.py memory:// --ledger /tmp/ledger --threads 3
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


class Ledger:
    """The record of which periods ran, kept in a file (append-only JSON lines)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> list[dict]:
        """Every record so far."""
        try:
            with open(self.path, encoding="utf-8") as ledger:
                return [json.loads(line) for line in ledger if line.strip()]
        except FileNotFoundError:
            return []

    def append(self, record: dict) -> None:
        """Add one record."""
        with open(self.path, "a", encoding="utf-8") as ledger:
            ledger.write(json.dumps(record) + "\n")


def run_job(member: str, period: int, ledger: Ledger, work_seconds: float) -> None:
    """The job: fails loudly if another run of it is in progress."""
    marker = ledger.path + ".running"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        say(member, "overlap", period=period)
        raise
    try:
        time.sleep(work_seconds)  # the job's work
        ledger.append({"period": period, "member": member})
    finally:
        os.close(fd)
        os.unlink(marker)


def cron(url: str, member: str, ledger: Ledger, period_seconds: float, periods: int, work_seconds: float, seconds: float) -> bool:
    """Run the schedule until every period ran (True) or ``seconds`` pass (False)."""
    coord = coordination.get_coordinator(url, member.encode())
    coord.start(start_heart=True)
    lock = coord.get_lock(b"cron-job")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            now = int(time.time() // period_seconds)
            if lock.acquire(blocking=False):  # another copy is at it: look again soon
                try:
                    records = ledger.read()
                    if not records:
                        ledger.append({"first": now})
                        records = ledger.read()
                    first = records[0]["first"]
                    done = {r["period"] for r in records if "period" in r}
                    if len(done) >= periods:
                        say(member, "finished")
                        return True
                    for period in range(first, min(now, first + periods - 1) + 1):
                        if period not in done:
                            run_job(member, period, ledger, work_seconds)
                            say(member, "ran", period=period - first)
                finally:
                    lock.release()
            time.sleep(min(period_seconds / 4, max(0.0, (now + 1) * period_seconds - time.time())))
        say(member, "timeout")
        return False
    finally:
        coord.stop()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the copies; exit status 0 if every copy saw the schedule complete."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="backend URL, e.g. redis://127.0.0.1:6379")
    parser.add_argument("--ledger", required=True, help="file recording the periods that ran")
    parser.add_argument("--member", default=f"cron-{os.getpid()}", help="this copy's member id")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per period")
    parser.add_argument("--periods", type=int, default=5, help="periods to run, then stop")
    parser.add_argument("--work", type=float, default=0.1, help="seconds the job works")
    parser.add_argument("--threads", type=int, default=1, help="copies to run as threads of this process")
    parser.add_argument("--seconds", type=float, default=60.0, help="give up after this long")
    args = parser.parse_args(argv)
    ledger = Ledger(args.ledger)

    def one(member: str) -> bool:
        return cron(args.url, member, ledger, args.period, args.periods, args.work, args.seconds)

    if args.threads == 1:
        return 0 if one(args.member) else 1
    results: list[bool] = []
    threads = [threading.Thread(target=lambda m=f"{args.member}-{i}": results.append(one(m))) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0 if len(results) == args.threads and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
