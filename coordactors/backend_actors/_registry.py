"""The coordination state of the embedded backends, as one document.

memory://, file:// and ipc:// keep the same document -- owners (sessions),
groups, locks, fence counters and an ordered event log -- and differ only in
where it lives and how it is locked (a dict under a threading lock, a JSON
file under an inter-process lock, POSIX shared memory under a semaphore).
Every operation here runs inside the storage's exclusive transaction.

Document (format ``coordactors-registry/2``; file:// and ipc:// store
``groups`` and ``events`` apart from the rest, see ``_sections``)::

    {"format": ..., "boot": <boot id>, "seq": <last event number>,
     "events": [[seq, group, kind, member], ...],     # kind: join | leave | leader
     "owners": {token: {"member", "pid", "start", "expires"}},
     "groups": {group: {member: {"caps": <json text>, "owner": token}}},
     "locks":  {name: {"owner", "member", "fence", "expires"}},
     "fences": {name: <last fence issued>}}

Fences come from ``fences``, seeded for a new name from ``fence_floor`` (a
clock-derived floor on the persistent backends), so a registry that was lost
and re-created never hands out a fence lower than one issued before.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from coordactors import errors
from coordactors.messages._validate import RESERVED_LOCK_PREFIX

FORMAT = "coordactors-registry/2"
READABLE = frozenset({"coordactors-registry/1", FORMAT})
"""Format 1 kept everything in one document; 2 may keep groups and events apart (``_sections``)."""
EVENT_LOG_LENGTH = 2048
"""Events kept for sessions that poll; a session further behind resynchronises."""


def new_document(boot: str) -> dict[str, Any]:
    """An empty registry."""
    return {"format": FORMAT, "boot": boot, "seq": 0, "events": [], "owners": {}, "groups": {}, "locks": {}, "fences": {}}


def check_format(doc: Any, where: str, damaged: str | None = None) -> None:
    """Raise InvalidArgument if ``doc`` is not a registry we wrote (never overwrite it).

    ``doc`` may be a stored core whose groups and events are kept apart (see
    ``_sections``); ``damaged`` says what else was found wrong with it."""
    if not isinstance(doc, dict) or doc.get("format") not in READABLE:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise errors.InvalidArgument(
            f"{where} holds data in a format coordactors does not know (format {found!r}, expected {FORMAT!r}); "
            "it was left untouched: point the URL elsewhere or remove it"
        )
    for key in ("owners", "groups", "locks", "fences", "events"):
        if key in ("groups", "events") and key not in doc and isinstance(doc.get("sections"), dict):
            continue
        if not isinstance(doc.get(key), (dict, list)):
            damaged = damaged or f"its {key!r} is missing"
    if damaged:
        raise errors.InvalidArgument(f"{where} is a damaged registry ({damaged}); it was left untouched")


class Registry:
    """Operations on one registry document within one exclusive transaction.

    Args:
        doc: the document, mutated in place.
        now: the current time on the clock owners' ``expires`` are kept in.
        alive: tells whether an owner record's process still exists.
        fence_floor: the first fence of a lock name never seen before, minus one.
    """

    def __init__(self, doc: dict[str, Any], now: float, alive: Callable[[dict[str, Any]], bool], fence_floor: int) -> None:
        self.doc = doc
        self.now = now
        self._alive = alive
        self._fence_floor = fence_floor
        self.dirty = False
        self.next_expiry = float("inf")
        """The earliest ``expires`` this transaction wrote (or ``now``, if
        something it wrote needs a reap at once): a store whose owners never
        die unseen reaps only once the clock reaches it."""

    # -- liveness -------------------------------------------------------------

    def reap(self) -> float:
        """Remove owners whose process died or whose registration expired, and
        expired locks; return the earliest ``expires`` left (inf if none)."""
        earliest = float("inf")
        for token, owner in list(self.doc["owners"].items()):
            expires = owner.get("expires")
            if (expires is not None and expires <= self.now) or not self._alive(owner):
                self.remove_owner(token)
            elif expires is not None:
                earliest = min(earliest, expires)
        for name, lock in list(self.doc["locks"].items()):
            if lock["owner"] not in self.doc["owners"] or (lock["expires"] is not None and lock["expires"] <= self.now):
                del self.doc["locks"][name]
                self.dirty = True
            elif lock["expires"] is not None:
                earliest = min(earliest, lock["expires"])
        return earliest

    def _expires(self, ttl: float | None) -> float | None:
        """``now + ttl`` (None for no TTL), noted in ``next_expiry``."""
        if ttl is None:
            return None
        expires = self.now + ttl
        self.next_expiry = min(self.next_expiry, expires)
        return expires

    def register_owner(self, token: str, member: str, ttl: float | None) -> None:
        """Record a new session of this process."""
        self.doc["owners"][token] = {
            "member": member,
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "expires": self._expires(ttl),
        }
        self.dirty = True

    def refresh_owner(self, token: str, ttl: float | None) -> bool:
        """Extend a session's registration; False if it had already been reaped."""
        owner = self.doc["owners"].get(token)
        if owner is None:
            return False
        owner["expires"] = self._expires(ttl)
        self.dirty = True
        return True

    def remove_owner(self, token: str) -> None:
        """Forget a session: its memberships leave, its locks are freed."""
        if self.doc["owners"].pop(token, None) is not None:
            self.dirty = True
        for group, members in self.doc["groups"].items():
            for member, entry in list(members.items()):
                if entry["owner"] == token:
                    del members[member]
                    self._event(group, "leave", member)
        for name, lock in list(self.doc["locks"].items()):
            if lock["owner"] == token:
                del self.doc["locks"][name]
                self.dirty = True

    # -- events ---------------------------------------------------------------

    def _event(self, group: str, kind: str, member: str) -> None:
        self.doc["seq"] += 1
        events = self.doc["events"]
        events.append([self.doc["seq"], group, kind, member])
        if len(events) > EVENT_LOG_LENGTH:
            del events[: len(events) - EVENT_LOG_LENGTH]
        self.dirty = True

    @property
    def seq(self) -> int:
        """The number of the last event."""
        return int(self.doc["seq"])

    def events_since(self, seq: int) -> tuple[list[list[Any]], bool]:
        """Events after ``seq``, and whether some were already dropped from the log (a gap)."""
        events = self.doc["events"]
        if not events or seq >= self.doc["seq"]:
            return [], False
        first = events[0][0]
        if seq + 1 < first:
            return list(events), True
        return events[seq + 1 - first :], False

    # -- groups ---------------------------------------------------------------

    def _group(self, group: str, doing: str) -> dict[str, Any]:
        members = self.doc["groups"].get(group)
        if members is None:
            raise errors.GroupNotFound(f"cannot {doing} {group!r}: no such group")
        return members  # type: ignore[no-any-return]

    def create_group(self, group: str) -> None:
        if group in self.doc["groups"]:
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already")
        self.doc["groups"][group] = {}
        self.dirty = True

    def delete_group(self, group: str) -> None:
        members = self._group(group, "delete group")
        if members:
            raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has {len(members)} member(s)")
        del self.doc["groups"][group]
        self.doc["locks"].pop(RESERVED_LOCK_PREFIX + group, None)
        self.dirty = True

    def groups(self) -> frozenset[str]:
        return frozenset(self.doc["groups"])

    def group_exists(self, group: str) -> bool:
        return group in self.doc["groups"]

    def join(self, group: str, member: str, caps: str, token: str, create: bool) -> None:
        if create and group not in self.doc["groups"]:
            self.doc["groups"][group] = {}
        members = self._group(group, "join")
        if member in members:
            raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {member!r} is already a member")
        members[member] = {"caps": caps, "owner": token}
        self._event(group, "join", member)

    def _own_entry(self, group: str, member: str, token: str, doing: str) -> dict[str, Any]:
        members = self._group(group, doing)
        entry = members.get(member)
        if entry is None or entry["owner"] != token:
            raise errors.MemberNotJoined(f"cannot {doing} {group!r}: member {member!r} has not joined it")
        return entry  # type: ignore[no-any-return]

    def leave(self, group: str, member: str, token: str) -> None:
        self._own_entry(group, member, token, "leave")
        del self.doc["groups"][group][member]
        self._event(group, "leave", member)

    def members(self, group: str) -> frozenset[str]:
        return frozenset(self._group(group, "list the members of"))

    def capabilities(self, group: str, member: str) -> str:
        entry = self._group(group, "read capabilities in").get(member)
        if entry is None:
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return entry["caps"]  # type: ignore[no-any-return]

    def update_capabilities(self, group: str, member: str, caps: str, token: str) -> None:
        self._own_entry(group, member, token, "update capabilities in")["caps"] = caps
        self.dirty = True

    # -- locks ----------------------------------------------------------------

    def _held(self, name: str) -> dict[str, Any] | None:
        lock = self.doc["locks"].get(name)
        if lock is None:
            return None
        if lock["expires"] is not None and lock["expires"] <= self.now:
            return None
        return lock  # type: ignore[no-any-return]

    def try_acquire(self, name: str, token: str, member: str, ttl: float | None) -> int | None:
        """Take lock ``name`` for ``token`` if free; return the new fence or None."""
        if self._held(name) is not None:
            return None
        previous = self.doc["fences"].get(name)
        fence = (self._fence_floor if previous is None else int(previous)) + 1
        self.doc["fences"][name] = fence
        self.doc["locks"][name] = {"owner": token, "member": member, "fence": fence, "expires": self._expires(ttl)}
        self.dirty = True
        if token not in self.doc["owners"]:
            self.next_expiry = self.now  # a reaped session's grant: undone by the next reap
        if name.startswith(RESERVED_LOCK_PREFIX):
            self._event(name[len(RESERVED_LOCK_PREFIX) :], "leader", member)
        return fence

    def release(self, name: str, token: str, fence: int) -> bool:
        """Free the lock if ``token`` holds it with ``fence``."""
        lock = self._held(name)
        if lock is None or lock["owner"] != token or lock["fence"] != fence:
            return False
        del self.doc["locks"][name]
        self.dirty = True
        return True

    def refresh_locks(self, token: str, leases: list[tuple[str, int, float | None]]) -> set[tuple[str, int]]:
        """Extend every (name, fence, ttl) held by ``token``; return those no longer held."""
        lost = set()
        for name, fence, ttl in leases:
            lock = self._held(name)
            if lock is None or lock["owner"] != token or lock["fence"] != fence:
                lost.add((name, fence))
            elif ttl is not None:
                lock["expires"] = self._expires(ttl)
                self.dirty = True
        return lost

    def holder(self, name: str) -> str | None:
        lock = self._held(name)
        return None if lock is None else lock["member"]  # type: ignore[no-any-return]


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[19])


def process_alive(pid: int, start: int | None) -> bool:
    """True if ``pid`` runs and is the same process that registered (not a zombie, not a reuse)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return False
    return start is None or int(fields[19]) == start


def boot_id() -> str:
    """This boot's id: monotonic clocks and pids mean nothing across a reboot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"
