"""mysql://user[:password]@host:port/dbname: coordination through MySQL or MariaDB (PyMySQL).

Each session keeps ONE connection (autocommit), and that connection holds the
session's locks: MySQL's named locks (``GET_LOCK``) belong to the connection
that took them and vanish with it, so a lock lives exactly as long as the
session (``LEASE_TTL = False``: ``Acquire(ttl=...)`` is refused).  Everything
else lives in four InnoDB tables, created on first use in the URL's database
and shared by every namespace::

    <prefix>groups   (namespace, name)                       one row per group
    <prefix>members  (namespace, group_name, member, token,  one row per member;
                      capabilities, expires)                 ``expires`` is the server's clock
    <prefix>locks    (namespace, name, fence, holder,        the fence counter and the
                      holder_connection, granted_at)         holder's name, per lock
    <prefix>events   (id AUTO_INCREMENT, namespace,          the event log
                      group_name, kind, member)

Names (namespaces, groups, members, locks) are stored as UTF-8 bytes in
``VARBINARY`` columns and always passed as query parameters, so any name is
safe and compared byte for byte.

Locks and fences.  ``Acquire`` runs ``GET_LOCK(<key>, 0)`` -- never a waiting
timeout, which would stall every other request of the session; the base
queues waiters and retries them on every poll.  MySQL limits lock names to 64
characters and shares them across the whole server, so ``<key>`` is
``coordactors/`` + the SHA-1 of (database, table prefix, namespace, name); the
real name is in the ``locks`` row.  Once granted, the fence comes from the
row, in the same statement that records the holder::

    INSERT INTO <prefix>locks ... VALUES (..., LAST_INSERT_ID(<fence_floor()>), ...)
    ON DUPLICATE KEY UPDATE fence = LAST_INSERT_ID(fence + 1), holder = ..., ...
    SELECT LAST_INSERT_ID()

``LAST_INSERT_ID(expr)`` is per connection, so no other session's increment
can be read by mistake (it also comes back in the INSERT's reply, so the
``SELECT`` is only sent to a server that leaves it out); a missing row (first
use) is seeded from
``fence_floor()`` (microseconds since the epoch), so fences increase across
every holder even if the table is emptied.  Release is ``RELEASE_LOCK``;
refresh asks ``IS_USED_LOCK(<key>) = CONNECTION_ID()`` for every held lock
in one query; the holder is the ``locks`` row's member if that row names the
connection that ``IS_USED_LOCK`` reports.

Groups and liveness.  A member's row carries the session token (stable
across reconnects, so a restored session reclaims its memberships) and an
expiry, ``UTC_TIMESTAMP(6) + session_ttl``, pushed forward by every
heartbeat (one ``UPDATE`` for all of the session's rows; fewer rows than
expected means someone reaped us, so the session fails and is restored).
Rows past their expiry are dead: reads ignore them, and the reader (watchers,
every fifth poll; ``members()``; a join over a dead row) deletes them, with
their leave events.

Events.  Every change that has an event -- join, leave, reaping, a new
leader -- writes its row into ``<prefix>events`` in the same transaction,
after locking the group's row (``SELECT ... FOR UPDATE``).  That lock makes
the event ids of one group increase in commit order, which a bare
AUTO_INCREMENT does not (ids are handed out at insert, and transactions may
commit in another order), so a watcher that reads ``WHERE id > last_seen``
per group sees every event, once, in order.  MySQL cannot push, so watchers
poll (``POLLS``) every ``poll_interval`` with one query for all watched
groups.  Events older than ``event_retention`` are deleted by the reapers.

Losing the connection loses every lock (the server frees them when it sees
the connection close): the base reports ``LockLost`` and the supervisor
reconnects and restores memberships, watches and campaigns.  The session sets
its connection's ``wait_timeout`` to ``session_ttl`` (rounded up), so the
server also closes it -- and frees its locks -- when a holder's process
stalls or its host vanishes without closing the socket; the heartbeat keeps a
live session's connection busier than that.

Lock delay.  If the server restarts, it forgets every named lock at once,
while a holder still believes in its lease until its next heartbeat finds
the connection gone (at most one heartbeat interval).  With
``lock_delay=<seconds>`` no lock is granted while the server has been up for
less than that (Consul's lock-delay; off by default).

Characteristics: threads, processes and hosts; linearizable (every operation
is one transaction on one server).

URL: ``mysql://user[:password]@host[:port]/dbname`` (port 3306).

===================  =================================================  ============
option               meaning                                            default
===================  =================================================  ============
``namespace``        isolates all state (1-64 characters)               coordactors
``table_prefix``     prefix of the table names ([A-Za-z0-9_], <= 32)    coordactors\\_
``timeout``          seconds a statement may take before the session    min(5, session_ttl)
                     is declared lost
``lock_delay``       seconds after a server (re)start with no grants    none
``event_retention``  seconds an event is kept for late watchers         3600
``session_ttl``      as everywhere; ``none`` is refused                 10
===================  =================================================  ============
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import math
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pymysql  # type: ignore[import-untyped]
from pymysql.constants import CLIENT  # type: ignore[import-untyped]

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import NOT_BATCHED, Coalescing
from coordactors.backend_actors._mysql_wire import read_answers, send_query
from coordactors.backend_actors.base import SessionActor, fence_floor
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, optional_seconds, seconds

logger = logging.getLogger(__name__)

__all__ = ["MySQLSession", "lock_key", "table_columns"]

DEFAULT_PORT = 3306
REAP_EVERY = 5
"""Watchers look for expired members every this many polls (every 0.25 s by default)."""
TRANSACTION_ATTEMPTS = 5
"""A transaction chosen as a deadlock victim is retried this many times."""
_RETRYABLE = {1213}  # chosen as a deadlock victim
_NAMESPACE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_PREFIX = re.compile(r"[A-Za-z0-9_]{0,32}")

_EVENTS = {"join": MemberJoined, "leave": MemberLeft, "leader": LeaderElected}

_NAME = "VARBINARY(256) NOT NULL"
_SCHEMA: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    # table (without prefix): ((column, type), ...), keys
    "groups": (
        (("namespace", _NAME), ("name", _NAME), ("created", "DATETIME(6) NOT NULL")),
        "PRIMARY KEY (namespace, name)",
    ),
    "members": (
        (
            ("namespace", _NAME),
            ("group_name", _NAME),
            ("member", _NAME),
            ("token", "VARBINARY(64) NOT NULL"),
            ("capabilities", "LONGTEXT NOT NULL"),
            ("expires", "DATETIME(6) NOT NULL"),
        ),
        "PRIMARY KEY (namespace, group_name, member), KEY by_expiry (namespace, expires), KEY by_token (namespace, token)",
    ),
    "locks": (
        (
            ("namespace", _NAME),
            # A leader's lock is "__leader__/" + a group name of up to 256 bytes.
            ("name", "VARBINARY(300) NOT NULL"),
            ("fence", "BIGINT UNSIGNED NOT NULL"),
            ("holder", "VARBINARY(256) NULL"),
            ("holder_connection", "BIGINT UNSIGNED NULL"),
            ("granted_at", "DATETIME(6) NULL"),
        ),
        "PRIMARY KEY (namespace, name)",
    ),
    "events": (
        (
            ("id", "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT"),
            ("namespace", _NAME),
            ("group_name", _NAME),
            ("kind", "VARCHAR(8) NOT NULL"),
            ("member", _NAME),
            ("created", "DATETIME(6) NOT NULL"),
        ),
        "PRIMARY KEY (id), KEY by_group (namespace, group_name, id), KEY by_age (created)",
    ),
}


def table_columns() -> dict[str, list[str]]:
    """The column names each table (without prefix) must have, for tests and tools."""
    return {table: [name for name, _ in columns] for table, (columns, _) in _SCHEMA.items()}


PIPELINED_BATCHES = 2
"""Batch queries in flight at once on a session's connection (see flush_batch)."""
_KEYS_CACHED = 4096
"""Lock keys a session remembers before it starts over."""


