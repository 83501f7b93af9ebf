"""Print the README's backend table from the backends' own declarations.

``python scripts/backend_table.py`` prints it; tests/test_readme.py checks
that README.rst holds exactly this, so the table cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordactors.characteristics import Characteristics  # noqa: E402
from coordactors.urls import SCHEMES, load_backend  # noqa: E402

SHORT = {
    Characteristics.DISTRIBUTED_ACROSS_THREADS: "threads",
    Characteristics.DISTRIBUTED_ACROSS_PROCESSES: "processes",
    Characteristics.DISTRIBUTED_ACROSS_HOSTS: "hosts",
    Characteristics.NON_TIMEOUT_BASED: "non-timeout",
    Characteristics.LINEARIZABLE: "linearizable",
}
PRIMITIVES = "groups, capabilities, leaders, fenced locks, pushed events"


def table() -> str:
    """The backend table, as reStructuredText."""
    rows = [("URL scheme", "primitives", "across", "guarantees", "events", "extra")]
    by_class: dict[str, list[str]] = {}
    for scheme, (target, _extra) in SCHEMES.items():
        by_class.setdefault(target, []).append(scheme)
    for target, schemes in by_class.items():
        session = load_backend(schemes[0])
        extra = SCHEMES[schemes[0]][1] or "(none)"
        traits = session.CHARACTERISTICS
        across = ", ".join(SHORT[c] for c in SHORT if c in traits and SHORT[c] in ("threads", "processes", "hosts"))
        guarantees = ", ".join(SHORT[c] for c in (Characteristics.NON_TIMEOUT_BASED, Characteristics.LINEARIZABLE) if c in traits)
        events = "polled every poll_interval" if session.POLLS else "pushed"
        rows.append((", ".join(f"``{s}://``" for s in schemes), PRIMITIVES, across, guarantees, events, extra))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows[1:]]
    lines.append(rule)
    return "\n".join(lines) + "\n"


MATRIX_HEADINGS = {
    Characteristics.DISTRIBUTED_ACROSS_THREADS: "threads",
    Characteristics.DISTRIBUTED_ACROSS_PROCESSES: "processes",
    Characteristics.DISTRIBUTED_ACROSS_HOSTS: "hosts",
    Characteristics.NON_TIMEOUT_BASED: "non-timeout",
    Characteristics.LINEARIZABLE: "linearizable",
    Characteristics.SEQUENTIAL: "sequential",
    Characteristics.CAUSAL: "causal",
    Characteristics.SERIALIZABLE: "serializable",
    Characteristics.SAME_VIEW_UNDER_PARTITIONS: "same view (partitions)",
    Characteristics.SAME_VIEW_ACROSS_CLIENTS: "same view (clients)",
}


def matrix() -> str:
    """Every Characteristics member per backend ("x" where declared), as reStructuredText."""
    rows = [("backend", *MATRIX_HEADINGS.values())]
    seen: set[str] = set()
    for scheme, (target, _extra) in SCHEMES.items():
        if target in seen:
            continue
        seen.add(target)
        traits = load_backend(scheme).CHARACTERISTICS
        rows.append((f"``{scheme}://``", *("x" if c in traits else "" for c in MATRIX_HEADINGS)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip(), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows[1:]]
    lines.append(rule)
    return "\n".join(lines) + "\n"


def tables() -> str:
    """What README.rst holds between its backend-table markers."""
    return table() + "\nWhat each backend guarantees (``coord.characteristics``, tooz's names):\n\n" + matrix()


if __name__ == "__main__":
    print(tables(), end="")
