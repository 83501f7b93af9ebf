"""A fenced register in a file: the thing the checker's lock protects.

It is deliberately independent of the backend under test, so it can judge
it.  The register is an append-only log of its operations; its state is the
last line.  Every operation runs under ``flock`` on the file and appends one
line with a single ``write``, so a worker killed at any moment leaves either
the whole operation or none of it, and processes (or threads) see one order.

Fencing as storage systems do it: the register remembers the highest fence
any operation carried; a read or write with a lower fence is rejected
(``stale``).  A read raises the remembered fence, so once a new holder has
read, a write from an earlier holder can no longer land.  A write whose base
version is not the current one would overwrite an update it never saw: it is
applied (the register does not compare-and-set: the lock is supposed to make
that unnecessary) and logged as a lost update.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["FencedRegister", "Outcome"]

TAIL = 4096  # more than one line: the state is read from the file's last line


class Outcome:
    """What happened to a register operation (string constants)."""

    OK = "ok"
    STALE = "stale"
    LOST_UPDATE = "lost-update"


class FencedRegister:
    """A counter with a fence check, shared by every process through the file ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> FencedRegister:
        """Start the log: value 0, version 0, no fence seen."""
        with open(self.path, "w", encoding="utf-8") as log:
            log.write(json.dumps({"op": "create", "at": time.monotonic(), "member": None, "fence": None,
                                  "outcome": Outcome.OK, "value": 0, "version": 0, "max_fence": None}) + "\n")
        return self

    def read(self, member: str, fence: int) -> tuple[str, int, int]:
        """``(outcome, value, version)``; raises the remembered fence to ``fence`` unless stale."""
        with self._locked() as (fd, state):
            stale = state["max_fence"] is not None and fence < state["max_fence"]
            outcome = Outcome.STALE if stale else Outcome.OK
            self._append(fd, state, member, "read", fence, outcome, max_fence=state["max_fence"] if stale else fence)
            return outcome, state["value"], state["version"]

    def write(self, member: str, fence: int, base_version: int, value: int) -> str:
        """Write ``value`` read at ``base_version``; returns an :class:`Outcome` string."""
        with self._locked() as (fd, state):
            if state["max_fence"] is not None and fence < state["max_fence"]:
                self._append(fd, state, member, "write", fence, Outcome.STALE, max_fence=state["max_fence"])
                return Outcome.STALE
            outcome = Outcome.OK if base_version == state["version"] else Outcome.LOST_UPDATE
            self._append(fd, state, member, "write", fence, outcome, max_fence=fence, value=value, version=state["version"] + 1)
            return outcome

    def state(self) -> dict[str, Any]:
        """The register's current ``{"value", "version", "max_fence"}``."""
        with self._locked() as (_fd, state):
            return {key: state[key] for key in ("value", "version", "max_fence")}

    def log(self) -> list[dict[str, Any]]:
        """Every operation so far, in the order the register applied them."""
        with open(self.path, encoding="utf-8") as log:
            return [json.loads(line) for line in log if line.strip()][1:]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, dict[str, Any]]]:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, even if the process dies
            size = os.fstat(fd).st_size
            tail = os.pread(fd, min(TAIL, size), max(0, size - TAIL))
            yield fd, json.loads(tail.rstrip(b"\n").rpartition(b"\n")[2])
        finally:
            os.close(fd)

    @staticmethod
    def _append(fd: int, state: dict[str, Any], member: str, op: str, fence: int, outcome: str, **changes: Any) -> None:
        record = {"op": op, "at": time.monotonic(), "member": member, "fence": fence, "outcome": outcome,
                  "value": state["value"], "version": state["version"], "max_fence": state["max_fence"]} | changes
        os.write(fd, (json.dumps(record) + "\n").encode())  # one write: all of the line or none of it
