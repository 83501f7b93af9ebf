"""The base class of every request message."""

from __future__ import annotations

__all__ = ["Message"]


class Message:
    """A request to a coordinator.  Subclasses are frozen attrs classes,
    validated on construction."""

    __slots__ = ()
