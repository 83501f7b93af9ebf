"""memcached://host:port: coordination through a memcached server (pymemcache).

memcached keeps keys with an expiry and offers ``add`` (store if absent),
``incr``, ``gets``/``cas`` and, since 1.6, the meta delete ``md <key> C<cas>``
(delete only if unchanged).  Everything here is built from those; memcached
has no notifications, so other sessions' changes are seen by polling
(``POLLS``), and nothing is durable: memcached may evict any key under memory
pressure and forgets everything when it restarts.  The mechanisms below are
chosen so that such a loss is noticed and reported, never silently ignored.

Keys (every key starts with ``<namespace>:``; a name that is not printable
ASCII without spaces, starts with ``#`` or would make the key longer than
memcached's 250 bytes is replaced by ``#`` + the SHA-1 of its UTF-8 bytes; the
real names live in the values)::

    <ns>:l:<lock>       the lock: "<session token>:<fence>:<ttl ms>:<member>", expiring
    <ns>:f:<lock>       the lock's fence counter (incr), never expiring
    <ns>:g:<group>      the group: JSON {"name", "epoch", "members": {member:
                        token}, "seq", "log": [[seq, kind, member], ...]}
    <ns>:m:#<sha1>      a member of a group (sha1 of "<group>\\0<member>"):
                        JSON {"caps", "token"}, expiring, refreshed by heartbeat
    <ns>:groups         JSON list of group names (for GetGroups; memcached's
                        1 MiB item limit caps it at a few thousand groups)
    <ns>:s:<token>      the session's own registration, expiring

Locks and fences.  ``Acquire`` reads the lock key with ``gets`` (held, and not
seen unchanged for its TTL: done, one round trip), takes the next fence with
``incr`` on the fence key, then ``add``s the lock key (or ``cas``es the expired
value) with the value above and an expiry.  A fence key that is missing
(first use, or memcached restarted or evicted it) is seeded with ``add`` of a
clock-derived floor -- microseconds since the epoch -- before the ``incr``, so
fences never go backwards as long as fewer than one fence per microsecond was
issued and the clients' clocks roughly agree.  Refresh is ``gets`` of every
held lock in one round trip, then a ``cas`` per lock that still holds this
session's exact value (``touch`` could not check ownership); a lock key that
vanished (expired, evicted, memcached restarted) or holds another value is
lost: ``LockLost``.  Release compares the value and deletes with ``md ...
C<cas>``, so a lock that changed hands in between is never deleted.

Expiry has one-second granularity, and memcached's clock ticks once a second:
a key stored with expiry N lives between N-1 and N seconds.  A TTL is therefore
rounded up to whole seconds, plus one, for memcached's own expiry -- the
backstop that frees a dead holder's lock when nobody waits for it.  Waiters do
not wait for it: the lock value carries the holder's TTL, every refresh
rewrites the value (a new cas unique), and a waiter that has seen the same cas
unique for a whole TTL on its own monotonic clock takes the lock with ``cas``
on it.  That is safe without clocks agreeing between hosts: the holder gives
up its lease a TTL (less a 5% drift margin) after it *sent* its last refresh,
and the waiter first saw that refresh after it was written.  A killed
holder's lock therefore goes to a waiter within its TTL plus a poll interval
or two.  A lock without a TTL carries the session TTL and is refreshed by the
heartbeat.

Groups.  A group is one JSON document updated by ``gets``/``cas`` loops; it
holds the member list and a log of the group's last 256 events (join, leave,
leader), written in the same ``cas`` as the change, so watchers see events in
the order they were applied even when several happen between two polls.  A
watcher that fell further behind than the log (or finds the group deleted and
re-created) resynchronises by diffing members and leader.  Liveness is the
member key: written with ``add`` (so two coordinators with one member id
cannot both join), it expires after ``ceil(session_ttl) + 1`` seconds unless
the heartbeat ``touch``es it.  A listed member whose key expired is dead:
reads filter it out, and the reader that finds it removes it from the
document with a leave event (watchers check every fifth poll).

Leaders.  The leader of ``g`` holds the lock ``__leader__/g``; the session
that takes it appends a ``leader`` event to the group's log.

Sessions.  A session registers ``<ns>:s:<token>`` (the coordinator's session
token, kept across reconnects) and refreshes it, its member keys and its
locks on every heartbeat.  If its registration or one of its member keys has
vanished, memcached lost its state: the heartbeat raises
``BackendUnavailable``, the session fails (``SessionLost``, ``LockLost``), and
the supervisor reconnects and restores it.  A session that fails while
memcached still answers (a bug, an injected failure) frees its locks as it
closes; one that cannot reach it frees them from its next connection (their
values carry the same token), unless they expired first.  Memberships stay:
the restored session reclaims them without anyone seeing it leave -- unless
they expired first, in which case watchers see it leave and join again.

Lock delay.  After memcached restarts, a holder from before the restart still
believes in its lease until its next refresh (at most its TTL), while a new
session may already be granted the lock (with a higher fence).  With
``lock_delay=<seconds>``, no lock is granted while the server has been up for
less than that: set it to your longest TTL if memcached may restart while
locks are held (Consul's lock-delay; off by default).

Characteristics: threads, processes and hosts; timeout-based, and with no
linearizability claim (``cas`` loops are atomic per key, but nothing spans
keys).

URL: ``memcached://host:port`` (default ``127.0.0.1:11211``).

=================  ==================================================  ============
option             meaning                                             default
=================  ==================================================  ============
``namespace``      prefix of every key ([A-Za-z0-9._-], 1-64 chars)    coordactors
``timeout``        seconds a request to memcached may take             2
``lock_delay``     seconds after a server (re)start with no grants     none
``session_ttl``    as everywhere; ``none`` is refused (see above)      10
=================  ==================================================  ============
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import time
import uuid
from typing import Any, Callable

from pymemcache.client.base import Client, _readline
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import NOT_BATCHED, Coalescing
from coordactors.backend_actors.base import SessionActor, fence_floor
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, optional_seconds, seconds

__all__ = ["MemcachedSession", "keys_for"]

DEFAULT_PORT = 11211
MAX_KEY_BYTES = 250
LOG_LENGTH = 256
"""Events kept in a group's document; a watcher further behind resynchronises."""
REAP_EVERY = 5
"""Watchers look for expired members every this many polls (every 0.25 s by default)."""
CAS_ATTEMPTS = 1000
"""A cas loop gives up after this many conflicting writers (it never has in practice)."""
RELATIVE_EXPIRY_LIMIT = 30 * 24 * 3600
"""memcached reads a larger expiry as a Unix time."""
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_EVENTS = {"join": MemberJoined, "leave": MemberLeft, "leader": LeaderElected}


