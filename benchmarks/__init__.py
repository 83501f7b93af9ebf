"""``python -m benchmarks``: the coordactors benchmark suite (see coordactors.bench)."""
