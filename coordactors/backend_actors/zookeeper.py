"""zookeeper:// (alias kazoo://): coordination through Apache ZooKeeper (kazoo).

URL: ``zookeeper://[user:password@]host[:port][,host:port...][/chroot][?options]``
(port 2181 by default; several hosts are handed to kazoo, which picks one and
fails over; ``user:password`` is sent as ``digest`` authentication).  Options,
besides the common ones:

=============  ==============================================================
``namespace``  the znode under the chroot holding everything (default
               ``coordactors``); give each application or test its own
=============  ==============================================================

``session_ttl`` is the ZooKeeper session timeout (default 10 s; the server
clamps it to its ``minSessionTimeout``..``maxSessionTimeout``, 2 to 20 ticks
unless configured).  It cannot be ``none``, and ``lease_ttl`` is not
supported: a lock lives exactly as long as the session that holds it.

Layout, under ``<chroot>/<namespace>``::

    groups/<g>                        persistent: the group
    groups/<g>/m-<member>             ephemeral: a membership; data = capabilities JSON
    groups/<g>/ev-<kind>-<member>-N   persistent sequential: the group's event log
    locks/<name>                      persistent, NEVER deleted: its child counter makes fences
    locks/<name>/<token>-<conn>__lock__N   ephemeral sequential: a claim; data = member id

Names are arbitrary unicode (up to 256 UTF-8 bytes, '/', '.' and '..'
included), so each becomes ONE znode name by percent-encoding: nothing is
kept but ASCII letters, digits, ``_``, ``-`` and ``~`` (``.`` too is escaped,
so neither ``.`` nor ``..`` can reach a path).  See :func:`encode_name`.

Mechanisms:

* lock (kazoo's lock recipe, without queueing in ZooKeeper): create an
  ephemeral sequential claim; the lowest claim holds the lock.  A claim that
  is not the lowest is deleted at once -- waiting is the session actor's job,
  not ZooKeeper's -- and an ``exists`` watch on the holder's claim wakes the
  waiters when it goes.  **The fence is the claim's sequence number**:
  ZooKeeper's per-parent counter, persisted and replicated with the tree, so
  it increases across holders, sessions and server restarts.
* groups: a membership is an ephemeral znode named after the member, so a
  second join of the same member id fails atomically (MemberAlreadyJoined)
  and a member whose session ends leaves by itself.
* events: every join and leave writes an entry in the group's event log in
  the same transaction (``multi``) as the membership, and every new leader
  writes one when it takes the leader lock.  A watcher keeps a child watch on
  the group and reads the log on each change, in sequence order, so it sees
  every change even when several happen between two reads -- a diff of
  member lists alone would miss a member that joined and left in between.
  A membership that ended without an entry (its session closed or expired)
  shows up as a member missing from the list read with the log, and is
  reported as MemberLeft.  Writers keep the log short (``EVENTS_KEPT``).

Connection states (kazoo's ``KazooState``) and what a holder can rely on:

``CONNECTED``
    The session lives: every lease and membership of this session stands
    until it is released or left, or the session ends.
``SUSPENDED``
    The connection dropped; kazoo reconnects, to any server of the URL.  The
    session lives on at the servers until its timeout, with its ephemeral
    znodes, so the coordinator holds on too: requests wait (up to their
    timeout), leases stand until their local expiry (below) and memberships
    and watches stay.  Back on the same session (a server died and the
    client moved to another), nothing was lost: no event is emitted, the
    leases are refreshed, watched groups are re-read for what happened
    meanwhile.  If the local expiry comes first, each lease gets
    ``LockLost`` and the session fails as below.
``LOST``
    The session expired or was closed, and its ephemeral znodes are gone:
    every lease gets ``LockLost``, the coordinator emits ``SessionLost``, and
    the supervisor reconnects with a NEW session, restores memberships,
    campaigns and watches, and emits ``SessionRestored``.  The new session
    takes over the old one's memberships and deletes its claims (it knows
    the old session id and the claims' prefix); whatever it misses expires
    with the old session.

A holder's view of its leases also expires on its own clock, ``session_ttl``
after the last heartbeat round trip (minus a margin), so a stalled process
gives up before the server can expire its session and grant the lock again.
That holds only if the server grants the timeout asked for: keep
``session_ttl`` within the server's ``maxSessionTimeout`` (20 ticks, 40 s, by
default), or the server expires sessions sooner than holders give up.  (A
timeout raised to ``minSessionTimeout`` errs on the safe side.)  kazoo drops
a connection that stays silent for two thirds of the negotiated timeout, and
no request waits longer than ``session_ttl``, so the session actor is never
blocked for long by a server that stopped answering.

znodes are created with kazoo's default ACL (open): fence applications off
from each other with a chroot and the operator's ACLs, not with coordactors.
"""

from __future__ import annotations

import collections
import functools
import logging
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import kazoo.exceptions as kx  # type: ignore[import-untyped]
from kazoo.client import KazooClient  # type: ignore[import-untyped]
from kazoo.handlers.threading import KazooTimeoutError  # type: ignore[import-untyped]
from kazoo.protocol.serialization import GetChildren  # type: ignore[import-untyped]
from kazoo.protocol.states import EventType, KazooState  # type: ignore[import-untyped]
from kazoo.retry import KazooRetry  # type: ignore[import-untyped]

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import Coalescing
from coordactors.backend_actors._kazoo_handler import PollingHandler
from coordactors.backend_actors._endpoints import url_hosts
from coordactors.backend_actors.base import _PENDING, CONNECTED, SessionActor
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, text

