"""postgresql:// (alias postgres://): coordination through a PostgreSQL server (psycopg2).

URL: ``postgresql://[user[:password]@]host[:port]/dbname[?options]`` (port
5432 by default).  Options, besides the common ones:

====================  ======================================================
``namespace``         isolates all state: rows are keyed by it and lock keys
                      hashed with it (default ``coordactors``)
``table_prefix``      prefix of the tables, created on first use in the
                      connection's ``current_schema()`` (default
                      ``coordactors_``)
``query_timeout``     seconds a statement may take before the connection is
                      declared dead (default ``session_ttl / 2``, at most 5)
``retry_interval``    seconds between retries of locks found taken (default
                      1): how soon a lock freed by its holder's connection
                      dying -- which sends no NOTIFY -- reaches its waiters
====================  ======================================================

``lease_ttl`` is not supported: a lock lives exactly as long as the
session's connection.  ``session_ttl`` (default 30 s) is how long a member
whose process died silently stays listed, and how long a holder cut off from
the server keeps believing in its leases.

Tables (``<p>`` is ``table_prefix``)::

    <p>groups      (namespace, name)
    <p>members     (namespace, grp, member, token, capabilities, expires)
    <p>locks       (namespace, name, key, fence, holder, token, pid)
    <p>namespaces  (namespace, seq)         -- the event log's counter
    <p>events      (namespace, seq, grp, kind, member)

Names are stored as ``text`` and always passed as query parameters, so any
unicode name (quotes, '/', '..') is safe.  A table that exists with other
columns (someone else's) is reported at connect and never touched.

Mechanisms:

* lock: ``pg_try_advisory_lock(key)`` on the session's connection -- never
  the blocking form: waiting is the session actor's job, so a waiting acquire
  does not stall the session's other requests.  ``key`` is a stable 64-bit
  hash of (namespace, name); a collision only costs false contention, since
  the real name is in the lock row.  **The fence** comes from the lock row,
  upserted in the same statement as the grant (``fence = fence + 1``; a
  missing row is seeded from :func:`~coordactors.backend_actors.base.fence_floor`,
  so fences keep rising even if the tables are lost).  The row also records
  the holder's member id and backend pid, and a holder is believed only while
  ``pg_locks`` shows that pid holding the key.  A release NOTIFYs the
  namespace's channel, which wakes waiters at once; a lock freed because its
  holder's connection died (no NOTIFY) is retried every ``retry_interval``.
* groups: a row per group and per membership; a membership carries an
  ``expires`` (server clock, ``now() + session_ttl``) refreshed by the
  heartbeat.  Every heartbeat reaps the namespace's expired members, with
  their leave events.  A session whose own membership was reaped fails (and
  is restored by the supervisor).
* events: every change writes its events to ``<p>events`` in the same
  transaction, numbered by a per-namespace counter row that the transaction
  keeps locked until it commits -- so numbers are assigned in commit order
  (a ``bigserial`` is not: a later id can commit first, and a reader going by
  ``id > last_seen`` would skip the earlier one forever).  The transaction
  then NOTIFYs, with the events and their numbers in the payload when they
  fit.  A reader thread per session LISTENs on a dedicated connection
  (``select()`` on its socket); on each wake-up it takes the events from the
  notes when they follow on from the last one it saw without a gap (notes
  arrive in commit order), else reads ``seq > last_seen`` from the log, and
  hands the rows to the actor: events arrive complete and in order.  Writers
  trim the log to ``EVENTS_KEPT`` entries.  While the session
  neither watches nor waits, the reader rests (``UNLISTEN``: a NOTIFY per
  change in the namespace no longer wakes it) and only watches its socket for
  the connection dropping.
* failure: the reader sees the connection drop at once, and a statement that
  hangs for ``query_timeout`` (a stopped server) gets its socket shut down by
  a watchdog; either fails the session -- every lease gets ``LockLost`` --
  and the supervisor reconnects and restores it.  There is no reconnect per
  operation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg2  # type: ignore[import-untyped]
import psycopg2.errors  # type: ignore[import-untyped]
from psycopg2 import sql

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import Coalescing
from coordactors.backend_actors._rest import ReaderRest, RestingReader
from coordactors.backend_actors.base import SessionActor, fence_floor, leader_lock_name
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, seconds, text

logger = logging.getLogger(__name__)

__all__ = ["PostgreSQLSession", "lock_key"]

DEFAULT_PORT = 5432
EVENTS_KEPT = 10_000
"""Entries of a namespace's event log kept; older ones are trimmed by writers."""
TRIM_EVERY = 256
NOTE_EVENTS_MAX = 4000
"""Bytes of events a NOTIFY carries at most (PostgreSQL refuses payloads of 8,000); longer ones send a bare note."""
_SCHEMA_LOCK = 0x636F6F7264616374  # "coordact": serializes table creation across sessions