def lock_key(database: str, prefix: str, namespace: str, name: str) -> str:
    """The server-wide ``GET_LOCK`` name of a lock (52 characters; MySQL allows 64)."""
    digest = hashlib.sha1(f"{database}\0{prefix}\0{namespace}\0{name}".encode()).hexdigest()
    return "coordactors/" + digest


def _namespace(value: str, what: str) -> str:
    if not _NAMESPACE.fullmatch(value):
        raise errors.InvalidArgument(f"option '{what}' must be 1-64 characters without control characters (got {value!r})")
    return value


def _prefix(value: str, what: str) -> str:
    if not _PREFIX.fullmatch(value):
        raise errors.InvalidArgument(f"option '{what}' must be at most 32 characters of A-Z a-z 0-9 _ (got {value!r})")
    return value


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _hex(raw: bytes) -> str:
    """``raw`` as a MySQL hex literal: a binary string no character of which needs escaping."""
    return f"X'{raw.hex()}'"


def _s(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)


_SERVER_ERRORS: dict[int, str] = {
    1044: "{url}: the user may not use the database {db!r} ({exc})",
    1045: "{url}: access denied -- wrong user name or password ({code})",
    1049: "{url}: the database {db!r} does not exist (create it first: CREATE DATABASE ...)",
    1142: "{url}: the user lacks a privilege coordactors needs ({exc})",
    1205: "{url}: a row lock was held too long by another session ({exc})",
    1213: "{url}: kept losing deadlocks ({exc})",
    2003: "{url} is unreachable ({exc})",
    2006: "{url} went away ({exc})",
    2013: "{url}: the connection was lost ({exc})",
}


