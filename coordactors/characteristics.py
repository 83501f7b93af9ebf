"""What a backend guarantees, with tooz's names."""

from __future__ import annotations

import enum

__all__ = ["Characteristics"]


class Characteristics(enum.Enum):
    """Guarantees a backend declares, as tooz's drivers do.

    ``coord.characteristics`` holds the members that are true for the backend
    as configured; the README's backend table is generated from the same
    declarations.
    """

    DISTRIBUTED_ACROSS_THREADS = "DISTRIBUTED_ACROSS_THREADS"
    """Coordinates threads of one process."""
    DISTRIBUTED_ACROSS_PROCESSES = "DISTRIBUTED_ACROSS_PROCESSES"
    """Coordinates processes of one host."""
    DISTRIBUTED_ACROSS_HOSTS = "DISTRIBUTED_ACROSS_HOSTS"
    """Coordinates processes on different hosts."""
    NON_TIMEOUT_BASED = "NON_TIMEOUT_BASED"
    """A lock without a TTL is freed by the holder's death, not by a timeout."""
    LINEARIZABLE = "LINEARIZABLE"
    SEQUENTIAL = "SEQUENTIAL"
    CAUSAL = "CAUSAL"
    SERIALIZABLE = "SERIALIZABLE"
    SAME_VIEW_UNDER_PARTITIONS = "SAME_VIEW_UNDER_PARTITIONS"
    SAME_VIEW_ACROSS_CLIENTS = "SAME_VIEW_ACROSS_CLIENTS"