# table -> {column: data_type as information_schema.columns spells it}
SCHEMA: dict[str, dict[str, str]] = {
    "groups": {"namespace": "text", "name": "text"},
    "members": {"namespace": "text", "grp": "text", "member": "text", "token": "text", "capabilities": "text",
                "expires": "timestamp with time zone"},
    "locks": {"namespace": "text", "name": "text", "key": "bigint", "fence": "bigint", "holder": "text",
              "token": "text", "pid": "integer"},
    "namespaces": {"namespace": "text", "seq": "bigint"},
    "events": {"namespace": "text", "seq": "bigint", "grp": "text", "kind": "text", "member": "text"},
}
_DDL = {
    "groups": "CREATE TABLE IF NOT EXISTS {t} (namespace text NOT NULL, name text NOT NULL, PRIMARY KEY (namespace, name))",
    "members": "CREATE TABLE IF NOT EXISTS {t} (namespace text NOT NULL, grp text NOT NULL, member text NOT NULL, "
               "token text NOT NULL, capabilities text NOT NULL, expires timestamptz NOT NULL, "
               "PRIMARY KEY (namespace, grp, member))",
    "locks": "CREATE TABLE IF NOT EXISTS {t} (namespace text NOT NULL, name text NOT NULL, key bigint NOT NULL, "
             "fence bigint NOT NULL, holder text, token text, pid integer, PRIMARY KEY (namespace, name))",
    "namespaces": "CREATE TABLE IF NOT EXISTS {t} (namespace text PRIMARY KEY, seq bigint NOT NULL)",
    "events": "CREATE TABLE IF NOT EXISTS {t} (namespace text NOT NULL, seq bigint NOT NULL, grp text NOT NULL, "
              "kind text NOT NULL, member text NOT NULL, PRIMARY KEY (namespace, seq))",
}

# A bigint advisory key shows in pg_locks as classid (high half) and objid (low half), objsubid 1.
_HELD = ("EXISTS (SELECT 1 FROM pg_locks p WHERE p.locktype = 'advisory' AND p.granted AND p.objsubid = 1 "
         "AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
         "AND p.pid = {pid} AND p.classid = ((l.key >> 32) & 4294967295)::oid AND p.objid = (l.key & 4294967295)::oid)")


