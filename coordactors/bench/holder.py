"""A child process that holds a lock until it is killed (for the failover benchmark).

``python -m coordactors.bench.holder URL NAME`` connects, acquires ``NAME``,
prints ``held <fence>`` and waits for its stdin to close.
"""

from __future__ import annotations

import sys

import coordactors
from coordactors.messages import Acquire


def main(argv: list[str]) -> int:
    """Hold the lock named ``argv[1]`` on ``argv[0]`` until stdin closes."""
    url, name = argv
    coord = coordactors.connect(url, "bench-failover-holder")
    lease = coord.ask(Acquire(name), block=True, timeout=30)
    print(f"held {lease.fence}", flush=True)
    sys.stdin.read()
    coord.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