class _SentBatch:
    """A batch's query, sent; its answer may still be due."""

    __slots__ = ("error", "run", "sent_at", "statements")

    def __init__(self, run: list[tuple[Call, Any]], statements: int, sent_at: float) -> None:
        self.run = run
        self.statements = statements
        self.sent_at = sent_at
        self.error: BaseException | None = None


class MySQLSession(Coalescing, SessionActor):
    """Session of ``mysql://user[:password]@host:port/dbname``: see the module docstring.

    Acquires and releases queued together (many callers sharing the
    coordinator) take one round trip per batch (three statements) instead of
    two per acquire and one per release, and the next batch is sent while
    one is in flight (two queries pipelined on the connection).
    """

    COALESCED = frozenset({Acquire, Release})

    CHARACTERISTICS = frozenset(
        {C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS, C.LINEARIZABLE}
    )
    DEFAULTS = {"session_ttl": 10.0}
    OPTIONS = {
        "namespace": _namespace,
        "table_prefix": _prefix,
        "timeout": seconds,
        "lock_delay": optional_seconds,
        "event_retention": seconds,
    }
    POLLS = True
    LEASE_TTL = False

    conn: Any

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        database = options.path.strip("/")
        if not database or "/" in database:
            raise errors.InvalidArgument(
                f"{options.redacted!r}: the URL's path must name one database (mysql://user@host:port/dbname)"
            )
        if options.session_ttl is None:
            raise errors.InvalidArgument(
                f"{options.redacted!r}: session_ttl=none is not possible on mysql, where a dead member is told "
                "from a live one by its expiry"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        extra = self.options.extra
        self.database = self.options.path.strip("/")
        self.namespace = extra.get("namespace", "coordactors")
        self._ns = _b(self.namespace)
        prefix = extra.get("table_prefix", "coordactors_")
        self.prefix = prefix
        self.tables = {table: f"`{prefix}{table}`" for table in _SCHEMA}
        ttl = self.options.session_ttl or 10.0
        self._ttl = ttl
        self._timeout = extra.get("timeout", min(5.0, ttl))
        self._held: dict[str, int] = {}
        """Locks held through the current connection: name -> fence."""
        self._groups: set[str] = set()
        """Groups joined (or reclaimed) through the current connection: heartbeat refreshes them."""
        self._last_seen: dict[str, int] = {}
        """Watched group -> id of the last event reported (kept across reconnects)."""
        self._grants_from = 0.0
        self._polls = 0
        self._keys: dict[str, str] = {}
        """Lock name -> its GET_LOCK key (a SHA-1 per request was a visible cost)."""

    def _key(self, name: str) -> str:
        keys = self._keys
        found = keys.get(name)
        if found is None:
            if len(keys) >= _KEYS_CACHED:
                keys.clear()
            found = keys[name] = lock_key(self.database, self.prefix, self.namespace, name)
        return found

    # -- connection -------------------------------------------------------------

    def open(self) -> Any:
        """Executor thread: connect; with ``lock_delay``, ask how long the server has been up."""
        options = self.options
        conn = pymysql.connect(
            host=options.host or "127.0.0.1",
            port=options.port or DEFAULT_PORT,
            user=options.username or "",
            password=options.password or "",
            database=self.database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=options.connect_timeout,
            read_timeout=self._timeout,
            write_timeout=self._timeout,
            # No TLS on the connection: PyMySQL would otherwise try a TLS
            # handshake whenever the server offers it (slow on loopback).
            ssl_disabled=True,
            local_infile=False,
            # UPDATE reports the rows it matched, not only those it changed:
            # the heartbeat counts the memberships it found.
            # MULTI_STATEMENTS: a batch of queued acquires and releases is
            # one round trip of three statements (its values are literals
            # that need no escaping: hex names, keys of [0-9a-z/]).
            client_flag=CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS,
            # wait_timeout: the server closes the connection -- freeing its
            # locks -- once it has been silent for session_ttl, so a holder
            # whose host died (no FIN, no RST) does not keep its locks until
            # TCP keepalive notices, hours later.  The heartbeat speaks every
            # session_ttl / 3, and the holder's own view of a lease ends
            # session_ttl after the heartbeat was SENT, before the server's
            # idle clock (started when the reply left) runs out.
            # innodb_lock_wait_timeout: a group row locked by a stalled
            # session makes others fail within the statement timeout.
            init_command=(
                f"SET SESSION wait_timeout = {math.ceil(self._ttl)}, "
                f"innodb_lock_wait_timeout = {max(1, math.ceil(self._timeout))}"
            ),
        )
        try:
            delay = options.extra.get("lock_delay")
            if delay:
                with conn.cursor() as cursor:
                    cursor.execute("SHOW GLOBAL STATUS LIKE 'Uptime'")  # MySQL and MariaDB alike
                    row = cursor.fetchone()
                uptime = float(row[1]) if row else 0.0
                conn.grants_from = time.monotonic() + max(0.0, delay - uptime)
        except BaseException:
            conn.close()
            raise
        return conn

    def on_connected(self) -> None:
        """Check (and if need be create) the tables; start the connection's bookkeeping afresh."""
        self._held = {}
        self._groups = set()
        self._grants_from = getattr(self.conn, "grants_from", 0.0)
        self._last_seen = {g: seen for g, seen in self._last_seen.items() if g in self.watched_groups}
        self._ensure_tables()

    def _ensure_tables(self) -> None:
        # Lower-cased: a server with lower_case_table_names=1 reports them so.
        names = {f"{self.prefix}{table}".lower(): table for table in _SCHEMA}
        rows = self._all(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            f"AND LOWER(TABLE_NAME) IN ({', '.join(['%s'] * len(names))})",
            list(names),
        )
        found: dict[str, set[str]] = {}
        for table_name, column in rows:
            found.setdefault(_s(table_name).lower(), set()).add(_s(column).lower())
        expected = table_columns()
        for table_name, present in found.items():
            table = names[table_name]
            if present != set(expected[table]):
                raise errors.InvalidArgument(
                    f"{self.url}: the table {table_name!r} exists but is not in coordactors' format (columns "
                    f"{sorted(present)}, expected {expected[table]}); it was left untouched -- drop it, or choose "
                    "another table_prefix"
                )
        for table, (columns, keys) in _SCHEMA.items():
            if f"{self.prefix}{table}".lower() in found:
                continue
            body = ", ".join(f"{name} {kind}" for name, kind in columns)
            self._run(
                f"CREATE TABLE IF NOT EXISTS {self.tables[table]} ({body}, {keys}) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )

    def close(self) -> None:
        """Close the connection: the server frees every lock it held."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            conn._force_close()

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
            code = exc.args[0]
            template = _SERVER_ERRORS.get(code)
            if template is not None:
                return errors.BackendUnavailable(template.format(url=self.url, db=self.database, exc=exc, code=code))
        if isinstance(exc, pymysql.err.InterfaceError):
            return errors.BackendUnavailable(f"{self.url}: the connection is closed ({exc})")
        if isinstance(exc, pymysql.err.OperationalError):
            return errors.BackendUnavailable(f"{self.url} failed: {exc}")
        if isinstance(exc, pymysql.err.MySQLError):
            return errors.BackendUnavailable(f"{self.url} refused a statement (a bug in coordactors, or a damaged table?): {exc}")
        if isinstance(exc, socket.timeout):
            return errors.BackendUnavailable(f"{self.url} did not answer within {self._timeout}s")
        if isinstance(exc, OSError):
            return errors.BackendUnavailable(f"{self.url} is unreachable ({exc})")
        return super().translate_error(exc)

    # -- statements -------------------------------------------------------------

    def _run(self, sql: str, args: Any = None) -> int:
        with self.conn.cursor() as cursor:
            return int(cursor.execute(sql, args))

    def _all(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def _one(self, sql: str, args: Any = None) -> tuple[Any, ...] | None:
        with self.conn.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchone()

    def _transaction(self, body: Callable[[], Any]) -> Any:
        """Run ``body`` in a transaction; retry it if InnoDB picks it as a deadlock victim."""
        for attempt in range(TRANSACTION_ATTEMPTS):
            self.conn.begin()
            try:
                result = body()
                self.conn.commit()
                return result
            except pymysql.err.OperationalError as exc:
                self._rollback()
                if exc.args and exc.args[0] in _RETRYABLE and attempt + 1 < TRANSACTION_ATTEMPTS:
                    continue
                raise
            except BaseException:
                self._rollback()
                raise
        raise AssertionError("unreachable")

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            logger.debug("%r: rollback failed", self, exc_info=True)

    def _lock_group(self, group: str) -> bool:
        """Inside a transaction: lock the group's row (serialising its events); False if there is none."""
        row = self._one(f"SELECT 1 FROM {self.tables['groups']} WHERE namespace = %s AND name = %s FOR UPDATE", (self._ns, _b(group)))
        return row is not None

    def _log(self, group: str, kind: str, member: str) -> None:
        """Inside a transaction holding the group's row: append an event."""
        self._run(
            f"INSERT INTO {self.tables['events']} (namespace, group_name, kind, member, created) "
            "VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))",
            (self._ns, _b(group), kind, _b(member)),
        )

    # -- groups -----------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        try:
            self._run(
                f"INSERT INTO {self.tables['groups']} (namespace, name, created) VALUES (%s, %s, UTC_TIMESTAMP(6))",
                (self._ns, _b(group)),
            )
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == 1062:
                raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already") from None
            raise

    def do_delete_group(self, group: str) -> None:
        def body() -> None:
            if not self._lock_group(group):
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            rows = self._all(
                f"SELECT member, expires > UTC_TIMESTAMP(6) FROM {self.tables['members']} "
                "WHERE namespace = %s AND group_name = %s FOR UPDATE",
                (self._ns, _b(group)),
            )
            alive = [m for m, live in rows if live]
            if alive:
                raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has {len(alive)} member(s)")
            for member, _ in rows:
                self._log(group, "leave", _s(member))
            self._run(f"DELETE FROM {self.tables['members']} WHERE namespace = %s AND group_name = %s", (self._ns, _b(group)))
            self._run(f"DELETE FROM {self.tables['groups']} WHERE namespace = %s AND name = %s", (self._ns, _b(group)))

        self._transaction(body)

    def do_get_groups(self) -> frozenset[str]:
        rows = self._all(f"SELECT name FROM {self.tables['groups']} WHERE namespace = %s", (self._ns,))
        return frozenset(_s(name) for (name,) in rows)

    def do_group_exists(self, group: str) -> bool:
        return self._one(f"SELECT 1 FROM {self.tables['groups']} WHERE namespace = %s AND name = %s", (self._ns, _b(group))) is not None

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        members = self.tables["members"]
        key = (self._ns, _b(group), _b(self.member_id))

        def body() -> None:
            if create:
                # Creates the group or, if it exists, locks its row all the same.
                self._run(
                    f"INSERT INTO {self.tables['groups']} (namespace, name, created) VALUES (%s, %s, UTC_TIMESTAMP(6)) "
                    "ON DUPLICATE KEY UPDATE name = name",
                    (self._ns, _b(group)),
                )
            elif not self._lock_group(group):
                raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
            row = self._one(
                f"SELECT expires > UTC_TIMESTAMP(6) FROM {members} WHERE namespace = %s AND group_name = %s AND member = %s FOR UPDATE",
                key,
            )
            if row is not None:
                if row[0]:
                    raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")
                # A dead row (its session stopped heartbeating): it leaves, then we join.
                self._run(f"DELETE FROM {members} WHERE namespace = %s AND group_name = %s AND member = %s", key)
                self._log(group, "leave", self.member_id)
            self._run(
                f"INSERT INTO {members} (namespace, group_name, member, token, capabilities, expires) "
                "VALUES (%s, %s, %s, %s, %s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND)",
                (*key, _b(self.session_token), capabilities_json, int(self._ttl * 1e6)),
            )
            self._log(group, "join", self.member_id)

        self._transaction(body)
        self._groups.add(group)

    def do_leave(self, group: str) -> None:
        def body() -> None:
            if not self._lock_group(group):
                raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
            deleted = self._run(
                f"DELETE FROM {self.tables['members']} WHERE namespace = %s AND group_name = %s AND member = %s AND token = %s",
                (self._ns, _b(group), _b(self.member_id), _b(self.session_token)),
            )
            if not deleted:
                raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")
            self._log(group, "leave", self.member_id)

        self._transaction(body)
        self._groups.discard(group)

    def do_get_members(self, group: str) -> frozenset[str]:
        rows = self._all(
            f"SELECT m.member, m.expires > UTC_TIMESTAMP(6) FROM {self.tables['groups']} g LEFT JOIN {self.tables['members']} m "
            "ON m.namespace = g.namespace AND m.group_name = g.name WHERE g.namespace = %s AND g.name = %s",
            (self._ns, _b(group)),
        )
        if not rows:
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        alive = frozenset(_s(m) for m, live in rows if m is not None and live)
        if any(m is not None and not live for m, live in rows):
            self._reap([group])
        return alive

    def do_get_capabilities(self, group: str, member: str) -> str:
        row = self._one(
            f"SELECT m.capabilities, m.expires > UTC_TIMESTAMP(6) FROM {self.tables['groups']} g LEFT JOIN {self.tables['members']} m "
            "ON m.namespace = g.namespace AND m.group_name = g.name AND m.member = %s WHERE g.namespace = %s AND g.name = %s",
            (_b(member), self._ns, _b(group)),
        )
        if row is None:
            raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
        if row[0] is None or not row[1]:
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return _s(row[0])

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        # Also how a restored session reclaims a membership that outlived its
        # connection: the token is the coordinator's, so the row is still ours.
        updated = self._run(
            f"UPDATE {self.tables['members']} SET capabilities = %s, expires = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND "
            "WHERE namespace = %s AND group_name = %s AND member = %s AND token = %s",
            (capabilities_json, int(self._ttl * 1e6), self._ns, _b(group), _b(self.member_id), _b(self.session_token)),
        )
        if not updated:
            if not self.do_group_exists(group):
                raise errors.GroupNotFound(f"cannot update capabilities in {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")
        self._groups.add(group)

    def _reap(self, groups: list[str] | None = None) -> None:
        """Delete members past their expiry (of ``groups``, or the namespace), with their leave events."""
        members = self.tables["members"]
        rows = self._all(
            f"SELECT DISTINCT group_name FROM {members} WHERE namespace = %s AND expires < UTC_TIMESTAMP(6)", (self._ns,)
        )
        wanted = None if groups is None else set(groups)
        for (raw,) in rows:
            group = _s(raw)
            if wanted is not None and group not in wanted:
                continue

            def body(group: str = group) -> None:
                if not self._lock_group(group):
                    return
                # Looked at again under the group's lock: a member may have
                # rejoined (or refreshed) since the first look.
                dead = self._all(
                    f"SELECT member FROM {members} WHERE namespace = %s AND group_name = %s AND expires < UTC_TIMESTAMP(6) FOR UPDATE",
                    (self._ns, _b(group)),
                )
                for (member,) in dead:
                    self._run(
                        f"DELETE FROM {members} WHERE namespace = %s AND group_name = %s AND member = %s",
                        (self._ns, _b(group), member),
                    )
                    self._log(group, "leave", _s(member))

            self._transaction(body)

    # -- locks ------------------------------------------------------------------

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        if name in self._held:
            return None  # GET_LOCK is re-entrant per connection: never count a second hold
        if self._grants_from and time.monotonic() < self._grants_from:
            return None  # lock_delay after a server (re)start
        key = self._key(name)
        row = self._one("SELECT GET_LOCK(%s, 0)", (key,))
        if row is None or row[0] != 1:
            return None
        try:
            fence = self._record_grant(name)
        except BaseException:
            try:
                self._one("SELECT RELEASE_LOCK(%s)", (key,))
            except Exception:
                logger.debug("%r: could not free %r after a failed grant", self, name, exc_info=True)
            raise
        self._held[name] = fence
        return fence

    def _record_grant(self, name: str) -> int:
        """Next fence and holder, in the lock's row (and a leader event, atomically)."""
        upsert = (
            f"INSERT INTO {self.tables['locks']} (namespace, name, fence, holder, holder_connection, granted_at) "
            "VALUES (%s, %s, LAST_INSERT_ID(%s), %s, CONNECTION_ID(), UTC_TIMESTAMP(6)) "
            "ON DUPLICATE KEY UPDATE fence = LAST_INSERT_ID(fence + 1), holder = %s, "
            "holder_connection = CONNECTION_ID(), granted_at = UTC_TIMESTAMP(6)"
        )
        args = (self._ns, _b(name), fence_floor(), _b(self.member_id), _b(self.member_id))
        if not name.startswith(RESERVED_LOCK_PREFIX):
            return self._next_fence(upsert, args)
        group = name[len(RESERVED_LOCK_PREFIX) :]

        def body() -> int:
            has_group = self._lock_group(group)
            fence = self._next_fence(upsert, args)
            if has_group:
                self._log(group, "leader", self.member_id)
            return fence

        return int(self._transaction(body))

    def _next_fence(self, upsert: str, args: Any) -> int:
        with self.conn.cursor() as cursor:
            cursor.execute(upsert, args)
            # The table has no AUTO_INCREMENT column, so the OK packet's insert
            # id can only be LAST_INSERT_ID(expr): this saves the SELECT's
            # round trip (about 50 us of 360 us per acquire+release).  A server
            # that does not report it gets asked.
            if cursor.lastrowid:
                return int(cursor.lastrowid)
            cursor.execute("SELECT LAST_INSERT_ID()")
            return int(cursor.fetchone()[0])

    # -- coalescing --------------------------------------------------------------

    def batch_item(self, msg: Any, names: set[str]) -> Any:
        """Plain acquires (None) and releases of held locks (the lease) are batched."""
        if type(msg) is Acquire:
            delayed = bool(self._grants_from and time.monotonic() < self._grants_from)
            if not delayed and msg.name not in self._held and self.batchable_acquire(msg, names):
                return None
        elif type(msg) is Release and self.batchable_release(msg, names) and self._held.get(msg.name) == self._leases[msg.name].fence:
            return self._leases[msg.name]
        return NOT_BATCHED

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        """Serve the run in one query (see :meth:`_batch_query`).  While it is
        in flight, the requests queued meanwhile that can join go out as the
        next query on the same connection (``take_queued``; MySQL answers a
        connection's queries in order), so the server works on one batch
        while the session answers the callers of the other.  What needs the
        connection for itself -- an acquire that will wait, a grant whose
        caller gave up, a batch that failed, served one by one -- runs once
        no answer is due, and its lock stays out of later batches until then."""
        names = {call.message.name for call, _lease in run}
        later: list[Callable[[], Any]] = []
        freed: list[str] = []
        sent = [self._send_batch(run)]
        due = collections.deque(sent)
        failed = False
        try:
            while due:
                if not failed and len(due) < PIPELINED_BATCHES:
                    taken = self.take_queued(names)
                    if taken:
                        sent.append(self._send_batch(taken))
                        due.append(sent[-1])
                batch = due.popleft()
                answers = self._read_batch(batch)
                if answers is None:
                    failed = True  # send no more: the connection may be gone
                    later.append(functools.partial(self._serve_one_by_one, batch.run))
                    continue
                names.difference_update(self._settle_batch(batch, *answers, freed=freed, later=later))
        except BaseException:
            # Left by an exception: no one can read the answers still due, so
            # the connection goes, and every caller of the flush not answered
            # yet is told (rejecting an answered call changes nothing).
            self._close_quietly()
            for batch in sent:
                for call, _lease in batch.run:
                    call.reply.reject(errors.BackendUnavailable(f"the session with {self.url} failed with {call.message!r} in flight"))
            raise
        for work in later:
            work()
        self.retry_freed(freed)

    def _batch_query(self, run: list[tuple[Call, Any]]) -> tuple[str, int]:
        """The query serving ``run``, and how many statements it has.

        Three statements: every GET_LOCK and RELEASE_LOCK of the run,
        answered as one string; the grant rows of the locks this connection
        now holds (IS_USED_LOCK, decided by the server after the first
        statement); their fences.  The rows change only under the locks, so
        the fences read are the ones just written.  Every value is a literal
        no escaping can touch -- names as hex, keys of [0-9a-z/] -- so the
        text goes as it is: with 16 callers, escaping the arguments and
        parsing a column per lock took a fifth of the session's CPU, which is
        what bounds its throughput."""
        acquired = [call.message.name for call, lease in run if lease is None]
        key = self._key
        statements = ["SELECT CONCAT_WS(',', " + ", ".join(
            f"IFNULL(GET_LOCK('{key(call.message.name)}', 0), 9)" if lease is None else f"IFNULL(RELEASE_LOCK('{key(call.message.name)}'), 9)"
            for call, lease in run) + ")"]
        if acquired:
            locks = self.tables["locks"]
            namespace = _hex(self._ns)
            batch = " UNION ALL ".join(f"SELECT {_hex(_b(name))} AS n, '{key(name)}' AS k" for name in acquired)
            statements.append(
                f"INSERT INTO {locks} (namespace, name, fence, holder, holder_connection, granted_at) "
                f"SELECT {namespace}, t.n, {fence_floor()}, {_hex(_b(self.member_id))}, CONNECTION_ID(), UTC_TIMESTAMP(6) FROM ({batch}) AS t "
                "WHERE IS_USED_LOCK(t.k) = CONNECTION_ID() "
                "ON DUPLICATE KEY UPDATE fence = fence + 1, holder = VALUES(holder), "
                "holder_connection = CONNECTION_ID(), granted_at = UTC_TIMESTAMP(6)"
            )
            statements.append(f"SELECT name, fence FROM {locks} WHERE namespace = {namespace} AND name IN ({', '.join(_hex(_b(name)) for name in acquired)})")
        return "; ".join(statements), len(statements)

    def _send_batch(self, run: list[tuple[Call, Any]]) -> _SentBatch:
        sql, statements = self._batch_query(run)
        batch = _SentBatch(run, statements, time.monotonic())
        try:
            send_query(self.conn, sql)
        except Exception as exc:  # noqa: BLE001 - the usual path reports it, call by call
            batch.error = exc
        return batch

    def _read_batch(self, batch: _SentBatch) -> tuple[list[int], dict[str, int]] | None:
        """The batch's GET_LOCK/RELEASE_LOCK answers and the fences of its
        grants; None if it failed."""
        if batch.error is not None:
            return None
        try:
            answers = read_answers(self.conn, batch.statements)
            results = [int(answer) for answer in _s(answers[0].rows[0][0]).split(",")]
            if len(results) != len(batch.run):
                raise RuntimeError(f"{len(results)} answers to {len(batch.run)} GET_LOCK/RELEASE_LOCK calls")
            fences = {_s(name): int(fence) for name, fence in answers[2].rows} if batch.statements == 3 else {}
        except Exception as exc:  # noqa: BLE001 - the usual path reports it, call by call
            logger.debug("%r: a batch failed", self, exc_info=exc)
            return None
        return results, fences

    def _settle_batch(self, batch: _SentBatch, results: list[int], fences: dict[str, int], *,
                      freed: list[str], later: list[Callable[[], Any]]) -> set[str]:
        """Answer the batch's callers; return the names of the locks it is done with."""
        done = set()
        for (call, lease), result in zip(batch.run, results):
            name = call.message.name
            if lease is not None:
                continue
            if result == 1 and name in fences:
                self._held[name] = fences[name]
                pending = self.settle_acquire(call, fences[name], batch.sent_at, later=later)
            elif result == 1:  # no fence row: should not happen; give the lock back, take the usual path
                later.append(functools.partial(self._serve_one_by_one, [(call, None)]))
                pending = True
            else:
                pending = self.settle_acquire(call, None, batch.sent_at, later=later)
            if not pending:
                done.add(name)
        for (call, lease), result in zip(batch.run, results):
            if lease is not None:
                self._held.pop(lease.name, None)
                freed.append(lease.name)
                self.settle_release(call, lease, result == 1)
                done.add(lease.name)
        return done

    def _serve_one_by_one(self, run: list[tuple[Call, Any]]) -> None:
        """After a batch failed (or granted a lock without its row): free the
        locks ``run`` may have taken, then serve its calls the usual way."""
        self._give_back([call.message.name for call, lease in run if lease is None])
        for call, _lease in run:
            self._serve(call)

    def _give_back(self, names: list[str]) -> None:
        """After a failed batch: free the locks it may have taken (RELEASE_LOCK
        of a lock this connection does not hold changes nothing)."""
        if not names:
            return
        try:
            self._one("SELECT " + ", ".join(["RELEASE_LOCK(%s)"] * len(names)), [self._key(name) for name in names])
        except Exception:  # noqa: BLE001
            logger.debug("%r: could not free %r after a failed batch", self, names, exc_info=True)

    def do_release(self, name: str, fence: int) -> bool:
        if self._held.get(name) != fence:
            return False
        row = self._one("SELECT RELEASE_LOCK(%s)", (self._key(name),))
        del self._held[name]
        return row is not None and row[0] == 1

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        # Nothing to extend (a lock lives with the connection): check that the
        # connection still holds each one, all in one query.
        held = [lease for lease in leases if self._held.get(lease.name) == lease.fence]
        lost = {(lease.name, lease.fence) for lease in leases if self._held.get(lease.name) != lease.fence}
        if held:
            # One row per lock NOT held any more (usually none): a column per
            # lock instead made PyMySQL parse a column description for each,
            # most of the heartbeat's time with 1,000 locks.
            keys = " UNION ALL ".join(f"SELECT {index} AS i, %s AS k" for index in range(len(held)))
            rows = self._all(f"SELECT t.i FROM ({keys}) AS t WHERE NOT (IS_USED_LOCK(t.k) <=> CONNECTION_ID())",
                             [self._key(lease.name) for lease in held])
            for (index,) in rows:
                lease = held[int(index)]
                lost.add((lease.name, lease.fence))
                self._held.pop(lease.name, None)
        return lost

    def do_lock_holder(self, name: str) -> str | None:
        row = self._one(
            f"SELECT IS_USED_LOCK(%s), l.holder, l.holder_connection FROM (SELECT 1) AS one "
            f"LEFT JOIN {self.tables['locks']} l ON l.namespace = %s AND l.name = %s",
            (self._key(name), self._ns, _b(name)),
        )
        if row is None or row[0] is None or row[2] is None or int(row[0]) != int(row[2]):
            return None  # free, or just taken by a session that has not written its row yet
        return _s(row[1])

    # -- liveness ---------------------------------------------------------------

    def do_heartbeat(self) -> None:
        refreshed = self._run(
            f"UPDATE {self.tables['members']} SET expires = UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND "
            "WHERE namespace = %s AND token = %s",
            (int(self._ttl * 1e6), self._ns, _b(self.session_token)),
        )
        if refreshed < len(self._groups):
            raise errors.BackendUnavailable(
                f"{self.url}: {len(self._groups) - refreshed} membership(s) of {self.member_id!r} expired and were "
                "removed by another session (was this process stalled longer than session_ttl?)"
            )

    # -- events -----------------------------------------------------------------

    def do_watch(self, group: str) -> None:
        if group in self._last_seen:
            return  # restored after a reconnect: the next poll reports what happened meanwhile
        row = self._one(
            f"SELECT COALESCE(MAX(id), 0) FROM {self.tables['events']} WHERE namespace = %s AND group_name = %s",
            (self._ns, _b(group)),
        )
        self._last_seen[group] = int(row[0]) if row else 0

    def do_unwatch(self, group: str) -> None:
        self._last_seen.pop(group, None)

    def do_poll(self) -> None:
        self._polls += 1
        if self._polls % REAP_EVERY == 0 and self.watched_groups:
            self._reap()
            if self._polls % (REAP_EVERY * 200) == 0:
                self._run(
                    f"DELETE FROM {self.tables['events']} WHERE created < UTC_TIMESTAMP(6) - INTERVAL %s SECOND LIMIT 1000",
                    (int(self.options.extra.get("event_retention", 3600)),),
                )
        watched = {g: seen for g, seen in self._last_seen.items() if g in self.watched_groups}
        if not watched:
            return
        rows = self._all(
            f"SELECT id, group_name, kind, member FROM {self.tables['events']} WHERE namespace = %s AND id > %s "
            f"AND group_name IN ({', '.join(['%s'] * len(watched))}) ORDER BY id",
            (self._ns, min(watched.values()), *(_b(g) for g in watched)),
        )
        for event_id, raw_group, kind, member in rows:
            group = _s(raw_group)
            if event_id <= self._last_seen.get(group, event_id):
                continue
            self._last_seen[group] = event_id
            self.emit(_EVENTS[_s(kind)](group, _s(member)))