def lock_key(namespace: str, name: str) -> int:
    """The advisory lock key of ``name`` in ``namespace``: a stable signed 64-bit hash."""
    digest = hashlib.blake2b(f"{namespace}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def events_note(columns: list[list[str]]) -> str:
    """The events (groups, kinds, members) as a NOTIFY carries them: JSON, or
    ``""`` if too long for a note (the note then only says "read the log")."""
    note = json.dumps(columns, ensure_ascii=False, separators=(",", ":"))
    return note if len(note.encode("utf-8")) <= NOTE_EVENTS_MAX else ""


def events_in_notes(payloads: list[str], after: int) -> list[tuple[int, str, str, str]] | None:
    """The log rows after ``after`` that the event notes ``payloads`` carry
    (``e<first seq> <json>``, in commit order), or None if they cannot be
    trusted to be all of them -- a bare ``e`` note, or a gap -- and the log
    must be read."""
    rows: list[tuple[int, str, str, str]] = []
    for payload in payloads:
        first, sep, body = payload[1:].partition(" ")
        if not sep:
            return None
        try:  # a note someone else sent on the channel is not trusted either
            seq = int(first)
            groups, kinds, members = json.loads(body)
        except (ValueError, TypeError):
            return None
        for group, kind, member in zip(groups, kinds, members):
            if seq == after + 1:
                rows.append((seq, group, kind, member))
                after = seq
            elif seq > after:
                return None
            seq += 1
    return rows


def _table_prefix(value: str, what: str) -> str:
    if not value or len(value) > 40 or not (value[0].isascii() and (value[0].isalpha() or value[0] == "_")) or \
            not all(c.isascii() and (c.isalnum() or c == "_") for c in value):
        raise errors.InvalidArgument(f"option '{what}' must be up to 40 ASCII letters, digits or '_', not starting with a digit (got {value!r})")
    return value.lower()


class _Connection:
    """The command connection, the listening connection and the reader thread."""

    def __init__(self, cmd: Any, listen: Any, start_seq: int) -> None:
        self.cmd = cmd
        self.listen = listen
        self.start_seq = start_seq
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.busy_since: float | None = None
        self.timers: list[Any] = []
        self.catch_up = False
        """A watch began: the reader reads the event log on (see ``do_watch``)."""
        self.prepared: set[str] = set()
        """Statements prepared on ``cmd`` (see ``PostgreSQLSession.PREPARED``)."""
        self.wake_r, self.wake_w = os.pipe()
        self.rest = ReaderRest(poke=self.poke)
        """The reader does not listen while the session neither watches nor waits."""

    def poke(self) -> None:
        """Any thread: wake the reader from its ``select``."""
        try:
            os.write(self.wake_w, b".")
        except OSError:
            pass  # closed, or full: it wakes either way

    def close_pipe(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _shutdown(pgconn: Any) -> None:
    """Shut down the socket under a psycopg2 connection: a blocked call on it returns at once."""
    try:
        fd = pgconn.fileno()
        sock = socket.socket(fileno=os.dup(fd))
    except (OSError, psycopg2.Error):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class PostgreSQLSession(Coalescing, RestingReader, SessionActor):
    """Session of ``postgresql://``: advisory locks, tables and LISTEN/NOTIFY.

    Acquires and releases queued together (many callers sharing the
    coordinator) go to the server as one statement.
    """

    COALESCED = frozenset({Acquire, Release})

    # NON_TIMEOUT_BASED: the server frees an advisory lock the moment its connection ends.
    CHARACTERISTICS = frozenset(
        {C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS, C.NON_TIMEOUT_BASED}
    )
    DEFAULTS: ClassVar[dict[str, Any]] = {"session_ttl": 30.0}
    OPTIONS: ClassVar[dict[str, Callable[[str, str], Any]]] = {
        "namespace": text, "table_prefix": _table_prefix, "query_timeout": seconds, "retry_interval": seconds,
    }
    LEASE_TTL = False
    RETRY_ONCE_WAITING = True  # the LISTEN reader drops "freed" notes while nobody waits

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        dbname = options.path.removeprefix("/")
        if not dbname or "/" in dbname:
            raise errors.InvalidArgument(f"the path of a postgresql:// URL is the database name, /dbname (got {options.path!r} in {options.redacted!r})")
        if not options.host:
            raise errors.InvalidArgument(f"a postgresql:// URL needs a host (got {options.redacted!r})")
        if options.session_ttl is None:
            raise errors.InvalidArgument("postgresql:// needs a session_ttl: memberships live by it")
        if options.lease_ttl is not None:
            raise errors.InvalidArgument(
                "option 'lease_ttl' is not supported by postgresql://: a lock lives exactly as long as the session's connection"
            )

    # -- connection -------------------------------------------------------------

    @property
    def _query_timeout(self) -> float:
        return self.options.extra.get("query_timeout") or min(5.0, (self.options.session_ttl or 10.0) / 2)

    def _connect_one(self) -> Any:
        options = self.options
        conn = psycopg2.connect(
            host=options.host, port=options.port or DEFAULT_PORT, dbname=options.path.lstrip("/"),
            user=options.username or None, password=options.password or None,
            # libpq counts whole seconds and treats less than 2 as 2.
            connect_timeout=max(2, int(options.connect_timeout + 0.999)),
            application_name=f"coordactors[{self.member_id}]"[:63],
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        )
        conn.autocommit = True
        return conn

    def open(self) -> _Connection:
        extra = self.options.extra
        ns, prefix = extra.get("namespace", "coordactors"), extra.get("table_prefix", "coordactors_")
        opened: list[Any] = []
        # The statements below get the same deadline as any other: a server
        # that accepted the connection and then stopped answering must not
        # hold this executor thread forever.
        def cut_off() -> None:
            for pgconn in opened:
                _shutdown(pgconn)

        guard = self.runtime.ticker.call_later(self._query_timeout + 2 * self.options.connect_timeout, cut_off)
        try:
            return self._open(ns, prefix, opened)
        except BaseException:
            for pgconn in opened:
                pgconn.close()
            raise
        finally:
            guard.cancel()

    def _open(self, ns: str, prefix: str, opened: list[Any]) -> _Connection:
        cmd = self._connect_one()
        opened.append(cmd)
        self._ensure_schema(cmd, prefix)
        listen = self._connect_one()
        opened.append(listen)
        with listen.cursor() as cur:
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel_of(ns))))
            # After LISTEN: no event committed from now on can be missed.
            cur.execute(sql.SQL("SELECT seq FROM {} WHERE namespace = %s").format(sql.Identifier(prefix + "namespaces")), (ns,))
            row = cur.fetchone()
        return _Connection(cmd, listen, row[0] if row else 0)

    def _ensure_schema(self, conn: Any, prefix: str) -> None:
        """Create the missing tables; refuse (touching nothing) if one exists in another format."""
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                cur.execute(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
                    ([prefix + t for t in SCHEMA],),
                )
                found: dict[str, dict[str, str]] = {}
                for table, column, data_type in cur.fetchall():
                    found.setdefault(table, {})[column] = data_type
                for short, columns in SCHEMA.items():
                    have = found.get(prefix + short)
                    if have is not None and have != columns:
                        raise errors.InvalidArgument(
                            f"table {prefix + short!r} on {self.url} exists with columns {sorted(have)} -- not the format "
                            f"coordactors uses ({sorted(columns)}); it was left untouched (choose another table_prefix)"
                        )
                for short in SCHEMA:
                    if prefix + short not in found:
                        cur.execute(sql.SQL(_DDL[short]).format(t=sql.Identifier(prefix + short)))
                cur.execute("COMMIT")
            except BaseException:
                if not conn.closed:
                    try:
                        cur.execute("ROLLBACK")
                    except psycopg2.Error:
                        pass
                raise

    @staticmethod
    def _channel_of(namespace: str) -> str:
        return "coordactors_" + hashlib.blake2b(namespace.encode(), digest_size=12).hexdigest()

    def on_connected(self) -> None:
        extra = self.options.extra
        self._ns = extra.get("namespace", "coordactors")
        prefix = extra.get("table_prefix", "coordactors_")
        self._channel = self._channel_of(self._ns)
        self._t = {short: sql.Identifier(prefix + short) for short in SCHEMA}
        self._q: dict[str, Any] = {}
        # A group's view (last event seq, members, leader) outlives the connection,
        # so re-watching after a reconnect replays what happened in between.
        watched = self.watched_groups
        self._views: dict[str, list[Any]] = {g: v for g, v in getattr(self, "_views", {}).items() if g in watched}
        self._written = 0
        self._begin_pending = False
        conn = self.conn
        conn.thread = threading.Thread(target=self._follow, args=(conn, self._ns, conn.start_seq),
                                       name=f"PostgreSQLEvents[{self.member_id}]", daemon=True)
        conn.thread.start()
        self._contended: set[str] = set()
        timeout = self._query_timeout
        ticker = self.runtime.ticker
        conn.timers = [
            ticker.every(max(0.05, timeout / 4), lambda: self._watch_dog(conn, timeout)),
            ticker.every(self.options.extra.get("retry_interval", 1.0), lambda: self.run_on_actor(self._retry_contended, conn)),
        ]

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.stopping.set()
        for timer in conn.timers:
            timer.cancel()
        _shutdown(conn.listen)
        conn.poke()
        if conn.thread is not None and conn.thread is not threading.current_thread():
            conn.thread.join(5)
        conn.close_pipe()
        for pgconn in (conn.listen, conn.cmd):
            try:
                pgconn.close()
            except Exception:
                logger.debug("%r: closing a connection failed", self, exc_info=True)

    @staticmethod
    def _watch_dog(conn: _Connection, timeout: float) -> None:
        """Ticker thread: a statement running past ``timeout`` means a server that stopped answering."""
        since = conn.busy_since
        if since is not None and time.monotonic() - since > timeout and not conn.stopping.is_set():
            logger.warning("a statement ran for more than %.1fs: shutting the connection down", timeout)
            _shutdown(conn.cmd)

    # -- statements -------------------------------------------------------------

    def _sql(self, template: str) -> Any:
        """``template`` with ``{groups}``-style table names filled in (cached)."""
        query = self._q.get(template)
        if query is None:
            query = self._q[template] = sql.SQL(template).format(**self._t).as_string(self.conn.cmd)
        return query

    def _run(self, template: str, params: Any = (), fetch: str = "all") -> Any:
        """Run one statement (autocommit: one round trip, one transaction)."""
        conn = self.conn
        query = self._sql(template)
        if self._begin_pending:
            # BEGIN travels with the transaction's first statement: one round trip less.
            query, self._begin_pending = "BEGIN; " + query, False
        conn.busy_since = time.monotonic()
        try:
            with conn.cmd.cursor() as cur:
                cur.execute(query, params)
                if fetch == "one":
                    return cur.fetchone()
                if fetch == "all":
                    return cur.fetchall()
                return cur.rowcount
        finally:
            conn.busy_since = None

    def _transaction(self, body: Any) -> Any:
        """Run ``body()`` (whose statements use :meth:`_run`) in one transaction; ROLLBACK on error."""
        conn = self.conn
        self._begin_pending = True
        try:
            result = body()
            if self._begin_pending:
                self._begin_pending = False  # nothing was sent
            else:
                self._run("COMMIT", fetch="none")
        except BaseException:
            if self._begin_pending:
                self._begin_pending = False
            elif not conn.cmd.closed:
                try:
                    self._run("ROLLBACK", fetch="none")
                except Exception:
                    logger.debug("%r: ROLLBACK failed", self, exc_info=True)
            raise
        return result

    def _append(self, events: list[tuple[str, str, str]]) -> None:
        """Inside a transaction: log ``events`` (group, kind, member) and NOTIFY.

        The counter row stays locked until commit, so numbers follow commit order."""
        if not events:
            return
        columns = [[e[0] for e in events], [e[1] for e in events], [e[2] for e in events]]
        self._run(
            "WITH s AS (INSERT INTO {namespaces} (namespace, seq) VALUES (%(ns)s, %(n)s) "
            "ON CONFLICT (namespace) DO UPDATE SET seq = {namespaces}.seq + EXCLUDED.seq RETURNING seq), "
            "e AS (INSERT INTO {events} (namespace, seq, grp, kind, member) "
            "SELECT %(ns)s, s.seq - %(n)s + u.ord, u.g, u.k, u.m FROM s, "
            "unnest(%(g)s::text[], %(k)s::text[], %(m)s::text[]) WITH ORDINALITY AS u(g, k, m, ord) RETURNING 1) "
            "SELECT pg_notify(%(ch)s, CASE WHEN %(p)s = '' THEN 'e' ELSE 'e' || ((SELECT seq FROM s) - %(n)s + 1) || ' ' || %(p)s END), "
            "(SELECT count(*) FROM e), (SELECT seq FROM s)",
            {"ns": self._ns, "n": len(events), "g": columns[0], "k": columns[1], "m": columns[2],
             "ch": self._channel, "p": events_note(columns)},
        )
        self._written += len(events)
        if self._written >= TRIM_EVERY:
            self._written = 0
            self._run("DELETE FROM {events} WHERE namespace = %(ns)s AND seq <= "
                      "(SELECT seq FROM {namespaces} WHERE namespace = %(ns)s) - %(kept)s",
                      {"ns": self._ns, "kept": EVENTS_KEPT}, fetch="none")

    def _reap(self, group: str | None = None) -> list[tuple[str, str, str]]:
        """Inside a transaction: delete expired memberships (of ``group``, or all); their leave events."""
        # SKIP LOCKED: rows another transaction is reaping (or their owner
        # refreshing) are left to it -- two reapers never wait on each other.
        rows = self._run(
            "DELETE FROM {members} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {members} WHERE namespace = %s AND expires < now() "
            "AND (%s::text IS NULL OR grp = %s) FOR UPDATE SKIP LOCKED)) RETURNING grp, member",
            (self._ns, group, group),
        )
        return [(grp, "leave", member) for grp, member in sorted(rows)]

    def _group_exists(self, group: str, lock: str = "") -> bool:
        return self._run("SELECT 1 FROM {groups} WHERE namespace = %s AND name = %s" + lock, (self._ns, group), fetch="one") is not None

    # -- groups -----------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        if not self._run("INSERT INTO {groups} VALUES (%s, %s) ON CONFLICT DO NOTHING", (self._ns, group), fetch="none"):
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already")

    def do_delete_group(self, group: str) -> None:
        def body() -> None:
            if not self._group_exists(group, " FOR UPDATE"):
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            self._append(self._reap(group))
            if self._run("SELECT 1 FROM {members} WHERE namespace = %s AND grp = %s LIMIT 1", (self._ns, group), fetch="one"):
                raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has members")
            self._run("DELETE FROM {groups} WHERE namespace = %s AND name = %s", (self._ns, group), fetch="none")
        self._transaction(body)

    def do_get_groups(self) -> frozenset[str]:
        return frozenset(r[0] for r in self._run("SELECT name FROM {groups} WHERE namespace = %s", (self._ns,)))

    def do_group_exists(self, group: str) -> bool:
        return self._group_exists(group)

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        def body() -> None:
            if create:
                self._run("INSERT INTO {groups} VALUES (%s, %s) ON CONFLICT DO NOTHING", (self._ns, group), fetch="none")
            if not self._group_exists(group, " FOR SHARE"):
                raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
            events = self._reap(group)
            joined = self._run(
                "INSERT INTO {members} VALUES (%s, %s, %s, %s, %s, now() + %s * interval '1 second') ON CONFLICT DO NOTHING",
                (self._ns, group, self.member_id, self.session_token, capabilities_json, self.options.session_ttl), fetch="none",
            )
            if not joined:
                self._append(events)
                raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")
            self._append([*events, (group, "join", self.member_id)])
        self._transaction(body)

    def do_leave(self, group: str) -> None:
        def body() -> bool:
            if not self._group_exists(group, " FOR SHARE"):
                raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
            events = self._reap(group)
            left = self._run("DELETE FROM {members} WHERE namespace = %s AND grp = %s AND member = %s",
                             (self._ns, group, self.member_id), fetch="none")
            if left:
                events.append((group, "leave", self.member_id))
            self._append(events)
            return bool(left)
        if not self._transaction(body):
            raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")

    def do_get_members(self, group: str) -> frozenset[str]:
        rows = self._run(
            "SELECT m.member FROM {groups} g LEFT JOIN {members} m ON m.namespace = g.namespace AND m.grp = g.name "
            "AND m.expires > now() WHERE g.namespace = %s AND g.name = %s",
            (self._ns, group),
        )
        if not rows:
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        return frozenset(r[0] for r in rows if r[0] is not None)

    def do_get_capabilities(self, group: str, member: str) -> str:
        row = self._run(
            "SELECT (SELECT capabilities FROM {members} WHERE namespace = %s AND grp = %s AND member = %s AND expires > now()) "
            "FROM {groups} WHERE namespace = %s AND name = %s",
            (self._ns, group, member, self._ns, group), fetch="one",
        )
        if row is None:
            raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
        if row[0] is None:
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return str(row[0])

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        # Also takes over a membership an earlier connection of this session left behind.
        updated = self._run(
            "WITH u AS (UPDATE {members} SET capabilities = %(c)s, token = %(tok)s, "
            "expires = now() + %(ttl)s * interval '1 second' "
            "WHERE namespace = %(ns)s AND grp = %(g)s AND member = %(m)s AND expires > now() RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM {groups} WHERE namespace = %(ns)s AND name = %(g)s), (SELECT count(*) FROM u)",
            {"c": capabilities_json, "tok": self.session_token, "ttl": self.options.session_ttl, "ns": self._ns,
             "g": group, "m": self.member_id},
            fetch="one",
        )
        if not updated[0]:
            raise errors.GroupNotFound(f"cannot update capabilities in {group!r}: no such group")
        if not updated[1]:
            raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")

    # -- locks ------------------------------------------------------------------

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        key = lock_key(self._ns, name)
        args = (key, self._ns, name, fence_floor(), self.member_id, self.session_token)
        try:
            if name.startswith(RESERVED_LOCK_PREFIX):
                def body() -> Any:
                    rows = self._execute_prepared("grant", args)
                    if rows:
                        self._append([(name[len(RESERVED_LOCK_PREFIX):], "leader", self.member_id)])
                    return rows
                rows = self._transaction(body)
            else:
                rows = self._execute_prepared("grant", args)
            row = rows[0] if rows else None
        except psycopg2.OperationalError:
            raise
        except Exception:
            # The advisory lock outlives a failed statement: give it back.
            if not self.conn.cmd.closed:
                try:
                    self._run("SELECT pg_advisory_unlock(%s)", (key,), fetch="none")
                except Exception:
                    logger.debug("%r: could not give back the advisory lock of %r", self, name, exc_info=True)
            raise
        if row is None:
            self._contended.add(name)
            return None
        self._contended.discard(name)
        return int(row[0])

    # -- coalescing --------------------------------------------------------------

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        # One prepared statement whatever the batch: do_try_acquire's grant
        # for each name of one array, do_release's for each of another.
        acquires = [call.message.name for call, lease in run if lease is None]
        releases = [(call.message.name, lease.fence) for call, lease in run if lease is not None]
        sent_at = time.monotonic()
        try:
            rows = self._execute_prepared("batch", (
                self._ns, acquires, [lock_key(self._ns, name) for name in acquires], fence_floor(), self.member_id,
                self.session_token, [name for name, _fence in releases], [fence for _name, fence in releases], self._channel))
        except Exception:  # noqa: BLE001 - the usual path reports it, call by call
            self._give_back(acquires)
            for call, _lease in run:
                self._serve(call)
            return
        granted = {name: int(value) for is_grant, name, value, _notified in rows if is_grant}
        released = {name for is_grant, name, value, _notified in rows if not is_grant and value}
        freed = []
        for call, lease in run:
            name = call.message.name
            if lease is None:
                fence = granted.get(name)
                if fence is None:
                    self._contended.add(name)
                else:
                    self._contended.discard(name)
                self.settle_acquire(call, fence, sent_at)
            else:
                freed.append(name)
                self.settle_release(call, lease, name in released)
        self.retry_freed(freed)

    # Statements prepared on each command connection (planning the batch
    # statement cost more than running it).  name -> (parameter types, body).
    PREPARED: ClassVar[dict[str, tuple[str, str]]] = {
        # do_try_acquire's grant: (key, namespace, name, fence floor, member, token) -> fence, if granted
        "grant": (
            "(bigint, text, text, bigint, text, text)",
            "WITH l AS (SELECT pg_try_advisory_lock($1) AS ok) "
            "INSERT INTO {locks} AS k (namespace, name, key, fence, holder, token, pid) "
            "SELECT $2, $3, $1, $4, $5, $6, pg_backend_pid() FROM l WHERE l.ok "
            "ON CONFLICT (namespace, name) DO UPDATE SET fence = k.fence + 1, key = EXCLUDED.key, "
            "holder = EXCLUDED.holder, token = EXCLUDED.token, pid = EXCLUDED.pid RETURNING fence",
        ),
        # do_release: (namespace, name, fence, token, channel) -> (unlocked, notified) if the row was this grant
        "release": (
            "(text, text, bigint, text, text)",
            "WITH r AS (UPDATE {locks} SET holder = NULL, token = NULL, pid = NULL WHERE namespace = $1 AND name = $2 "
            "AND fence = $3 AND token = $4 AND pid = pg_backend_pid() RETURNING key) "
            "SELECT (SELECT pg_advisory_unlock(key) FROM r), (SELECT pg_notify($5, 'f' || $2) FROM r)",
        ),
        # flush_batch: grant every name of $2 (keys $3), release every (name, fence) of $7, $8
        "batch": (
            "(text, text[], bigint[], bigint, text, text, text[], bigint[], text)",
            "WITH want AS (SELECT u.n, u.k FROM unnest($2::text[], $3::bigint[]) AS u(n, k) WHERE pg_try_advisory_lock(u.k)), "
            "granted AS (INSERT INTO {locks} AS l (namespace, name, key, fence, holder, token, pid) "
            "SELECT $1, w.n, w.k, $4, $5, $6, pg_backend_pid() FROM want w "
            "ON CONFLICT (namespace, name) DO UPDATE SET fence = l.fence + 1, key = EXCLUDED.key, holder = EXCLUDED.holder, "
            "token = EXCLUDED.token, pid = EXCLUDED.pid RETURNING l.name, l.fence), "
            "freed AS (UPDATE {locks} l SET holder = NULL, token = NULL, pid = NULL FROM unnest($7::text[], $8::bigint[]) AS v(n, f) "
            "WHERE l.namespace = $1 AND l.name = v.n AND l.fence = v.f AND l.token = $6 AND l.pid = pg_backend_pid() "
            "RETURNING l.name, l.key) "
            "SELECT true, name, fence, NULL::text FROM granted "
            "UNION ALL SELECT false, name, pg_advisory_unlock(key)::int, pg_notify($9, 'f' || name)::text FROM freed",
        ),
    }

    def _execute_prepared(self, name: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run prepared statement ``name`` (preparing it on first use on this connection)."""
        statement = f"coordactors_{name}"
        if name not in self.conn.prepared:
            # A prepared statement outlives a rolled back transaction: this
            # one may travel with a pending BEGIN.
            types, body = self.PREPARED[name]
            self._run(f"PREPARE {statement}{types} AS " + body, None, fetch="none")
            self.conn.prepared.add(name)
        return list(self._run(f"EXECUTE {statement}({', '.join(['%s'] * len(args))})", args))

    def _give_back(self, names: list[str]) -> None:
        """After a failed batch: advisory locks outlive a failed statement; free those it may have taken."""
        if self.conn is None or self.conn.cmd.closed:
            return
        for name in names:
            try:
                self._run("SELECT pg_advisory_unlock(%s)", (lock_key(self._ns, name),), fetch="none")
            except Exception:  # noqa: BLE001
                logger.debug("%r: could not give back the advisory lock of %r", self, name, exc_info=True)
                return

    def _retry_contended(self, conn: _Connection) -> None:
        """Actor thread, every ``retry_interval``: try again the locks found taken.

        A release NOTIFYs, but a holder whose connection died frees its locks
        silently; this is how its waiters (and campaigners) notice."""
        if conn is self.conn and self._contended:
            names, self._contended = self._contended, set()
            self.wake(sorted(names))

    def do_release(self, name: str, fence: int) -> bool:
        rows = self._execute_prepared("release", (self._ns, name, fence, self.session_token, self._channel))
        return bool(rows and rows[0][0])

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        # The connection lives (this statement ran on it), so its advisory locks do too;
        # check that each lease's row is still ours and its key still held by us.
        # One row: this connection's advisory lock keys (read from pg_locks
        # once) and the leases' rows, matched here -- any join or EXISTS
        # against pg_locks per lease made the server compare every pair.
        row = self._run(
            "SELECT (SELECT array_agg((classid::bigint << 32) | objid::bigint) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND objsubid = 1 AND pid = pg_backend_pid() "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())), "
            "array_agg(l.name), array_agg(l.fence), array_agg(l.key) "
            "FROM {locks} l WHERE l.namespace = %s AND l.name = ANY(%s) AND l.token = %s AND l.pid = pg_backend_pid()",
            (self._ns, [lease.name for lease in leases], self.session_token), fetch="one",
        )
        advisory, names, fences, keys = (column or [] for column in row)
        mine = set(advisory)
        held = {(name, int(fence)) for name, fence, key in zip(names, fences, keys) if key in mine}
        return {(lease.name, lease.fence) for lease in leases} - held

    def do_lock_holder(self, name: str) -> str | None:
        row = self._run(
            "SELECT l.holder FROM {locks} l WHERE l.namespace = %s AND l.name = %s AND l.holder IS NOT NULL AND "
            + _HELD.format(pid="l.pid"),
            (self._ns, name), fetch="one",
        )
        return None if row is None else row[0]

    # -- liveness ---------------------------------------------------------------

    def do_heartbeat(self) -> None:
        row = self._run(
            "WITH u AS (UPDATE {members} SET expires = now() + %(ttl)s * interval '1 second' "
            "WHERE namespace = %(ns)s AND member = %(m)s AND token = %(tok)s AND expires > now() RETURNING grp) "
            "SELECT ARRAY(SELECT grp FROM u), EXISTS (SELECT 1 FROM {members} WHERE namespace = %(ns)s AND expires < now())",
            {"ttl": self.options.session_ttl, "ns": self._ns, "m": self.member_id, "tok": self.session_token},
            fetch="one",
        )
        refreshed, dead = set(row[0]), row[1]
        if dead:
            self._transaction(lambda: self._append(self._reap()))
        missing = set(self._joined) - refreshed
        if missing:
            raise errors.BackendUnavailable(
                f"the session of {self.member_id!r} on {self.url} expired: its membership of {sorted(missing)} was reaped after session_ttl"
            )

    def do_shutdown(self) -> None:
        pass

    # -- events -----------------------------------------------------------------

    def do_watch(self, group: str) -> None:
        row = self._run(
            "SELECT COALESCE((SELECT seq FROM {namespaces} WHERE namespace = %(ns)s), 0), "
            "ARRAY(SELECT member FROM {members} WHERE namespace = %(ns)s AND grp = %(g)s AND expires > now()), "
            "(SELECT l.holder FROM {locks} l WHERE l.namespace = %(ns)s AND l.name = %(lock)s AND l.holder IS NOT NULL AND "
            + _HELD.format(pid="l.pid") + ")",
            {"ns": self._ns, "g": group, "lock": leader_lock_name(group)}, fetch="one",
        )
        seq, members, leader = int(row[0]), set(row[1]), row[2]
        old = self._views.get(group)
        if old is not None:
            # Re-watched after a reconnect: replay the log from where this view
            # stopped, then report whatever the log no longer holds as a diff.
            if old[0] < seq:
                rows = self._run("SELECT seq, grp, kind, member FROM {events} WHERE namespace = %s AND grp = %s "
                                 "AND seq > %s AND seq <= %s ORDER BY seq", (self._ns, group, old[0], seq))
                for entry in rows:
                    self._apply(old, *entry)
            for member in sorted(old[1] - members):
                self.emit(MemberLeft(group, member))
            for member in sorted(members - old[1]):
                self.emit(MemberJoined(group, member))
            if leader is not None and leader != old[2]:
                self.emit(LeaderElected(group, leader))
        self._views[group] = [seq, members, leader]
        # The reader may have passed over events of this group before its
        # view existed (or be resting): it reads the log on from the view.
        self.conn.catch_up = True
        self.conn.poke()

    def do_unwatch(self, group: str) -> None:
        self._views.pop(group, None)

    def _follow(self, conn: _Connection, namespace: str, last_seq: int) -> None:
        """Reader thread: wait for notifications on the listening connection, read new events, hand them over.

        While the session neither watches a group nor waits for a lock it
        rests: it stops listening (a NOTIFY per release and per change in the
        namespace woke this thread, which cost each request of the session a
        thread switch) and only watches the socket for the connection
        dropping.  ``on_waiting`` and ``do_watch`` wake it; back to listening,
        it hands the actor what it may have missed: every waiter is retried,
        and the event log is read on from the oldest watched group's view.
        """
        listen = conn.listen
        query = sql.SQL("SELECT seq, grp, kind, member FROM {} WHERE namespace = %s AND seq > %s ORDER BY seq").format(
            sql.Identifier(self.options.extra.get("table_prefix", "coordactors_") + "events")).as_string(listen)
        channel = sql.Identifier(self._channel_of(namespace))
        toggle = {True: sql.SQL("LISTEN {}").format(channel).as_string(listen),
                  False: sql.SQL("UNLISTEN {}").format(channel).as_string(listen)}
        listening, missed = True, False
        try:
            fd = listen.fileno()
            while not conn.stopping.is_set():
                if conn.rest.settle(lambda: self._views or self._waiters or self._campaigns) == listening:
                    with listen.cursor() as cur:
                        cur.execute(toggle[not listening])
                    listening = not listening
                    missed = missed or listening
                readable, _, _ = select.select([fd, conn.wake_r], [], [], 0 if missed or conn.catch_up else 1.0)
                if conn.stopping.is_set():
                    return
                if conn.wake_r in readable:
                    os.read(conn.wake_r, 4096)
                if fd in readable:
                    listen.poll()
                if listen.closed:
                    raise psycopg2.OperationalError("the listening connection closed")
                notes, listen.notifies[:] = list(listen.notifies), []
                if not listening:
                    continue
                freed = sorted({n.payload[1:] for n in notes if n.payload.startswith("f")})
                # Only a session with waiters acts on a freed lock.  (A waiter
                # registered just after is covered by its own second try, see
                # RETRY_ONCE_WAITING.)  Back from a rest, every waiter is retried: a
                # lock may have been freed while nobody listened.
                if (missed or freed) and (self._waiters or self._campaigns):
                    self.run_on_actor(self._on_freed, conn, None if missed else freed)
                catch_up, conn.catch_up = conn.catch_up, False
                # Events matter only to a session that watches a group.  A
                # watch reads its group's snapshot first, so reading on from
                # the oldest view's number misses nothing it needs.
                views = list(self._views.values())
                logged = [n.payload for n in notes if n.payload.startswith("e")]
                if views and (missed or catch_up or logged):
                    after = max(last_seq, min(view[0] for view in views))
                    rows = None if missed or catch_up else events_in_notes(logged, after)
                    if rows is None:  # a note without its events, or a gap: read the log
                        with listen.cursor() as cur:
                            cur.execute(query, (namespace, after))
                            rows = cur.fetchall()
                    if rows:
                        last_seq = rows[-1][0]
                        self.run_on_actor(self._on_events, conn, rows)
                missed = False
        except Exception as exc:  # noqa: BLE001 - any failure here ends the session
            if not conn.stopping.is_set():
                self.run_on_actor(self._reader_failed, conn, exc)

    def _reader_failed(self, conn: _Connection, exc: Exception) -> None:
        if conn is self.conn:
            raise errors.BackendUnavailable(f"lost the LISTEN connection to {self.url}: {self._scrub(str(exc))}")

    def _on_freed(self, conn: _Connection, names: list[str] | None) -> None:
        if conn is self.conn:
            self.wake(names)

    def _on_events(self, conn: _Connection, rows: list[tuple[int, str, str, str]]) -> None:
        if conn is not self.conn:
            return
        for seq, group, kind, member in rows:
            view = self._views.get(group)
            if view is not None:
                self._apply(view, seq, group, kind, member)

    def _apply(self, view: list[Any], seq: int, group: str, kind: str, member: str) -> None:
        """Apply one logged event to a group's view, emitting it if it is news."""
        if seq > view[0]:
            view[0] = seq
            if kind == "join" and member not in view[1]:
                view[1].add(member)
                self.emit(MemberJoined(group, member))
            elif kind == "leave" and member in view[1]:
                view[1].discard(member)
                self.emit(MemberLeft(group, member))
            elif kind == "leader" and member != view[2]:
                view[2] = member
                self.emit(LeaderElected(group, member))

    # -- errors -----------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        password = self.options.password
        return message.replace(password, "***") if password else message

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        message = self._scrub(str(exc).strip())
        if isinstance(exc, psycopg2.OperationalError) and not isinstance(exc, psycopg2.errors.QueryCanceled):
            if "password authentication failed" in message or "authentication failed" in message:
                return errors.BackendUnavailable(f"{self.url} refused the credentials (authentication failed)")
            if "does not exist" in message:
                return errors.BackendUnavailable(f"{self.url} refused the connection: {message}")
            return errors.BackendUnavailable(f"{self.url} is unreachable: {message}")
        if isinstance(exc, (psycopg2.InterfaceError, psycopg2.errors.AdminShutdown, psycopg2.errors.QueryCanceled)):
            return errors.BackendUnavailable(f"the connection to {self.url} failed: {message}")
        if isinstance(exc, (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn, psycopg2.errors.DatatypeMismatch)):
            return errors.InvalidArgument(f"the coordactors tables on {self.url} are missing or in another format: {message}")
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            return errors.InvalidArgument(f"{self.url} refused: {message}")
        if isinstance(exc, psycopg2.Error):
            return errors.BackendUnavailable(f"{self.url} failed: {message}")
        return super().translate_error(exc)