logger = logging.getLogger(__name__)

__all__ = ["ZooKeeperSession", "decode_name", "encode_name", "kazoo_hosts"]

DEFAULT_PORT = 2181
EVENTS_KEPT = 64
"""Entries a group's event log keeps; a watcher further behind still gets the membership right (by diff).
Every listing of the group's members reads them too: 256 made a get_members of 1,000 members 15% slower."""
TRIM_EVERY = 32
"""A session trims a group's log after every this many entries it wrote there."""
CHECKS_PER_MULTI = 256
"""Claims a heartbeat checks in one multi (far below ZooKeeper's 1 MB request limit)."""
LOCK_MARK = "__lock__"
"""Between a claim's owner prefix and its sequence number, as in kazoo's (and Curator's) lock recipe."""
MEMBER, EVENT = "m-", "ev-"
SEQUENCE_DIGITS = 10
_KINDS = {"join": MemberJoined, "leave": MemberLeft, "leader": LeaderElected}


# -- names and locations --------------------------------------------------------


def encode_name(name: str) -> str:
    """``name`` as one znode name: percent-encoded UTF-8, keeping only ASCII
    letters, digits, ``_``, ``-`` and ``~`` ('.' is escaped too: no '.' or '..')."""
    return urllib.parse.quote(name, safe="").replace(".", "%2E")


def decode_name(node: str) -> str:
    """The name that :func:`encode_name` turned into ``node``."""
    return urllib.parse.unquote(node)


def decode_names(nodes: list[str]) -> frozenset[str]:
    """:func:`decode_name` of each node; names with nothing escaped (the
    usual case, checked at once for all) are taken as they are."""
    if "%" not in "".join(nodes):
        return frozenset(nodes)
    return frozenset(map(urllib.parse.unquote, nodes))


_INT = struct.Struct(">i").unpack_from
_M, _DASH = MEMBER.encode("ascii")


def member_nodes(buffer: bytes, offset: int) -> list[str]:
    """The member nodes (prefix removed) of a ZooKeeper GetChildren reply.

    kazoo decodes every child into a str of its own (a call and a UTF-8
    decode each) before the members are picked out and their prefix cut:
    ~450 µs for a group of 1,000, a third of a listing's whole time.  Here
    the members are picked out of the reply's bytes and decoded in one go
    (ZooKeeper allows no control characters in a node name, so a newline
    separates them safely): ~240 µs.
    """
    read_int, m, dash = _INT, _M, _DASH  # locals: this loop runs once per child
    (count,) = read_int(buffer, offset)
    offset += 4
    nodes: list[bytes] = []
    append = nodes.append
    for _ in range(count):
        (length,) = read_int(buffer, offset)  # never negative: ZooKeeper sends no null names
        start = offset + 4
        offset = start + length
        if length > 1 and buffer[start] == m and buffer[start + 1] == dash:  # MEMBER, compared bytewise: the cheapest test
            append(buffer[start + 2 : offset])
    if not nodes:
        return []
    return b"\n".join(nodes).decode("utf-8").split("\n")


class _ListMembers(GetChildren):  # type: ignore[misc]
    """kazoo's GetChildren request, its reply read by :func:`member_nodes`."""

    __slots__ = ()

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> list[str]:
        """The member nodes in the reply."""
        return member_nodes(bytes(buffer), offset)


def kazoo_hosts(options: SessionOptions) -> str:
    """The URL's hosts as kazoo's ``host:port,host:port`` (port 2181 by default)."""
    return ",".join(f"{host}:{port}" for host, port in url_hosts(options, DEFAULT_PORT))


def _path_segments(value: str, what: str, shown: str) -> list[str]:
    segments = [s for s in value.strip("/").split("/")]
    if any(s in ("", ".", "..") for s in segments) or any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise errors.InvalidArgument(f"{what} {value!r} in {shown!r} must be znode names separated by '/' (no empty, '.' or '..' parts)")
    return segments


def _sequence(child: str) -> int:
    return int(child[-SEQUENCE_DIGITS:])


def _is_claim(child: str) -> bool:
    return LOCK_MARK in child and child[-SEQUENCE_DIGITS:].isdigit()


def _parse_event(child: str) -> tuple[int, str, str] | None:
    """(sequence, kind, member) of an event-log entry ``ev-<kind>-<member>-N``."""
    if not child.startswith(EVENT) or not child[-SEQUENCE_DIGITS:].isdigit():
        return None
    kind, _, member = child[len(EVENT) : -SEQUENCE_DIGITS - 1].partition("-")
    if kind not in _KINDS:
        return None
    return _sequence(child), kind, decode_name(member)


def _stop_client(client: KazooClient) -> None:
    """Stop and close a kazoo client, joining its threads; never raises."""
    try:
        client.stop()
    except Exception:  # a broken connection may refuse a polite close
        logger.debug("stopping a kazoo client failed", exc_info=True)
    try:
        client.close()
    except Exception:
        logger.debug("closing a kazoo client failed", exc_info=True)


# -- the connection -----------------------------------------------------------------


