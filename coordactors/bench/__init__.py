"""The benchmark suite: ``coordactors bench`` / ``python -m benchmarks``.

Measures every operation on every backend for coordactors (``ask``,
``submit``, asyncio), the raw client doing the same protocol by hand (the
floor) and tooz, at 1, 4 and 16 callers, plus heartbeat cost, event latency
and failover; checks the issue's targets and writes JSON, Markdown and PNG
plots.  See :func:`main`.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line ``argv``; return the exit status."""
    from coordactors.bench.run import main as run_main

    return run_main(argv)