class Keys:
    """The memcached keys of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.groups = f"{namespace}:groups"

    def _named(self, kind: str, name: str) -> str:
        prefix = f"{self.namespace}:{kind}:"
        if name.isascii() and name.isprintable() and " " not in name and not name.startswith("#"):
            if len(prefix) + len(name) <= MAX_KEY_BYTES:
                return prefix + name
        return prefix + "#" + hashlib.sha1(name.encode("utf-8")).hexdigest()

    def lock(self, name: str) -> str:
        return self._named("l", name)

    def fence(self, name: str) -> str:
        return self._named("f", name)

    def group(self, group: str) -> str:
        return self._named("g", group)

    def member(self, group: str, member: str) -> str:
        # Names hold no control characters, so "\0" separates the pair unambiguously.
        return f"{self.namespace}:m:#" + hashlib.sha1(f"{group}\0{member}".encode()).hexdigest()

    def session(self, token: str) -> str:
        return f"{self.namespace}:s:{token}"


def keys_for(url_or_namespace: str) -> Keys:
    """The keys a ``memcached://`` URL (or bare namespace) uses, for tests and tools."""
    if "://" in url_or_namespace:
        from coordactors.urls import parse_url

        return Keys(parse_url(url_or_namespace)[1].extra.get("namespace", "coordactors"))
    return Keys(url_or_namespace)


def _namespace(value: str, what: str) -> str:
    if not _NAMESPACE.fullmatch(value):
        raise errors.InvalidArgument(f"option '{what}' must be 1-64 characters of A-Z a-z 0-9 . _ - (got {value!r})")
    return value


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


# One table: client and socket errors -> ours, most specific first.
_ERRORS: tuple[tuple[type[BaseException], type[errors.CoordinationError], str], ...] = (
    (MemcacheUnexpectedCloseError, errors.BackendUnavailable, "{url} closed the connection"),
    (socket.timeout, errors.BackendUnavailable, "{url} did not answer in time ({exc})"),
    (OSError, errors.BackendUnavailable, "{url} is unreachable ({exc})"),
    (MemcacheServerError, errors.BackendUnavailable, "{url} reported an error: {exc}"),
    (MemcacheClientError, errors.BackendUnavailable, "{url} refused a request (a bug in coordactors?): {exc}"),
    (MemcacheError, errors.BackendUnavailable, "{url} answered something unexpected: {exc}"),
    (ValueError, errors.BackendUnavailable, "{url} holds a value coordactors did not write: {exc}"),
)


class _Connection:
    """A pymemcache client plus what was registered through it."""

    __slots__ = ("cas", "client", "grants_from", "groups", "held", "meta", "refresh_lines", "token")

    def __init__(self, client: Client, grants_from: float, meta: bool) -> None:
        self.client = client
        self.grants_from = grants_from
        self.meta = meta
        self.token = ""
        """The coordinator's session token (stable across reconnects)."""
        self.held: dict[str, int] = {}
        """Locks taken through this connection: name -> fence."""
        self.cas: dict[str, bytes] = {}
        """Held lock -> the cas unique of this connection's own write of it, while known (meta protocol)."""
        self.groups: set[str] = set()
        """Groups joined (or reclaimed) through this connection: their member keys are refreshed."""
        self.refresh_lines: dict[str, tuple[int, int, bytes, bytes]] = {}
        """Held lock -> (fence, expire, the refresh command around its cas unique): the same every heartbeat."""


class _View:
    """What a watcher last saw of a group."""

    __slots__ = ("cas", "epoch", "leader", "members", "seq")

    def __init__(self) -> None:
        self.cas: bytes | None = None
        self.epoch: str | None = None
        self.seq = 0
        self.members: set[str] = set()
        self.leader: str | None = None