class _Connection:
    """One kazoo client (one ZooKeeper session) and what this session did on it.

    ``broken`` (the session is LOST) and ``suspended`` (the connection
    dropped) are set by kazoo's connection thread; everything else belongs
    to the actor thread.
    """

    __slots__ = ("broken", "client", "closing", "group_watchers", "held", "holders", "lock_watchers", "prefix", "queued",
                 "session_id", "suspended", "uncertain")

    def __init__(self, client: KazooClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.session_id: int | None = None
        self.broken: str | None = None
        self.suspended = False
        self.closing = False
        self.held: set[str] = set()
        """Paths of the claims this session holds."""
        self.uncertain: set[str] = set()
        """Lock directories where a claim's create got no reply: it may exist."""
        self.group_watchers: dict[str, Callable[[Any], None]] = {}
        self.lock_watchers: dict[str, Callable[[Any], None]] = {}
        self.holders: dict[str, str] = {}
        """Lock name -> the holder's claim found by a try nobody here waited on (not watched yet)."""
        self.queued: set[str] = set()


class _InMulti:
    """One operation's reply out of a multi that carried several queued
    requests' operations (the ``get`` of a kazoo async result).  If another
    operation failed, ZooKeeper applied none of them: this one is then sent
    on its own (``alone``, once), as it would have been without the multi."""

    __slots__ = ("alone", "index", "multi", "sent_alone")

    def __init__(self, multi: Any, index: int, alone: Callable[[], Any]) -> None:
        self.multi = multi
        self.index = index
        self.alone = alone
        self.sent_alone: Any = None

    def get(self, timeout: float | None = None) -> Any:
        """The operation's result; its error raised."""
        if self.sent_alone is not None:
            return self.sent_alone.get(timeout=timeout)
        result = self.multi.get(timeout=timeout)[self.index]
        if isinstance(result, (kx.RolledBackError, kx.RuntimeInconsistency)):
            self.sent_alone = self.alone()
            return self.sent_alone.get(timeout=timeout)
        if isinstance(result, Exception):
            raise result
        return result


class _GroupLog:
    """How far a watcher has read a group's event log, and the members it has reported."""

    __slots__ = ("czxid", "last_seq", "members")

    def __init__(self) -> None:
        self.czxid: int | None = None
        """The group znode's creation zxid: a re-created group starts a new log."""
        self.last_seq = -1
        self.members: set[str] = set()


# One table from kazoo's exceptions to ours, most specific first.  Errors with
# a meaning in context (NoNode on a join = GroupNotFound) are raised by the
# operations themselves; what reaches this table is unexpected.
_TRANSLATIONS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], type[errors.CoordinationError], str], ...] = (
    (kx.ConnectionClosedError, errors.BackendUnavailable, "the connection to {url} is closed"),
    (kx.SessionExpiredError, errors.BackendUnavailable, "the ZooKeeper session on {url} expired"),
    (kx.SessionMovedError, errors.BackendUnavailable, "the ZooKeeper session on {url} moved to another server"),
    (kx.ConnectionLoss, errors.ConnectionSuspended, "lost the connection to {url}; the session is suspended while the client reconnects"),
    ((KazooTimeoutError, kx.OperationTimeoutError), errors.BackendUnavailable, "{url} did not answer in time"),
    (kx.AuthFailedError, errors.BackendUnavailable, "{url} refused the credentials (authentication failed)"),
    (kx.NoAuthError, errors.BackendUnavailable, "{url} refused access to a znode under {root} (its ACL does not admit this client)"),
    (kx.NoNodeError, errors.BackendUnavailable, "a znode under {root} on {url} vanished (removed from outside?); reconnecting recreates the namespace"),
    ((kx.NodeExistsError, kx.NotEmptyError, kx.BadVersionError), errors.InvalidArgument,
     "the znodes under {root} on {url} are not laid out as coordactors lays them out; they were left untouched"),
    ((kx.ZookeeperError, kx.KazooException), errors.BackendUnavailable, "{url} failed"),
    (OSError, errors.BackendUnavailable, "{url} is unreachable"),
)


