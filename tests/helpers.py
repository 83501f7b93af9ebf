"""Small helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["wait_until"]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    *,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate()`` until it returns a truthy value and return that value.

    Raises AssertionError if it is still falsy after ``timeout`` seconds.
    ``message`` (a string, or a callable evaluated on timeout so it can show
    the latest state) is added to the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            name = getattr(predicate, "__name__", repr(predicate))
            text = f"condition {name} still false after {timeout}s"
            raise AssertionError(f"{text}: {detail}" if detail else text)
        time.sleep(interval)
