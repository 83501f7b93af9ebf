"""The registry document of file:// and ipc://, stored as a core and sections.

The registry (see ``_registry``) holds two big parts -- every group's
members, and the event log -- and a small rest: owners, locks, fences and the
event counter.  Reading and rewriting the whole document made a lock
operation cost as much as the largest group (a 1,000-member group: about 2
ms per lock operation for JSON alone).  So the persistent storages keep the
big parts as separately stored **sections**, each under a random *stamp*
named in the core:

* a transaction reads the core only; a section is read the first time the
  registry touches it (a lock operation touches none);
* a section is re-encoded only if the transaction touched it and changed
  something; one it did not touch keeps its stamp and stored bytes;
* a parsed section is kept by its stamp, so a process re-reads a section only
  after another process wrote a new one.  A failed transaction forgets what it
  may have half-changed.

Stamps are random, never reused, so "same stamp" always means "same bytes".
The storage decides where the core and the sections live (files, slots of a
shared-memory segment) and writes the core last: until it is in place, the
old core names the old sections, which are still there.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from coordactors.backend_actors._registry import FORMAT, check_format

__all__ = ["SECTIONS", "Document", "SectionCodec"]

SECTIONS = ("groups", "events")
"""The parts of the registry stored apart from its core."""

_EMPTY: dict[str, Callable[[], Any]] = {"groups": dict, "events": list}


class Document(dict):  # type: ignore[type-arg]
    """A registry document whose sections are read when first used.

    ``stamps`` names the stored version of each section; ``place`` is for the
    storage (where the stored sections are)."""

    def __init__(self, core: dict[str, Any], stamps: dict[str, str], load: Callable[[str], Any]) -> None:
        super().__init__(core)
        self.stamps = stamps
        self.place: Any = None
        self._load = load

    def __missing__(self, key: str) -> Any:
        if key not in _EMPTY:
            raise KeyError(key)
        value = self._load(key)
        self[key] = value
        return value


class SectionCodec:
    """Decodes a stored core lazily and encodes a document back, keeping
    parsed sections by stamp (one codec per storage object)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._parsed: dict[str, tuple[str, Any]] = {}

    def decode(self, core: Any, read_section: Callable[[str, str], bytes]) -> Document:
        """The document of a parsed ``core``; ``read_section(name, stamp)``
        gives a section's stored bytes when it is first used."""
        check_format(core, self.where)
        stamps = core.pop("sections", None) or {}

        def load(name: str) -> Any:
            stamp = stamps.get(name)
            if stamp is None:
                return _EMPTY[name]()
            cached = self._parsed.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            try:
                value = json.loads(read_section(name, stamp))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                value = exc
            if type(value) is not type(_EMPTY[name]()):
                check_format({"format": core["format"]}, self.where, damaged=f"its {name!r} section {stamp!r} is missing or unreadable")
            self._parsed[name] = (stamp, value)
            return value

        return Document(core, dict(stamps), load)

    def encode(self, doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
        """The core to store (sections named by stamp) and the new
        ``(stamp, bytes)`` of every section the transaction used."""
        stamps = dict(getattr(doc, "stamps", {}))
        written = {}
        for name in SECTIONS:
            if dict.__contains__(doc, name):
                stamp = os.urandom(8).hex()
                written[name] = (stamp, json.dumps(doc[name], separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
                stamps[name] = stamp
                self._parsed[name] = (stamp, doc[name])
        core = {key: value for key, value in doc.items() if key not in SECTIONS}
        core["format"], core["sections"] = FORMAT, stamps
        return core, written

    def forget(self) -> None:
        """After a failed transaction: parsed sections may be half-changed."""
        self._parsed.clear()


def dumps(core: dict[str, Any]) -> bytes:
    """The stored form of a core (compact JSON, UTF-8)."""
    return json.dumps(core, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