class ZooKeeperSession(Coalescing, SessionActor):
    """Session of ``zookeeper://`` and ``kazoo://``: one ZooKeeper session via kazoo."""

    CHARACTERISTICS = frozenset(
        {C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS,
         C.LINEARIZABLE, C.SEQUENTIAL, C.CAUSAL, C.SAME_VIEW_UNDER_PARTITIONS}
    )
    DEFAULTS = {"session_ttl": 10.0}
    OPTIONS = {"namespace": text}
    LEASE_TTL = False
    COALESCED = frozenset({Acquire, Release})

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        shown = options.redacted
        if not options.host:
            raise errors.InvalidArgument(f"{options.scheme}:// needs a host: {options.scheme}://host:port[,host:port...][/chroot] (got {shown!r})")
        kazoo_hosts(options)
        if options.path.strip("/"):
            _path_segments(options.path, "the chroot", shown)
        namespace = options.extra.get("namespace", "coordactors")
        _path_segments(namespace, "option 'namespace'", shown)
        if not options.path.strip("/") and namespace.strip("/").split("/")[0] == "zookeeper":
            raise errors.InvalidArgument(f"option 'namespace' must not be under /zookeeper, ZooKeeper's own znode (got {shown!r})")
        if options.session_ttl is None:
            raise errors.InvalidArgument(f"option 'session_ttl' cannot be none on {options.scheme}://: a ZooKeeper session always has a timeout")
        if options.lease_ttl is not None:
            raise errors.NotSupported(
                f"option 'lease_ttl' is not supported on {options.scheme}://: a lock lives exactly as long as the "
                "ZooKeeper session that holds it (see session_ttl)"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chroot = "/" + self.options.path.strip("/") if self.options.path.strip("/") else ""
        namespace = self.options.extra.get("namespace", "coordactors").strip("/")
        self._root = f"{chroot}/{namespace}"
        # Claims are named <token>-<connection>__lock__N: the token says "this
        # coordinator" across reconnects (and actor replacements), the
        # connection part says which session made it.  As kazoo's lock recipe
        # does (crediting Curator), this finds a claim whose create got no
        # reply -- here so that the next session can delete it.
        self._token: str = getattr(self, "session_token", None) or uuid.uuid4().hex
        self._op_timeout = max(float(self.options.session_ttl or 10.0), 1.0)
        self._old_sessions: collections.deque[int] = collections.deque(maxlen=64)
        self._stale_claims: set[str] = set()
        self._stale_dirs: set[str] = set()
        self._mine: set[str] = set()
        self._prefetched: dict[tuple[str, ...], Any] = {}  # see serve_batch
        self._logs: dict[str, _GroupLog] = {}
        self._writes: collections.Counter[str] = collections.Counter()

    # -- connection -------------------------------------------------------------

    def open(self) -> _Connection:
        """Executor thread: start a kazoo client (a new session) and make the namespace."""
        options = self.options
        auth = [("digest", f"{options.username}:{options.password or ''}")] if options.username else None
        client = KazooClient(
            hosts=kazoo_hosts(options),
            timeout=float(options.session_ttl or 10.0),
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0),
            auth_data=auth,
            handler=PollingHandler(),
        )
        client.start(timeout=options.connect_timeout)  # stops and closes the client itself on failure
        conn = _Connection(client, f"{self._token}-{uuid.uuid4().hex[:8]}")
        try:
            client.add_listener(lambda state: self._on_state(conn, state))
            for path in (f"{self._root}/groups", f"{self._root}/locks"):
                client.ensure_path(path)
            conn.session_id = client.client_id[0]
            if client.state != KazooState.CONNECTED:
                raise errors.BackendUnavailable(f"the connection to {self.url} dropped while connecting")
        except BaseException:
            _stop_client(client)
            raise
        return conn

    def _on_state(self, conn: _Connection, state: str) -> bool:
        """kazoo's connection thread: LOST fails our session, SUSPENDED suspends it,
        CONNECTED after SUSPENDED resumes it."""
        if conn.closing or conn.broken is not None:
            return False
        if state == KazooState.LOST:
            conn.broken = f"the ZooKeeper session on {self.url} was lost (expired or closed): its locks and memberships are gone"
            self.run_on_actor(self._connection_broke, conn)
        elif state == KazooState.SUSPENDED:
            conn.suspended = True
            self.run_on_actor(self._connection_suspended, conn)
        elif conn.suspended:
            conn.suspended = False
            self.run_on_actor(self._connection_resumed, conn)
        return False

    def _connection_broke(self, conn: _Connection) -> None:
        if conn is self.conn:
            self.fail(str(conn.broken))

    def _connection_suspended(self, conn: _Connection) -> None:
        if conn is self.conn:
            self.suspend(f"lost the connection to {self.url}; reconnecting within the session timeout")

    def _connection_resumed(self, conn: _Connection) -> None:
        if conn is self.conn and not conn.suspended:
            self.resume()

    def on_resumed(self) -> None:
        """Actor thread, back on the same session: delete claims whose create
        got no reply, and re-read watched groups for what happened meanwhile."""
        conn = self.conn
        uncertain, conn.uncertain = conn.uncertain, set()
        mine = conn.prefix + LOCK_MARK
        for directory in uncertain:
            try:
                children = self._get_children(directory)
            except kx.NoNodeError:
                continue
            for child in children:
                path = f"{directory}/{child}"
                if child.startswith(mine) and path not in conn.held:
                    self._client().delete_async(path)
        for group, log in list(self._logs.items()):
            self._read_log(group, log)

    def on_connected(self) -> None:
        """Actor thread: forget the last session's view; delete what it left behind."""
        self._mine = set()
        client = self.conn.client
        stale, self._stale_claims = self._stale_claims, set()
        for path in stale:
            client.delete_async(path)  # in order before anything else this session does
        dirs, self._stale_dirs = self._stale_dirs, set()
        for directory in dirs:
            try:
                self._drop_stale_claims(directory, self._get_children(directory))
            except kx.NoNodeError:
                pass

    def close(self) -> None:
        """Actor thread: end the session.  A live connection is closed at once
        (its ephemeral znodes vanish with it); a broken one is closed by a
        short-lived thread, as kazoo may wait for its connection loop."""
        conn = self.conn
        if conn is None or conn.closing:
            return
        conn.closing = True
        if conn.session_id is not None:
            self._old_sessions.append(conn.session_id)
        # If the session outlives this connection at the server, the next one
        # deletes its claims (those it held, and any whose create got no reply).
        self._stale_claims |= conn.held
        self._stale_dirs |= conn.uncertain
        if conn.broken is None and conn.client.connected:
            _stop_client(conn.client)
        else:
            threading.Thread(target=_stop_client, args=(conn.client,), name=f"ZooKeeperClose[{self.member_id}]", daemon=True).start()

    # -- queued lock requests, their round trips in flight together -----------------------

    def serve_batch(self, calls: list[Call]) -> None:
        """Start the round trips of the queued plain acquires and releases at
        once (their creates in one multi, their deletes in another, the
        listings of the locks' claims in flight together on kazoo's
        connection), then serve every call the usual way, in order: each
        finds its replies already on their way.
        A claim created here that no call took up (the session failed
        meanwhile) is deleted, or left to the next connection to clear."""
        acquires: list[str] = []
        releases: list[Lease] = []
        names: set[str] = set()
        for call in calls:
            msg = call.message
            if type(msg) is Acquire and self.batchable_acquire(msg, names):
                acquires.append(msg.name)
            elif type(msg) is Release and self.batchable_release(msg, names):
                releases.append(self._leases[msg.name])
            else:
                continue
            names.add(msg.name)
        if len(acquires) + len(releases) > 1 and self.state is CONNECTED:
            self._prefetch(acquires, releases)
        try:
            for call in calls:
                self._serve(call)
        finally:
            self._drop_prefetched()

    def _prefetch(self, acquires: list[str], releases: list[Lease]) -> None:
        try:
            client = self._client()
        except errors.CoordinationError:
            return  # the usual path meets the same error, call by call
        data = self.member_id.encode("utf-8")
        deletes = self._in_one_multi(client, {lease.name: self._claim_path(lease.name, lease.fence) for lease in releases},
                                     lambda txn, path: txn.delete(path), client.delete_async)
        for lease in releases:
            self._prefetched[("delete", lease.name, str(lease.fence))] = deletes[lease.name]
        claims = {name: f"{self._lock_dir(name)}/{self.conn.prefix}{LOCK_MARK}" for name in acquires}
        creates = self._in_one_multi(client, claims, lambda txn, path: txn.create(path, data, ephemeral=True, sequence=True),
                                     lambda path: client.create_async(path, data, ephemeral=True, sequence=True))
        for name, created in creates.items():
            self._prefetched[("create", name)] = created
            try:
                self._wait(created)
            except Exception:  # noqa: BLE001 - _try_claim meets it again and handles it
                continue
            self._prefetched[("children", name)] = client.get_children_async(self._lock_dir(name))

    @staticmethod
    def _in_one_multi(client: KazooClient, paths: dict[str, str], add: Callable[[Any, str], object],
                      alone: Callable[[str], Any]) -> dict[str, Any]:
        """Start one operation per name on its path (``add`` puts it in a
        multi, ``alone`` sends it by itself): two or more go in one multi, a
        round trip and a wake of kazoo's connection thread instead of one each."""
        if len(paths) < 2:
            return {name: alone(path) for name, path in paths.items()}
        txn = client.transaction()
        for path in paths.values():
            add(txn, path)
        multi = txn.commit_async()
        return {name: _InMulti(multi, index, functools.partial(alone, path)) for index, (name, path) in enumerate(paths.items())}

    def _drop_prefetched(self) -> None:
        """Forget what no call took up; delete claims created for calls that never used them."""
        left, self._prefetched = self._prefetched, {}
        for key, result in left.items():
            if key[0] != "create":
                continue
            directory = self._lock_dir(key[1])
            try:
                path = self._wait(result)
            except Exception:  # noqa: BLE001
                if self.conn is not None:
                    self.conn.uncertain.add(directory)
                continue
            try:
                self._delete(path)
            except Exception:  # noqa: BLE001
                if self.conn is not None:
                    self.conn.uncertain.add(directory)

    def _prefetched_or(self, key: tuple[str, ...], start: Callable[[], Any]) -> Any:
        """The reply of a round trip ``serve_batch`` started, else of one started now."""
        started = self._prefetched.pop(key, None)
        return self._wait(started if started is not None else start())

    # -- one round trip each ---------------------------------------------------------

    def _client(self) -> KazooClient:
        conn = self.conn
        if conn is None:
            raise errors.BackendUnavailable(f"no connection to {self.url}")
        if conn.broken is not None or not conn.client.connected:
            # kazoo would queue the request until it reconnects: fail now.
            # (``connected`` drops before kazoo fails the requests in flight
            # and long before it tells the listener.)
            if conn.broken is not None:
                raise errors.BackendUnavailable(conn.broken)
            raise errors.ConnectionSuspended(f"lost the connection to {self.url}; the session is suspended while the client reconnects")
        return conn.client

    def _wait(self, result: Any) -> Any:
        return result.get(timeout=self._op_timeout)

    def _get_children(self, path: str, watch: Any = None, include_data: bool = False) -> Any:
        return self._wait(self._client().get_children_async(path, watch=watch, include_data=include_data))

    def _exists(self, path: str, watch: Any = None) -> Any:
        return self._wait(self._client().exists_async(path, watch=watch))

    def _get(self, path: str) -> tuple[bytes, Any]:
        return self._wait(self._client().get_async(path))

    def _create(self, path: str, value: bytes = b"", *, ephemeral: bool = False, sequence: bool = False, makepath: bool = False) -> str:
        return self._wait(self._client().create_async(path, value, ephemeral=ephemeral, sequence=sequence, makepath=makepath))

    def _delete(self, path: str, version: int = -1) -> None:
        self._wait(self._client().delete_async(path, version))

    def _commit(self, build: Callable[[Any], object]) -> tuple[list[Any], BaseException | None]:
        """Run a ``multi``: (results, the error that rolled it back or None)."""
        txn = self._client().transaction()
        build(txn)
        results = self._wait(txn.commit_async())
        failure = next((r for r in results if isinstance(r, Exception) and not isinstance(r, (kx.RolledBackError, kx.RuntimeInconsistency))), None)
        return results, failure

    # -- paths ---------------------------------------------------------------------------

    def _group_path(self, group: str) -> str:
        return f"{self._root}/groups/{encode_name(group)}"

    def _member_path(self, group: str, member: str) -> str:
        return f"{self._group_path(group)}/{MEMBER}{encode_name(member)}"

    def _event_prefix(self, group: str, kind: str, member: str) -> str:
        return f"{self._group_path(group)}/{EVENT}{kind}-{encode_name(member)}-"

    def _lock_dir(self, name: str) -> str:
        return f"{self._root}/locks/{encode_name(name)}"

    def _claim_path(self, name: str, fence: int) -> str:
        return f"{self._lock_dir(name)}/{self.conn.prefix}{LOCK_MARK}{fence:0{SEQUENCE_DIGITS}d}"

    # -- groups -------------------------------------------------------------------------------

    def _missing(self, group: str) -> bool:
        return self._exists(self._group_path(group)) is None

    def do_create_group(self, group: str) -> None:
        try:
            self._create(self._group_path(group))
        except kx.NodeExistsError:
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already") from None

    def do_delete_group(self, group: str) -> None:
        path = self._group_path(group)
        for _attempt in range(8):
            try:
                children = self._get_children(path)
            except kx.NoNodeError:
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group") from None
            members = [c for c in children if c.startswith(MEMBER)]
            if members:
                raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has {len(members)} member(s)")

            def delete_all(txn: Any, children: list[str] = children) -> None:
                for child in children:  # the event log goes with the group
                    txn.delete(f"{path}/{child}")
                txn.delete(path)

            _results, failure = self._commit(delete_all)
            if failure is None:
                self._writes.pop(group, None)
                return
            if not isinstance(failure, (kx.NoNodeError, kx.NotEmptyError)):
                raise failure
            # Someone joined, logged or trimmed meanwhile: look again.
        raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it kept changing while being deleted")

    def do_get_groups(self) -> frozenset[str]:
        return frozenset(decode_name(child) for child in self._get_children(f"{self._root}/groups"))

    def do_group_exists(self, group: str) -> bool:
        return not self._missing(group)

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        node = self._member_path(group, self.member_id)
        data = capabilities_json.encode("utf-8")
        joined = self._event_prefix(group, "join", self.member_id)
        for _attempt in range(8):
            _results, failure = self._commit(lambda txn: (txn.create(node, data, ephemeral=True), txn.create(joined, sequence=True)))
            if failure is None:
                self._joined_here(group)
                return
            if isinstance(failure, kx.NoNodeError):
                if not create:
                    raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
                try:
                    self._create(self._group_path(group))
                except kx.NodeExistsError:
                    pass
                continue
            if not isinstance(failure, kx.NodeExistsError):
                raise failure
            stat = self._exists(node)
            if stat is None:
                continue  # it just left
            if stat.ephemeralOwner not in self._old_sessions:
                raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")
            # Our own membership from a session this member gave up (it lives
            # on at the server until it expires): take it over, and log that
            # the old membership ended.
            _results, failure = self._commit(self._take_over(group, stat.version, data))
            if failure is None:
                logger.info("%r took over its membership of %r from its earlier session 0x%x", self, group, stat.ephemeralOwner)
                self._joined_here(group)
                return
        raise errors.BackendUnavailable(f"cannot join {group!r}: its membership kept changing under this member")

    def _take_over(self, group: str, version: int, data: bytes) -> Callable[[Any], None]:
        node = self._member_path(group, self.member_id)

        def build(txn: Any) -> None:
            txn.delete(node, version)
            txn.create(self._event_prefix(group, "leave", self.member_id), sequence=True)
            txn.create(node, data, ephemeral=True)
            txn.create(self._event_prefix(group, "join", self.member_id), sequence=True)

        return build

    def _joined_here(self, group: str) -> None:
        self._mine.add(group)
        self._logged(group)

    def do_leave(self, group: str) -> None:
        if group in self._mine:
            node = self._member_path(group, self.member_id)
            left = self._event_prefix(group, "leave", self.member_id)
            _results, failure = self._commit(lambda txn: (txn.delete(node), txn.create(left, sequence=True)))
            if failure is None:
                self._mine.discard(group)
                self._logged(group)
                return
            if not isinstance(failure, kx.NoNodeError):
                raise failure
            self._mine.discard(group)  # removed from outside
        if self._missing(group):
            raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
        raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")

    def do_get_members(self, group: str) -> frozenset[str]:
        client = self._client()
        listed = client.handler.async_result()
        client._call(_ListMembers(self._group_path(group), None), listed)  # noqa: SLF001 - get_children_async, but our reader
        try:
            nodes = self._wait(listed)
        except kx.NoNodeError:
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group") from None
        return decode_names(nodes)

    def do_get_capabilities(self, group: str, member: str) -> str:
        try:
            data, _stat = self._get(self._member_path(group, member))
        except kx.NoNodeError:
            if self._missing(group):
                raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group") from None
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member") from None
        return data.decode("utf-8")

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        if group in self._mine:
            try:
                self._wait(self._client().set_async(self._member_path(group, self.member_id), capabilities_json.encode("utf-8")))
                return
            except kx.NoNodeError:
                self._mine.discard(group)
        if self._missing(group):
            raise errors.GroupNotFound(f"cannot update capabilities in {group!r}: no such group")
        raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")

    # -- the event log ---------------------------------------------------------------------

    def _log(self, group: str, kind: str, member: str) -> None:
        try:
            self._create(self._event_prefix(group, kind, member), sequence=True)
        except kx.NoNodeError:
            return  # the group is gone: nobody to tell
        self._logged(group)

    def _logged(self, group: str) -> None:
        self._writes[group] += 1
        if self._writes[group] % TRIM_EVERY == 0:
            try:
                self._trim(group, self._get_children(self._group_path(group)), EVENTS_KEPT)
            except kx.NoNodeError:
                pass

    def _trim(self, group: str, children: Iterable[str], keep: int) -> None:
        entries = sorted((entry[0], child) for child in children if (entry := _parse_event(child)) is not None)
        client = self._client()
        for _seq, child in entries[: max(len(entries) - keep, 0)]:
            client.delete_async(f"{self._group_path(group)}/{child}")  # racing trimmers: NoNode is fine

    def do_watch(self, group: str) -> None:
        """Watch ``group``'s log; a group watched before (and still, across a
        reconnect) is read from where its watcher stopped."""
        log = self._logs.get(group)
        if log is None:
            self._logs[group] = log = _GroupLog()
            self._read_log(group, log, initial=True)
        else:
            self._read_log(group, log)

    def do_unwatch(self, group: str) -> None:
        self._logs.pop(group, None)

    def _group_watcher(self, conn: _Connection, group: str) -> Callable[[Any], None]:
        watcher = conn.group_watchers.get(group)
        if watcher is None:

            def watcher(event: Any) -> None:  # kazoo's callback thread
                if event.type == EventType.NONE or group in conn.queued:
                    return  # NONE: a connection state change, handled by _on_state
                conn.queued.add(group)
                self.run_on_actor(self._on_group_changed, conn, group)

            conn.group_watchers[group] = watcher
        return watcher

    def _on_group_changed(self, conn: _Connection, group: str) -> None:
        conn.queued.discard(group)
        log = self._logs.get(group)
        if conn is self.conn and log is not None:
            self._read_log(group, log)

    def _read_log(self, group: str, log: _GroupLog, *, initial: bool = False) -> None:
        """Read the group's members and log in one consistent look, emit what
        is new, and re-arm the watch (on the children, or on the group's
        creation if it does not exist)."""
        path = self._group_path(group)
        watcher = self._group_watcher(self.conn, group)
        while True:
            try:
                children, stat = self._get_children(path, watch=watcher, include_data=True)
                break
            except kx.NoNodeError:
                if self._exists(path, watch=watcher) is None:
                    for member in sorted(log.members):
                        self.emit(MemberLeft(group, member))
                    log.members, log.czxid, log.last_seq = set(), None, -1
                    return
        members = {decode_name(c[len(MEMBER) :]) for c in children if c.startswith(MEMBER)}
        entries = sorted(entry for c in children if (entry := _parse_event(c)) is not None)
        if stat.czxid != log.czxid:
            log.czxid = stat.czxid
            log.last_seq = entries[-1][0] if initial and entries else -1
            if initial:
                log.members = members
                return
        for seq, kind, member in entries:
            if seq <= log.last_seq:
                continue
            log.last_seq = seq
            if kind == "join":
                if member in log.members:  # its last membership ended unlogged
                    self.emit(MemberLeft(group, member))
                self.emit(MemberJoined(group, member))
                log.members.add(member)
            elif kind == "leave":
                if member in log.members:
                    self.emit(MemberLeft(group, member))
                    log.members.discard(member)
            else:
                self.emit(LeaderElected(group, member))
        # What the log cannot say: memberships that ended with their session
        # (no entry), and entries trimmed before this watcher read them.
        for member in sorted(log.members - members):
            self.emit(MemberLeft(group, member))
        for member in sorted(members - log.members):
            self.emit(MemberJoined(group, member))
        log.members = members
        if len(entries) > 2 * EVENTS_KEPT:
            self._trim(group, (c for c in children if c.startswith(EVENT)), EVENTS_KEPT)

    # -- locks ---------------------------------------------------------------------------------

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        conn = self.conn
        directory = self._lock_dir(name)
        try:
            return self._try_claim(conn, name, directory)
        except Exception:
            # A claim may be left (a create or delete whose reply was lost):
            # the session fails, and the next one finds it by its prefix.
            conn.uncertain.add(directory)
            raise

    def _try_claim(self, conn: _Connection, name: str, directory: str) -> int | None:
        claim = f"{directory}/{conn.prefix}{LOCK_MARK}"
        data = self.member_id.encode("utf-8")
        try:
            path = self._prefetched_or(("create", name), lambda: self._client().create_async(claim, data, ephemeral=True, sequence=True))
        except kx.NoNodeError:
            # Never delete a lock's directory, once made: its child counter
            # IS the fence counter, and a re-created directory would start
            # fences again at 0, below those already handed out.
            self._prefetched.pop(("children", name), None)
            try:
                self._create(directory, makepath=True)
            except kx.NodeExistsError:
                pass
            path = self._create(claim, data, ephemeral=True, sequence=True)
        mine = path.rpartition("/")[2]
        children = self._prefetched_or(("children", name), lambda: self._client().get_children_async(directory))
        claims = self._drop_stale_claims(directory, children)
        if mine not in claims:  # deleted from outside already
            self.run_on_actor(self._lock_freed, conn, name)
            return None
        holder = min(claims, key=_sequence)
        if holder == mine:
            conn.held.add(path)
            if name.startswith(RESERVED_LOCK_PREFIX):
                self._log(name[len(RESERVED_LOCK_PREFIX) :], "leader", self.member_id)
            return _sequence(mine)
        # Held by another: withdraw (waiting is the actor's job, not
        # ZooKeeper's) and watch the holder's claim, so that its release
        # retries our waiters at once -- if anybody here waits: a try-lock
        # needs no watch (the acquire that goes on to wait sets it, see
        # _on_acquire).
        self._delete(path)
        if self._waits_for(name):
            self._watch_holder(conn, name, f"{directory}/{holder}")
        else:
            conn.holders[name] = f"{directory}/{holder}"
        return None

    def _waits_for(self, name: str) -> bool:
        """Does an acquire or a campaign of this session wait for ``name``?"""
        if self._waiters.get(name):
            return True
        return name.startswith(RESERVED_LOCK_PREFIX) and name[len(RESERVED_LOCK_PREFIX):] in self._campaigns

    def _watch_holder(self, conn: _Connection, name: str, claim: str) -> None:
        if self._exists(claim, watch=self._lock_watcher(conn, name)) is None:
            self.run_on_actor(self._lock_freed, conn, name)  # released meanwhile

    def _on_acquire(self, msg: Any, call: Any) -> Any:
        result = super()._on_acquire(msg, call)
        claim = self.conn.holders.pop(msg.name, None) if self.conn is not None else None
        if result is _PENDING and claim is not None:
            self._run_guarded(self._watch_holder, self.conn, msg.name, claim)
        return result

    def _drop_stale_claims(self, directory: str, children: list[str]) -> list[str]:
        """The claims in ``children``, less those of this coordinator's earlier
        sessions, which are deleted: their leases were declared lost already."""
        claims = []
        client = self._client()
        for child in children:
            if not _is_claim(child):
                continue
            if child.startswith(f"{self._token}-") and not child.startswith(self.conn.prefix + LOCK_MARK):
                client.delete_async(f"{directory}/{child}")
                continue
            claims.append(child)
        return claims

    def _lock_watcher(self, conn: _Connection, name: str) -> Callable[[Any], None]:
        watcher = conn.lock_watchers.get(name)
        if watcher is None:

            def watcher(event: Any) -> None:  # kazoo's callback thread
                if event.type != EventType.NONE:
                    self.run_on_actor(self._lock_freed, conn, name)

            conn.lock_watchers[name] = watcher
        return watcher

    def _lock_freed(self, conn: _Connection, name: str) -> None:
        if conn is self.conn:
            self.wake([name])

    def do_release(self, name: str, fence: int) -> bool:
        path = self._claim_path(name, fence)
        try:
            self._prefetched_or(("delete", name, str(fence)), lambda: self._client().delete_async(path))
        except kx.NoNodeError:
            self.conn.held.discard(path)
            return False
        except Exception:
            # The delete may or may not have been applied.  The claim is no
            # longer a lease of ours: a resumed session deletes it (see
            # on_resumed), a lost one takes it along.  Kept as held, it would
            # have blocked the lock for as long as the session lived.
            self.conn.held.discard(path)
            self.conn.uncertain.add(self._lock_dir(name))
            raise
        self.conn.held.discard(path)
        return True

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        """A claim lives as long as the session; check that none was deleted
        from outside.

        A claim is never written (its version stays 0), so one multi of
        version checks covers up to ``CHECKS_PER_MULTI`` claims in one round
        trip.  A multi that fails names its first failed check: that claim is
        settled on its own (gone: lost; written from outside: still there)
        and the rest is checked again."""
        lost: set[tuple[str, int]] = set()
        pending = list(leases)
        while pending:
            chunk = pending[:CHECKS_PER_MULTI]
            results, failure = self._commit(lambda txn: [txn.check(self._claim_path(lease.name, lease.fence), 0) for lease in chunk])
            if failure is None:
                del pending[: len(chunk)]
                continue
            lease = pending.pop(next(index for index, result in enumerate(results) if result is failure))
            if isinstance(failure, kx.NoNodeError) or self._exists(self._claim_path(lease.name, lease.fence)) is None:
                lost.add((lease.name, lease.fence))
        return lost

    def do_lock_holder(self, name: str) -> str | None:
        directory = self._lock_dir(name)
        for _attempt in range(8):
            try:
                claims = [c for c in self._get_children(directory) if _is_claim(c)]
            except kx.NoNodeError:
                return None
            if not claims:
                return None
            try:
                data, _stat = self._get(f"{directory}/{min(claims, key=_sequence)}")
            except kx.NoNodeError:
                continue  # released as we looked
            return data.decode("utf-8")
        return None

    # -- liveness ---------------------------------------------------------------------------------

    def do_heartbeat(self) -> None:
        """One round trip: kazoo pings on its own, but the lease clock needs a
        reply this session actually got."""
        if self._exists(self._root) is None:
            raise errors.BackendUnavailable(f"the namespace {self._root!r} vanished from {self.url}; reconnecting recreates it")

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        for kinds, error, message in _TRANSLATIONS:
            if isinstance(exc, kinds):
                detail = f" ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
                return error(message.format(url=self.url, root=self._root) + detail)
        return super().translate_error(exc)