class MemcachedSession(Coalescing, SessionActor):
    """Session of ``memcached://host:port``: see the module docstring.

    Acquires and releases queued together (many callers sharing the
    coordinator) take three round trips per batch on memcached 1.6+ (meta
    commands, pipelined): one ``gets`` of every wanted lock, one ``ma`` per
    free lock's fence counter, one ``ms`` (add) per free lock and one ``md``
    per release -- instead of three per acquire and one or two per release.
    """

    COALESCED = frozenset({Acquire, Release})

    CHARACTERISTICS = frozenset({C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS})
    DEFAULTS = {"session_ttl": 10.0}
    OPTIONS = {"namespace": _namespace, "timeout": seconds, "lock_delay": optional_seconds}
    POLLS = True

    conn: _Connection

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        if options.path not in ("", "/"):
            raise errors.InvalidArgument(f"{options.redacted!r}: a memcached URL has no path (memcached://host:port)")
        if options.session_ttl is None:
            raise errors.InvalidArgument(
                f"{options.redacted!r}: session_ttl=none is not possible on memcached, which can only tell a dead "
                "session from a live one by its keys expiring"
            )
        if options.session_ttl > RELATIVE_EXPIRY_LIMIT:
            raise errors.InvalidArgument(f"{options.redacted!r}: session_ttl must be at most 30 days")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys = Keys(self.options.extra.get("namespace", "coordactors"))
        self._views: dict[str, _View] = {}
        self._polls = 0
        self._sightings: dict[str, tuple[bytes, bytes, float]] = {}  # lock key -> (cas unique, value, first seen), see _expired
        self._unreleased: dict[str, int] = {}
        """Locks a broken connection could not free: freed by the next one."""

    # -- connection -------------------------------------------------------------

    def open(self) -> _Connection:
        """Executor thread: connect, and ask the version so a dead server fails here."""
        options = self.options
        client = Client(
            (options.host or "127.0.0.1", options.port or DEFAULT_PORT),
            connect_timeout=options.connect_timeout,
            timeout=options.extra.get("timeout", 2.0),
            no_delay=True,
            default_noreply=False,
        )
        try:
            version = client.version().decode("ascii", "replace")
            delay = options.extra.get("lock_delay")
            grants_from = 0.0
            if delay:
                # memcached 1.6 starts its uptime at 2 s and counts whole
                # seconds: it has been up for at least ``uptime - 2``.
                up_at_least = max(0.0, float(client.stats()[b"uptime"]) - 2.0)
                grants_from = time.monotonic() + max(0.0, delay - up_at_least)
        except BaseException:
            client.close()
            raise
        major, _, rest = version.partition(".")
        meta = (int(major), int(rest.partition(".")[0])) >= (1, 6) if major.isdigit() and rest[:1].isdigit() else False
        return _Connection(client, grants_from, meta)

    def on_connected(self) -> None:
        conn = self.conn
        conn.token = self.session_token
        # Views of groups still watched survive a reconnect: the first poll
        # then reports what changed while the session was down.
        self._views = {g: v for g, v in self._views.items() if g in self.watched_groups}
        conn.client.set(self.keys.session(conn.token), self.member_id.encode("utf-8"), expire=self._exptime(None))
        # Their values carry our (stable) token: free them rather than make
        # everyone wait until they expire.
        unreleased, self._unreleased = self._unreleased, {}
        for name, fence in unreleased.items():
            self._release(conn, name, fence)

    def close(self) -> None:
        """Free the locks still taken through this connection, then close it.

        By now the base has declared every lease lost (or released it), so
        whatever this connection still holds would only block others until it
        expires.  pymemcache drops its socket after any error: then memcached
        is unreachable and trying would only wait for timeouts, so the next
        connection frees them instead.  Memberships stay: the restored session
        (same token) reclaims them, or they expire.
        """
        conn = self.conn
        if conn is None:
            return
        try:
            if conn.client.sock is not None:
                for name, fence in list(conn.held.items()):
                    self._release(conn, name, fence)
        finally:
            self._unreleased.update(conn.held)
            conn.client.close()

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        for client_error, ours, template in _ERRORS:
            if isinstance(exc, client_error):
                return ours(template.format(url=self.url, exc=exc))
        return super().translate_error(exc)

    def _exptime(self, ttl: float | None) -> int:
        """memcached's expiry for a TTL: whole seconds, rounded up, plus the tick it may lose."""
        expiry = math.ceil(self._effective_ttl(ttl)) + 1
        return expiry if expiry <= RELATIVE_EXPIRY_LIMIT else int(time.time()) + expiry

    # -- group documents --------------------------------------------------------

    def _update(self, key: str, change: Callable[[Any], Any], what: str) -> Any:
        """A gets/cas loop on a JSON value: ``change(value or None)`` returns
        the new value (None: write nothing) and may raise.  A missing key is
        created with ``add``.  Returns the value written (or found)."""
        client = self.conn.client
        for _ in range(CAS_ATTEMPTS):
            raw, cas = client.gets(key)
            current = None if raw is None else json.loads(raw)
            new = change(current)
            if new is None:
                return current
            stored = client.add(key, _json(new), expire=0) if raw is None else client.cas(key, _json(new), cas, expire=0)
            if stored:
                return new
        raise errors.OperationTimedOut(f"gave up {what}: {CAS_ATTEMPTS} concurrent writers changed it first")

    @staticmethod
    def _new_group(group: str) -> dict[str, Any]:
        return {"name": group, "epoch": uuid.uuid4().hex, "members": {}, "seq": 0, "log": []}

    @staticmethod
    def _log(doc: dict[str, Any], kind: str, member: str) -> None:
        doc["seq"] += 1
        doc["log"].append([doc["seq"], kind, member])
        if len(doc["log"]) > LOG_LENGTH:
            del doc["log"][: len(doc["log"]) - LOG_LENGTH]

    def _index(self, group: str, present: bool) -> None:
        """Add ``group`` to (or remove it from) the list of groups."""

        def change(names: list[str] | None) -> list[str] | None:
            names = names or []
            if present:
                # Written even when listed, so that a concurrent removal's cas fails and looks again.
                return names if group in names else [*names, group]
            if group not in names or self.conn.client.get(self.keys.group(group)) is not None:
                return None  # not listed, or re-created meanwhile
            return [n for n in names if n != group]

        self._update(self.keys.groups, change, "updating the list of groups")

    def _read_group(self, group: str, doing: str) -> dict[str, Any]:
        raw = self.conn.client.get(self.keys.group(group))
        if raw is None:
            raise errors.GroupNotFound(f"cannot {doing} {group!r}: no such group")
        return json.loads(raw)

    def _alive(self, group: str, members: dict[str, str]) -> set[str]:
        """The listed members whose keys have not expired (one round trip)."""
        keys = {self.keys.member(group, m): m for m in members}
        return {keys[k] for k in self._existing(list(keys))}

    def _existing(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` exist, in one round trip: a meta get per key
        asking for nothing back (``HD`` or ``EN``), not their values --
        reading and parsing 1,000 members' values was most of a listing."""
        replies = self._pipeline([b"mg " + key.encode("ascii") for key in keys])
        wrong = next((reply[0] for reply in replies if reply[0] not in (b"HD", b"EN")), None)
        if wrong is not None:  # never take an error for a member gone
            raise MemcacheServerError(f"unexpected reply to mg: {wrong[:40]!r}")
        return {key for key, reply in zip(keys, replies) if reply[0] == b"HD"}

    def _reap(self, group: str, suspects: set[str]) -> None:
        """Remove the members whose keys expired, logging their leave.

        The keys are looked at again inside the cas loop, after reading the
        document: a member that rejoined since (same token: it is the same
        coordinator) either shows a live key, or rewrote the document, so the
        cas fails and the loop looks again.
        """

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                return None
            listed = {m: doc["members"][m] for m in suspects if m in doc["members"]}
            gone = sorted(set(listed) - self._alive(group, listed))
            if not gone:
                return None
            for member in gone:
                del doc["members"][member]
                self._log(doc, "leave", member)
            return doc

        self._update(self.keys.group(group), change, f"removing expired members of {group!r}")

    # -- groups -----------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        if not self.conn.client.add(self.keys.group(group), _json(self._new_group(group)), expire=0):
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already")
        self._index(group, True)

    def do_delete_group(self, group: str) -> None:
        client = self.conn.client
        key = self.keys.group(group)
        for _ in range(CAS_ATTEMPTS):
            raw, cas = client.gets(key)
            if raw is None:
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            alive = self._alive(group, json.loads(raw)["members"])
            if alive:
                raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has {len(alive)} member(s)")
            outcome = self._delete_if_unchanged(key, cas)
            if outcome is None:
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            if outcome:
                break
        else:
            raise errors.OperationTimedOut(f"gave up deleting {group!r}: {CAS_ATTEMPTS} concurrent writers changed it first")
        self._index(group, False)
        client.delete(self.keys.lock(RESERVED_LOCK_PREFIX + group))

    def _delete_if_unchanged(self, key: str, cas: bytes) -> bool | None:
        """Delete ``key`` if its cas is still ``cas``: True, False (changed) or None (gone)."""
        if not self.conn.meta:  # memcached < 1.6: no conditional delete; the window is one round trip
            return bool(self.conn.client.delete(key)) or None
        reply = self.conn.client.raw_command(_meta_delete_if(key, cas))
        if reply == b"HD":
            return True
        if reply == b"EX":
            return False
        if reply == b"NF":
            return None
        raise MemcacheServerError(f"unexpected reply to md: {reply[:40]!r}")

    def do_get_groups(self) -> frozenset[str]:
        raw = self.conn.client.get(self.keys.groups)
        names = json.loads(raw) if raw is not None else []
        if not names:
            return frozenset()
        keys = {self.keys.group(name): name for name in names}
        return frozenset(keys[k] for k in self.conn.client.get_many(list(keys)))

    def do_group_exists(self, group: str) -> bool:
        return self.conn.client.get(self.keys.group(group)) is not None

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        conn, client = self.conn, self.conn.client
        key, expiry = self.keys.member(group, self.member_id), self._exptime(None)
        already = errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")
        raw = client.get(self.keys.group(group))
        if raw is None and not create:
            raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
        # The member key first (add: one live holder per member id), then the
        # listing: whoever sees the listing can rely on the key.
        value = _json({"caps": capabilities_json, "token": conn.token})
        if not client.add(key, value, expire=expiry):
            if raw is not None and self.member_id in json.loads(raw)["members"]:
                raise already
            # A live key the group does not list is left over from a join
            # that died half-way: take it over.
            orphan, cas = client.gets(key)
            if not (client.add(key, value, expire=expiry) if orphan is None else client.cas(key, value, cas, expire=expiry)):
                raise already
        created = False

        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            nonlocal created
            created = doc is None
            if doc is None:
                if not create:
                    raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
                doc = self._new_group(group)
            listed = doc["members"].get(self.member_id)
            if listed is not None:
                # Listed, yet we hold the key: that listing's key had expired
                # (it died) -- unless another coordinator with our member id
                # took the key back since.
                if listed != conn.token and client.get(key) != value:
                    raise already
                self._log(doc, "leave", self.member_id)
            doc["members"][self.member_id] = conn.token
            self._log(doc, "join", self.member_id)
            return doc

        try:
            self._update(self.keys.group(group), change, f"joining {group!r}")
        except errors.CoordinationError:
            found, cas = client.gets(key)
            if found == value:
                self._delete_if_unchanged(key, cas)
            raise
        conn.groups.add(group)
        if created:
            self._index(group, True)

    def do_leave(self, group: str) -> None:
        conn = self.conn

        def change(doc: dict[str, Any] | None) -> dict[str, Any]:
            if doc is None:
                raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
            if doc["members"].get(self.member_id) != conn.token:
                raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")
            del doc["members"][self.member_id]
            self._log(doc, "leave", self.member_id)
            return doc

        self._update(self.keys.group(group), change, f"leaving {group!r}")
        conn.groups.discard(group)
        conn.client.delete(self.keys.member(group, self.member_id))

    def do_get_members(self, group: str) -> frozenset[str]:
        members = self._read_group(group, "list the members of")["members"]
        alive = self._alive(group, members)
        if len(alive) < len(members):
            self._reap(group, set(members) - alive)
        return frozenset(alive)

    def do_get_capabilities(self, group: str, member: str) -> str:
        group_key, member_key = self.keys.group(group), self.keys.member(group, member)
        found = self.conn.client.get_many([group_key, member_key])
        if group_key not in found:
            raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
        if member_key not in found or member not in json.loads(found[group_key])["members"]:
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return json.loads(found[member_key])["caps"]

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        # Also how a restored session reclaims a membership that outlived its
        # connection: the token is the coordinator's, so it is still ours.
        conn = self.conn
        listed = self._read_group(group, "update capabilities in")["members"].get(self.member_id)
        if listed != conn.token:
            raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")
        value = _json({"caps": capabilities_json, "token": conn.token})
        conn.client.set(self.keys.member(group, self.member_id), value, expire=self._exptime(None))
        conn.groups.add(group)

    # -- locks ------------------------------------------------------------------

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        conn, client = self.conn, self.conn.client
        if conn.grants_from and time.monotonic() < conn.grants_from:
            return None  # lock_delay after a server (re)start
        key = self.keys.lock(name)
        raw, cas = client.gets(key)
        if raw is not None and not self._expired(key, raw, cas):
            return None
        self._sightings.pop(key, None)
        fence = self._next_fence(name)
        value = self._lock_value(conn, fence, ttl)
        written = None
        if raw is None:
            stored, written = self._add(key, value, self._exptime(ttl))
        else:
            stored = client.cas(key, value, cas, expire=self._exptime(ttl))
        if not stored:
            return None  # someone else got in between (or the holder refreshed); the fence is skipped, never reused
        conn.held[name] = fence
        if written is not None:
            conn.cas[name] = written
        if name.startswith(RESERVED_LOCK_PREFIX):
            self._log_leader(name[len(RESERVED_LOCK_PREFIX) :])
        return fence

    # -- requests queued together ------------------------------------------------

    def batch_item(self, msg: Any, names: set[str]) -> Any:
        conn = self.conn
        if not conn.meta or (conn.grants_from and time.monotonic() < conn.grants_from):
            return NOT_BATCHED
        item = super().batch_item(msg, names)
        if isinstance(item, Lease) and (item.name not in conn.cas or conn.held.get(item.name) != item.fence):
            return NOT_BATCHED  # a release whose last write is not known here takes the usual look
        return item

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        conn, client = self.conn, self.conn.client
        sent_at = time.monotonic()
        acquires = [(call, self.keys.lock(call.message.name)) for call, lease in run if lease is None]
        releases = [(call, lease, conn.cas.pop(lease.name)) for call, lease in run if lease is not None]
        usual: list[Call] = []
        refused: list[Call] = []
        try:
            found = client.gets_many([key for _call, key in acquires]) if acquires else {}
            free = []
            for call, key in acquires:
                if key not in found:
                    free.append((call, key))
                elif self._expired(key, *found[key]):
                    usual.append(call)  # taking over a holder's abandoned lock: the usual way
                else:
                    refused.append(call)
            fences = self._pipeline([b"ma " + self.keys.fence(call.message.name).encode("ascii") + b" v" for call, _key in free])
            writes = []
            for (call, key), fence_reply in zip(free, fences):
                if fence_reply[0].startswith(b"VA"):
                    ttl = self.lease_ttl_of(call.message)
                    fence = int(fence_reply[1])
                    value = self._lock_value(conn, fence, ttl)
                    writes.append((call, key, fence, ttl, _meta_add(key, value, self._exptime(ttl))))
                else:
                    usual.append(call)  # a fence counter to seed first: the usual way
            replies = self._pipeline([command for *_rest, command in writes]
                                     + [_meta_delete_if(self.keys.lock(lease.name), written) for _call, lease, written in releases])
        except Exception:  # noqa: BLE001 - the usual path reports it, call by call
            for call, _item in run:
                self._serve(call)
            return
        for call in refused:
            self.settle_acquire(call, None, sent_at)
        for (call, key, fence, _ttl, _command), reply in zip(writes, replies):
            status, *flags = reply[0].split() or [b""]
            if status == b"HD":
                conn.held[call.message.name] = fence
                written = _returned_cas(flags)
                if written is not None:
                    conn.cas[call.message.name] = written
                self._sightings.pop(key, None)
                self.settle_acquire(call, fence, sent_at)
            else:  # NS: someone else got in between; the fence is skipped, never reused
                self.settle_acquire(call, None, sent_at)
        freed = []
        for (call, lease, _written), reply in zip(releases, replies[len(writes):]):
            if reply[0] == b"EX":  # written since: the usual look decides
                usual.append(call)
                continue
            conn.held.pop(lease.name, None)
            freed.append(lease.name)
            self.settle_release(call, lease, reply[0] == b"HD")
        for call in usual:
            self._serve(call)
        self.retry_freed(freed)

    def _pipeline(self, commands: list[bytes]) -> list[list[bytes]]:
        """Send meta ``commands`` in one write, read every reply (a status line,
        and a value after ``VA``) up to a closing no-op: one round trip."""
        if not commands:
            return []
        client = self.conn.client
        if client.sock is None:
            client._connect()  # noqa: SLF001
        try:
            client.sock.sendall(b"\r\n".join(commands) + b"\r\nmn\r\n")
            return _read_meta_replies(client.sock, len(commands))
        except Exception:
            client.close()
            raise

    def _expired(self, key: str, raw: bytes, cas: bytes | None) -> bool:
        """Whether the lock value ``raw`` has stood unchanged, as this session watched, for its holder's whole TTL.

        memcached's own expiry is whole seconds on a clock that ticks once a
        second (up to ``ceil(ttl) + 1`` s), so a waiter judges by itself: every
        refresh rewrites the value (a new cas unique), and a holder gives up
        its lease a TTL after *sending* its last refresh, so a value first seen
        here -- after it was written -- and still the same one TTL later
        belongs to a holder that has given up.  Only durations on this host's
        monotonic clock are compared: no clock agreement between hosts is needed.
        A value in another format is never judged expired (memcached's expiry frees it).
        """
        now = time.monotonic()
        parts = raw.split(b":", 3)
        seen = self._sightings.get(key)
        # The value too: a restarted memcached hands out cas uniques from 1 again.
        if seen is None or seen[0] != cas or seen[1] != raw:
            self._sightings[key] = (cas or b"", raw, now)
            if len(self._sightings) > 4096:  # waiters that gave up: forget the oldest sightings
                for stale in list(self._sightings)[:2048]:
                    del self._sightings[stale]
            return False
        if len(parts) != 4 or not parts[2].isdigit():
            return False
        return now - seen[2] >= int(parts[2]) / 1000

    def _effective_ttl(self, ttl: float | None) -> float:
        """A lease's TTL, or the session's for a lease without one."""
        wanted = ttl if ttl is not None else self.options.session_ttl
        assert wanted is not None  # check_location refuses session_ttl=none
        return wanted

    def _next_fence(self, name: str) -> int:
        client, key = self.conn.client, self.keys.fence(name)
        for _ in range(3):
            fence = client.incr(key, 1)
            if fence is not None:
                return int(fence)
            # Missing: never used, or memcached lost it.  Seed above every
            # fence issued before (add: only one seeder wins), then incr.
            client.add(key, str(fence_floor()).encode("ascii"), expire=0)
        raise errors.BackendUnavailable(f"{self.url} keeps losing the fence counter of {name!r} (is it out of memory?)")

    def _log_leader(self, group: str) -> None:
        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                return None
            self._log(doc, "leader", self.member_id)
            return doc

        self._update(self.keys.group(group), change, f"announcing the leader of {group!r}")

    def _lock_value(self, conn: _Connection, fence: int, ttl: float | None) -> bytes:
        """``token:fence:ttl in ms:member``: whose it is, and how long a waiter must see it unchanged (see ``_expired``)."""
        return f"{conn.token}:{fence}:{math.ceil(self._effective_ttl(ttl) * 1000)}:{self.member_id}".encode("utf-8")

    def do_release(self, name: str, fence: int) -> bool:
        return self._release(self.conn, name, fence)

    def _add(self, key: str, value: bytes, expire: int) -> tuple[bool, bytes | None]:
        """``add``: whether it stored, and (meta protocol) the cas unique of what it wrote."""
        client = self.conn.client
        if not self.conn.meta:
            return bool(client.add(key, value, expire=expire, noreply=False)), None
        reply = client.raw_command(_meta_add(key, value, expire))
        status, *flags = reply.split() or [b""]
        if status == b"HD":
            return True, _returned_cas(flags)
        if status == b"NS":
            return False, None
        raise MemcacheServerError(f"unexpected reply to ms: {reply[:40]!r}")

    def _release(self, conn: _Connection, name: str, fence: int) -> bool:
        key = self.keys.lock(name)
        written = conn.cas.pop(name, None)
        if written is not None and conn.held.get(name) == fence:
            # Unchanged since this connection wrote it: delete it in one round trip.
            reply = conn.client.raw_command(_meta_delete_if(key, written))
            if reply in (b"HD", b"NF"):
                del conn.held[name]
                return reply == b"HD"
            if reply != b"EX":
                raise MemcacheServerError(f"unexpected reply to md: {reply[:40]!r}")
            # Written since (a refresh, or another's takeover): look, as below.
        raw, cas = conn.client.gets(key)
        released = _owned_by(raw, conn, fence) and bool(self._delete_if_unchanged(key, cas))
        if conn.held.get(name) == fence:
            del conn.held[name]  # only now: if memcached did not answer, close() hands it to the next connection
        return released

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        conn = self.conn
        # A lease whose last write this connection knows the cas unique of is
        # rewritten by a pipelined meta compare-and-set: one round trip for
        # all of them.  The others (an older server, a lock taken over with
        # plain cas) are read first, then rewritten: two round trips.
        known: list[Lease] = []
        rest: list[Lease] = []
        for lease in leases:
            mine = conn.meta and lease.name in conn.cas and conn.held.get(lease.name) == lease.fence
            (known if mine else rest).append(lease)
        lost, unsure = self._refresh_known(known)
        lost |= self._refresh_read_first(unsure + rest)
        for name, fence in lost:
            if conn.held.get(name) == fence:
                del conn.held[name]
        return lost

    def _refresh_known(self, leases: list[Lease]) -> tuple[set[tuple[str, int]], list[Lease]]:
        """Rewrite ``leases`` if unchanged since this connection's own last write:
        (those found gone, those changed since -- for a closer look)."""
        if not leases:
            return set(), []
        conn = self.conn
        cas, lines, fresh = conn.cas, conn.refresh_lines, {}
        expiries: dict[float | None, int] = {}
        commands = []
        for lease in leases:
            # A lease's value, key and expiry stay the same from one heartbeat
            # to the next: only the cas unique changes.
            expire = expiries.get(lease.ttl)
            if expire is None:
                expire = expiries[lease.ttl] = self._exptime(lease.ttl)
            line = lines.get(lease.name)
            if line is None or line[0] != lease.fence or line[1] != expire:
                head, tail = _meta_set_if(self.keys.lock(lease.name), self._lock_value(conn, lease.fence, lease.ttl), expire)
                line = (lease.fence, expire, head, tail)
            fresh[lease.name] = line
            commands.append(line[2] + cas[lease.name] + line[3])
        conn.refresh_lines = fresh
        lost, unsure = set(), []
        for lease, reply in zip(leases, self._pipeline(commands)):
            status, *flags = reply[0].split() or [b""]
            if status == b"HD":
                written = _returned_cas(flags)
                if written is None:
                    cas.pop(lease.name, None)
                else:
                    cas[lease.name] = written
            elif status == b"NF":
                cas.pop(lease.name, None)
                lost.add((lease.name, lease.fence))
            else:  # EX: written since; the read decides
                unsure.append(lease)
        return lost, unsure

    def _refresh_read_first(self, leases: list[Lease]) -> set[tuple[str, int]]:
        """Read ``leases``' locks, rewrite those still this connection's: two round trips."""
        if not leases:
            return set()
        conn, client = self.conn, self.conn.client
        keys = {self.keys.lock(lease.name): lease for lease in leases}
        found = client.gets_many(list(keys))
        lost = set()
        by_expiry: dict[int, dict[str, tuple[bytes, bytes]]] = {}
        for key, lease in keys.items():
            value = self._lock_value(conn, lease.fence, lease.ttl)
            raw, cas = found.get(key, (None, None))
            if not _owned_by(raw, conn, lease.fence) or cas is None:
                lost.add((lease.name, lease.fence))
            else:
                by_expiry.setdefault(self._exptime(lease.ttl), {})[key] = (value, cas)
        for expire, items in by_expiry.items():
            for key, stored in _cas_many(client, items, expire).items():
                if not stored:
                    lease = keys[key]
                    lost.add((lease.name, lease.fence))
        for lease in leases:
            conn.cas.pop(lease.name, None)  # rewritten: a new cas unique, not known here
        return lost

    def do_lock_holder(self, name: str) -> str | None:
        raw = self.conn.client.get(self.keys.lock(name))
        parts = [] if raw is None else raw.decode("utf-8", "replace").split(":", 3)
        return parts[3] if len(parts) == 4 else None

    # -- liveness ---------------------------------------------------------------

    def do_heartbeat(self) -> None:
        conn, client = self.conn, self.conn.client
        expiry = self._exptime(None)
        if not client.touch(self.keys.session(conn.token), expiry):
            raise errors.BackendUnavailable(
                f"{self.url} lost the session of {self.member_id!r} (memcached restarted or evicted it)"
            )
        for group in sorted(conn.groups):
            if not client.touch(self.keys.member(group, self.member_id), expiry):
                raise errors.BackendUnavailable(
                    f"{self.url} lost the membership of {self.member_id!r} in {group!r} "
                    "(it expired, or memcached restarted or evicted it)"
                )

    def do_shutdown(self) -> None:
        # The base has released the leases and left the groups already.
        self.conn.client.delete(self.keys.session(self.conn.token))

    # -- events -----------------------------------------------------------------

    def do_watch(self, group: str) -> None:
        view = self._views.get(group)
        if view is not None:
            return  # restored after a reconnect: the next poll reports what changed meanwhile
        view = self._views[group] = _View()
        raw, cas = self.conn.client.gets(self.keys.group(group))
        if raw is not None:
            doc = json.loads(raw)
            view.cas, view.epoch, view.seq, view.members = cas, doc["epoch"], doc["seq"], set(doc["members"])
            view.leader = self.do_lock_holder(RESERVED_LOCK_PREFIX + group)

    def do_unwatch(self, group: str) -> None:
        self._views.pop(group, None)

    def do_poll(self) -> None:
        groups = sorted(self.watched_groups)
        if not groups:
            return
        self._polls += 1
        keys = {self.keys.group(g): g for g in groups}
        found = self.conn.client.gets_many(list(keys))
        docs = {}
        for key, group in keys.items():
            raw, cas = found.get(key, (None, None))
            doc = None if raw is None else json.loads(raw)
            docs[group] = doc
            self._catch_up(group, doc, cas)
        if self._polls % REAP_EVERY == 0:
            self._reap_watched(docs)

    def _catch_up(self, group: str, doc: dict[str, Any] | None, cas: bytes | None) -> None:
        """Emit what happened to ``group`` since its view, from the group's log (or a diff)."""
        view = self._views.setdefault(group, _View())
        if doc is None and view.epoch is None:
            return
        if doc is None or doc["epoch"] != view.epoch:
            # Deleted, or deleted and re-created: whoever we knew is gone.
            for member in sorted(view.members):
                self.emit(MemberLeft(group, member))
            self._views[group] = view = _View()
            if doc is None:
                return
            view.epoch = doc["epoch"]
        if cas == view.cas:
            return
        view.cas = cas
        log = doc["log"]
        first = log[0][0] if log else doc["seq"] + 1
        if view.seq + 1 < first:
            self._resync(group, view, doc)
        else:
            for seq, kind, member in log:
                if seq <= view.seq:
                    continue
                if kind == "join":
                    view.members.add(member)
                elif kind == "leave":
                    view.members.discard(member)
                else:
                    view.leader = member
                self.emit(_EVENTS[kind](group, member))
        view.seq = doc["seq"]

    def _resync(self, group: str, view: _View, doc: dict[str, Any]) -> None:
        """The log no longer reaches back to the view: report the difference instead."""
        members = set(doc["members"])
        leader = self.do_lock_holder(RESERVED_LOCK_PREFIX + group)
        for member in sorted(view.members - members):
            self.emit(MemberLeft(group, member))
        for member in sorted(members - view.members):
            self.emit(MemberJoined(group, member))
        if leader is not None and leader != view.leader:
            self.emit(LeaderElected(group, leader))
        view.members, view.leader = members, leader

    def _reap_watched(self, docs: dict[str, dict[str, Any] | None]) -> None:
        """Look up every listed member of the watched groups at once; remove the dead."""
        listed = {self.keys.member(g, m): (g, m) for g, doc in docs.items() if doc for m in doc["members"]}
        if not listed:
            return
        alive = self._existing(list(listed))
        dead: dict[str, set[str]] = {}
        for key, (group, member) in listed.items():
            if key not in alive:
                dead.setdefault(group, set()).add(member)
        for group, members in dead.items():
            self._reap(group, members)


def _meta_add(key: str, value: bytes, expire: int) -> bytes:
    """The meta command that adds ``key`` (mode E: only if absent) and asks for its cas unique back."""
    return b"ms %s %d ME c T%d\r\n%s" % (key.encode("ascii"), len(value), expire, value)


def _meta_set_if(key: str, value: bytes, expire: int) -> tuple[bytes, bytes]:
    """The meta command that sets ``key`` if its cas unique is still the one
    that goes between the two parts, and asks for the new one back."""
    return b"ms %s %d C" % (key.encode("ascii"), len(value)), b" c T%d\r\n%s" % (expire, value)


def _meta_delete_if(key: str, cas: bytes) -> bytes:
    """The meta command that deletes ``key`` if its cas unique is still ``cas``."""
    return b"md " + key.encode("ascii") + b" C" + cas


def _returned_cas(flags: list[bytes]) -> bytes | None:
    """The cas unique a meta reply's flags carry (``c<unique>``), if any."""
    if len(flags) == 1 and flags[0][:1] == b"c":
        return flags[0][1:]  # the usual reply: only the flag asked for came back
    return next((flag[1:] for flag in flags if flag.startswith(b"c")), None)


def _read_meta_replies(sock: socket.socket, count: int) -> list[list[bytes]]:
    """Read ``count`` meta replies (``[status]``, or ``[status, value]`` after
    ``VA``) and the ``MN`` that closes them.  Parsed as they arrive: pymemcache's
    ``raw_command`` drops a reply longer than one read."""
    buf, pos, replies = b"", 0, []
    while True:
        while (end := buf.find(b"\r\n", pos)) >= 0:
            line = buf[pos:end]
            if line.startswith(b"VA "):
                size = int(line.split()[1])
                if len(buf) < end + 2 + size + 2:
                    break  # the value is still on its way
                replies.append([line, buf[end + 2:end + 2 + size]])
                pos = end + 2 + size + 2
                continue
            pos = end + 2
            if len(replies) == count:
                if line != b"MN":
                    raise MemcacheServerError(f"memcached answered more than the {count} pipelined commands: {line[:40]!r}")
                return replies
            replies.append([line])
        chunk = sock.recv(65536)
        if not chunk:
            raise MemcacheUnexpectedCloseError()
        buf, pos = buf[pos:] + chunk, 0


def _owned_by(raw: bytes | None, conn: _Connection, fence: int) -> bool:
    """Whether the lock value ``raw`` is this connection's grant with ``fence`` (whatever TTL it carries)."""
    return raw is not None and raw.startswith(f"{conn.token}:{fence}:".encode())


def _cas_many(client: Client, items: dict[str, tuple[bytes, bytes]], expire: int) -> dict[str, bool]:
    """``cas`` of many keys, each with its own token, written in one go and
    answered in order (pymemcache's ``cas`` takes one key per round trip).
    True where stored; False where the token no longer matched or the key is gone."""
    if not items:
        return {}
    expire_bytes = str(int(expire)).encode()
    commands, keys = [], []
    for key, (value, cas) in items.items():
        keys.append(key)
        checked = client.check_key(key, client.key_prefix)
        cas_bytes = cas if isinstance(cas, bytes) else str(cas).encode()
        commands.append(b"cas " + checked + b" 0 " + expire_bytes + b" " + str(len(value)).encode() + b" " + cas_bytes + b"\r\n" + value + b"\r\n")
    if client.sock is None:
        client._connect()  # noqa: SLF001
    try:
        client.sock.sendall(b"".join(commands))
        results: dict[str, bool] = {}
        buf = b""
        for key in keys:
            buf, line = _readline(client.sock, buf)
            if line == b"STORED":
                results[key] = True
            elif line in (b"EXISTS", b"NOT_FOUND"):
                results[key] = False
            else:
                client._raise_errors(line, b"cas")  # noqa: SLF001
                raise MemcacheUnknownError(line[:32])
        return results
    except Exception:
        client.close()
        raise
