"""redis:// and rediss://: coordination through a Redis server (redis-py).

URL: ``redis://[[user]:password@]host[:port][/db][?options]`` (``rediss://``
for TLS).  Options, besides the common ones:

=====================  ====================================================
``namespace``          key prefix (default ``coordactors``)
``socket_timeout``     seconds a command may take (default 5)
``ssl_ca_certs``       CA bundle for ``rediss://``
``ssl_certfile``       client certificate for ``rediss://``
``ssl_keyfile``        client key for ``rediss://``
``ssl_cert_reqs``      ``required`` (default), ``optional`` or ``none``
``sentinel``           master name: resolve the master through Redis Sentinel
                       at ``host:port`` (and ``sentinel_fallback``)
``sentinel_fallback``  more sentinels, ``host:port,host:port``
=====================  ====================================================

Mechanisms (see ``redis_scripts`` for each script's contract):

* lock: ``SET NX PX`` plus the fence ``INCR`` in one Lua script; refresh and
  release only if the key still holds our token and fence.  A lease without
  its own TTL is kept for ``session_ttl`` and refreshed by the heartbeat.
* groups: a hash per group plus a liveness key per member with a TTL of
  ``session_ttl``; a member whose liveness key expired is reaped (it leaves,
  with its event) by the next look at the group.
* events: every change appends to a Redis stream in the same script, so the
  log cannot disagree with the state.  A reader thread per session follows it
  with a blocking ``XREAD`` on its own connection and hands entries to the
  actor: events are pushed, in the order Redis applied them, and lock
  releases wake waiters at once.  The heartbeat reconciles watched groups
  (reaping expired members), so a member that died silently still leaves.
  While the session neither watches nor waits, its reader rests (reads
  nothing) and later reads on from where it stopped; a watch skips entries
  from before its snapshot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
import redis.exceptions
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors import redis_scripts as scripts
from coordactors.backend_actors._coalesce import NOT_BATCHED, Coalescing
from coordactors.backend_actors._redis_wire import Script, Wire
from coordactors.backend_actors._rest import ReaderRest, RestingReader
from coordactors.backend_actors.base import SessionActor, fence_floor, leader_lock_name
from coordactors.characteristics import Characteristics as C
from coordactors.messages import Acquire, GetMembers, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, seconds, text

logger = logging.getLogger(__name__)

__all__ = ["RedisSession"]

STREAM_LENGTH = 10_000
"""Events kept in the stream (approximately: MAXLEN ~)."""

_CERT_REQS = {"required": "required", "optional": "optional", "none": "none"}


def _cert_reqs(value: str, what: str) -> str:
    if value.lower() not in _CERT_REQS:
        raise errors.InvalidArgument(f"option '{what}' must be required, optional or none (got {value!r})")
    return _CERT_REQS[value.lower()]


def _hosts(value: str, what: str) -> list[tuple[str, int]]:
    hosts = []
    for part in value.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise errors.InvalidArgument(f"option '{what}' must be host:port[,host:port...] (got {value!r})")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


class _Connection:
    """The command client, its connection the session talks on, the stream reader and its thread."""

    def __init__(self, client: redis.Redis, reader: redis.Redis) -> None:
        self.client = client
        self.wire = Wire(client)
        self.reader = reader
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.rest = ReaderRest()
        """The reader does not read the stream while the session neither watches nor waits."""


def _stream_id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


class RedisSession(Coalescing, RestingReader, SessionActor):
    """Session of ``redis://``: locks, groups and a stream of events in Redis.

    Acquires, releases and member listings queued together (many callers
    sharing the coordinator) go to Redis in one pipeline.
    """

    COALESCED = frozenset({Acquire, Release, GetMembers})

    CHARACTERISTICS = frozenset(
        {C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS}
    )
    DEFAULTS = {"session_ttl": 30.0}
    RETRY_ONCE_WAITING = True  # the reader drops "freed" entries while nobody waits
    OPTIONS = {
        "namespace": text,
        "socket_timeout": seconds,
        "ssl_ca_certs": text,
        "ssl_certfile": text,
        "ssl_keyfile": text,
        "ssl_cert_reqs": _cert_reqs,
        "sentinel": text,
        "sentinel_fallback": _hosts,
    }

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        path = options.path.strip("/")
        if path and not path.isdigit():
            raise errors.InvalidArgument(f"the path of a redis:// URL is the database number (got {options.path!r} in {options.redacted!r})")
        if options.scheme != "rediss" and any(k.startswith("ssl_") for k in options.extra):
            raise errors.InvalidArgument(f"ssl_* options need a rediss:// URL (got {options.redacted!r})")
        if options.session_ttl is None:
            raise errors.InvalidArgument("redis:// needs a session_ttl: memberships and locks live by TTL")

    # -- connection -------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        options, extra = self.options, self.options.extra
        kwargs: dict[str, Any] = {
            "db": int(options.path.strip("/") or 0),
            "username": options.username,
            "password": options.password,
            "socket_timeout": extra.get("socket_timeout", 5.0),
            "socket_connect_timeout": options.connect_timeout,
            "decode_responses": True,
            # No retries inside redis-py (version 8 retries even a refused
            # password, with backoff, for seconds): a failure fails the
            # session at once and the supervisor reconnects with its backoff.
            "retry": Retry(NoBackoff(), 0),
        }
        if options.scheme == "rediss":
            kwargs["ssl"] = True
            for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
                if key in extra:
                    kwargs[key] = extra[key]
        return kwargs

    def _new_client(self, **overrides: Any) -> redis.Redis:
        kwargs = {**self._client_kwargs(), **overrides}
        extra = self.options.extra
        if "sentinel" in extra:
            sentinels = [(self.options.host or "127.0.0.1", self.options.port or 26379), *extra.get("sentinel_fallback", [])]
            sentinel = redis.sentinel.Sentinel(sentinels, socket_timeout=kwargs["socket_timeout"])
            return sentinel.master_for(extra["sentinel"], redis_class=redis.Redis, **kwargs)
        return redis.Redis(host=self.options.host or "127.0.0.1", port=self.options.port or 6379, **kwargs)

    def open(self) -> _Connection:
        client = self._new_client()
        client.ping()
        # The reader blocks in XREAD for up to a second at a time.
        reader = self._new_client(socket_timeout=None)
        return _Connection(client, reader)

    def on_connected(self) -> None:
        # The same token across reconnects: memberships that outlived a
        # dropped connection are still ours to refresh, update or leave.
        self.token = self.session_token
        ns = self.options.extra.get("namespace", "coordactors")
        self._ns = ns
        self._stream = f"{ns}:events"
        self._groups_key = f"{ns}:groups"
        self._scripts = {name: Script(getattr(scripts, name)) for name in
                         ("JOIN", "LEAVE", "UPDATE", "MEMBERS", "DELETE_GROUP", "ACQUIRE", "RELEASE", "REFRESH")}
        self._watch_from: dict[str, tuple[int, int]] = {}
        """Watched group -> the stream's last entry before its snapshot."""
        start = self._last_stream_id() or "0-0"
        conn = self.conn
        conn.thread = threading.Thread(target=self._follow_stream, args=(conn, start), name=f"RedisEvents[{self.member_id}]", daemon=True)
        conn.thread.start()

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.stopping.set()
        conn.rest.stop()
        # Closing the reader's socket ends its blocking XREAD at once.
        conn.reader.connection_pool.disconnect()
        if conn.thread is not None and conn.thread is not threading.current_thread():
            conn.thread.join(5)
        conn.reader.close()
        conn.wire.close()
        conn.client.close()

    def _follow_stream(self, conn: _Connection, last_id: str) -> None:
        """Reader thread: follow the stream, hand entries to the actor.

        While the session neither watches a group nor waits for a lock it
        rests instead of reading: an entry per release and per change in the
        namespace woke this thread, which cost each request of the session a
        thread switch.  ``on_waiting`` and ``do_watch`` wake it, and it reads
        on from where it stopped: the stream kept what came meanwhile."""
        rested = False
        while not conn.stopping.is_set():
            if conn.rest.settle(lambda: self._waiters or self._campaigns or self._watch_from):
                rested = True
                conn.rest.wait(1.0)
                continue
            if rested and (self._waiters or self._campaigns):
                # Beyond the stream's length nothing is kept: retry every waiter once.
                self.run_on_actor(self._on_entries, conn, [])
            rested = False
            try:
                batches = conn.reader.xread({self._stream: last_id}, block=1000, count=1000)
            except Exception as exc:  # noqa: BLE001 - a socket closed under redis-py raises ValueError too
                if not conn.stopping.is_set():
                    self.run_on_actor(self._reader_failed, conn, exc)
                return
            for _stream, entries in batches or ():
                if entries:
                    last_id = entries[-1][0]
                    # Hand over only what this session acts on: waking the
                    # actor for every lock freed anywhere in the namespace
                    # cost each request a thread switch.
                    wanted = [entry for entry in entries if self._wants(entry[1])]
                    if wanted:
                        self.run_on_actor(self._on_entries, conn, wanted)

    def _wants(self, fields: dict[str, str]) -> bool:
        """Reader thread: does this session act on this stream entry?  (A
        waiter registered just after is covered by its own second try, see
        ``RETRY_ONCE_WAITING``; watching starts before the watch's snapshot.)"""
        if fields.get("k") == "free":
            return bool(self._waiters or self._campaigns)
        return bool(self._watch_from)

    def _reader_failed(self, conn: _Connection, exc: Exception) -> None:
        if conn is self.conn:
            raise errors.BackendUnavailable(f"lost the event stream of {self.url}: {exc}") from exc

    def _on_entries(self, conn: _Connection, entries: list[tuple[str, dict[str, str]]]) -> None:
        if conn is not self.conn:
            return
        if not entries:
            self.wake()  # the reader rested and may have passed over freed locks
            return
        freed = []
        for entry_id, fields in entries:
            group, kind, member = fields.get("g", ""), fields.get("k", ""), fields.get("m", "")
            if kind == "free":
                freed.append(group)
                continue
            if group not in self._snapshots or _stream_id(entry_id) <= self._watch_from.get(group, (0, 0)):
                continue  # not watched, or older than the watch's snapshot
            self.apply_logged(group, kind, member)
        if freed:
            self.wake(freed)

    # -- coalescing -----------------------------------------------------------

    def batch_item(self, msg: Any, names: set[str]) -> Any:
        """Acquires and releases that need no waiting, and listings, are
        pipelined as ``(kind, data)``; a contended lock or a release of a lease
        not held is served the usual way."""
        kind = type(msg)
        if kind is Acquire and self.batchable_acquire(msg, names):
            return "acquire", self.lease_ttl_of(msg)
        if kind is Release and self.batchable_release(msg, names):
            return "release", self._leases[msg.name]
        if kind is GetMembers:
            return "members", None
        return NOT_BATCHED

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        sent_at = time.monotonic()
        # EVALSHA straight away, in one write.  A server that lost the
        # scripts answers NOSCRIPT: those calls then take the usual path,
        # which loads them.
        commands: list[tuple[Any, ...]] = []
        for call, (kind, data) in run:
            msg = call.message
            if kind == "acquire":
                commands.append(("EVALSHA", self._scripts["ACQUIRE"].sha, 4, self._lock_key(msg.name), self._fence_key(msg.name), self._stream,
                                 self._waiting_key(msg.name), f"{self.token}|", f"|{self.member_id}", self._ttl_ms(data), fence_floor(),
                                 "", self.member_id, STREAM_LENGTH, self._ttl_ms(None)))
            elif kind == "release":
                commands.append(("EVALSHA", self._scripts["RELEASE"].sha, 3, self._lock_key(msg.name), self._stream, self._waiting_key(msg.name),
                                 self._lock_value(data.fence), msg.name, STREAM_LENGTH))
            else:
                commands.append(("EVALSHA", self._scripts["MEMBERS"].sha, 3, self._groups_key, self._group_key(msg.group), self._stream,
                                 msg.group, f"{self._ns}:alive:", STREAM_LENGTH))
        try:
            results = self.conn.wire.many(commands)
        except Exception:  # noqa: BLE001 - the usual path reports it, call by call
            for call, _item in run:
                self._serve(call)
            return
        freed = []
        for (call, (kind, data)), result in zip(run, results):
            msg = call.message
            if isinstance(result, redis.exceptions.NoScriptError):
                self._serve(call)
            elif isinstance(result, Exception):
                self._reject(call, self._translated(result))
            elif kind == "acquire":
                self.settle_acquire(call, None if result is None else int(result), sent_at)
            elif kind == "release":
                freed.append(msg.name)
                self.settle_release(call, data, bool(result))
            elif result is None:
                self._reject(call, errors.GroupNotFound(f"cannot list the members of {msg.group!r}: no such group"))
            else:
                self._deliver(call, frozenset(result))
        self.retry_freed(freed)

    def _last_stream_id(self) -> str | None:
        """The id of the stream's newest entry (None: the stream is empty)."""
        last = self.conn.wire.call("XREVRANGE", self._stream, "+", "-", "COUNT", 1)
        return last[0][0] if last else None

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua script named ``script`` (see ``redis_scripts``)."""
        return self.conn.wire.evalsha(self._scripts[script], keys, args)

    # -- keys -------------------------------------------------------------------

    def _group_key(self, group: str) -> str:
        return f"{self._ns}:group:{group}"

    def _alive_key(self, group: str, member: str) -> str:
        return f"{self._ns}:alive:{group}\x1f{member}"

    def _lock_key(self, name: str) -> str:
        return f"{self._ns}:lock:{name}"

    def _fence_key(self, name: str) -> str:
        return f"{self._ns}:fence:{name}"

    def _waiting_key(self, name: str) -> str:
        return f"{self._ns}:waiting:{name}"

    def _ttl_ms(self, ttl: float | None) -> int:
        seconds_ = ttl if ttl is not None else self.options.session_ttl
        return max(1, int(seconds_ * 1000))

    def _entry(self, capabilities_json: str) -> str:
        return json.dumps({"caps": capabilities_json, "token": self.token}, separators=(",", ":"))

    # -- groups ---------------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        if not self.conn.wire.call("SADD", self._groups_key, group):
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already")

    def do_delete_group(self, group: str) -> None:
        result = self._eval(
            "DELETE_GROUP",
            [self._groups_key, self._group_key(group), self._stream, self._lock_key(leader_lock_name(group))],
            [group, f"{self._ns}:alive:", STREAM_LENGTH],
        )
        if result == "nogroup":
            raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
        if result == "notempty":
            raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has members")

    def do_get_groups(self) -> frozenset[str]:
        return frozenset(self.conn.wire.call("SMEMBERS", self._groups_key))

    def do_group_exists(self, group: str) -> bool:
        return bool(self.conn.wire.call("SISMEMBER", self._groups_key, group))

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        result = self._eval(
            "JOIN",
            [self._groups_key, self._group_key(group), self._alive_key(group, self.member_id), self._stream],
            [group, self.member_id, self._entry(capabilities_json), self.token, self._ttl_ms(None), "1" if create else "0", STREAM_LENGTH],
        )
        if result == "nogroup":
            raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
        if result == "exists":
            raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")

    def do_leave(self, group: str) -> None:
        result = self._eval(
            "LEAVE",
            [self._groups_key, self._group_key(group), self._alive_key(group, self.member_id), self._stream],
            [group, self.member_id, self.token, STREAM_LENGTH],
        )
        if result == "nogroup":
            raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
        if result == "notjoined":
            raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")

    def do_get_members(self, group: str) -> frozenset[str]:
        members = self._eval("MEMBERS", [self._groups_key, self._group_key(group), self._stream], [group, f"{self._ns}:alive:", STREAM_LENGTH])
        if members is None:
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        return frozenset(members)

    def do_get_capabilities(self, group: str, member: str) -> str:
        replies = self.conn.wire.many([("SISMEMBER", self._groups_key, group), ("HGET", self._group_key(group), member),
                                       ("EXISTS", self._alive_key(group, member))])
        failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if failed is not None:
            raise failed
        exists, entry, alive = replies
        if not exists:
            raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
        if entry is None or not alive:
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return json.loads(entry)["caps"]  # type: ignore[no-any-return]

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        result = self._eval(
            "UPDATE",
            [self._groups_key, self._group_key(group), self._alive_key(group, self.member_id)],
            [group, self.member_id, self._entry(capabilities_json), self.token],
        )
        if result == "nogroup":
            raise errors.GroupNotFound(f"cannot update capabilities in {group!r}: no such group")
        if result == "notjoined":
            raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")

    # -- locks ------------------------------------------------------------------------

    def _lock_value(self, fence: int) -> str:
        return f"{self.token}|{fence}|{self.member_id}"

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        leader_group = name[len(RESERVED_LOCK_PREFIX):] if name.startswith(RESERVED_LOCK_PREFIX) else ""
        fence = self._eval(
            "ACQUIRE",
            [self._lock_key(name), self._fence_key(name), self._stream, self._waiting_key(name)],
            [f"{self.token}|", f"|{self.member_id}", self._ttl_ms(ttl), fence_floor(), leader_group, self.member_id, STREAM_LENGTH,
             self._ttl_ms(None)],
        )
        return None if fence is None else int(fence)

    def do_release(self, name: str, fence: int) -> bool:
        released = self._eval("RELEASE", [self._lock_key(name), self._stream, self._waiting_key(name)], [self._lock_value(fence), name, STREAM_LENGTH])
        return bool(released)

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        keys = [self._lock_key(lease.name) for lease in leases]
        values = [self._lock_value(lease.fence) for lease in leases]
        ttls = [self._ttl_ms(lease.ttl) for lease in leases]
        results = self._eval("REFRESH", keys, [*values, *ttls])
        return {(lease.name, lease.fence) for lease, ok in zip(leases, results) if not ok}

    def do_lock_holder(self, name: str) -> str | None:
        value = self.conn.wire.call("GET", self._lock_key(name))
        if value is None:
            return None
        parts = value.split("|", 2)
        if len(parts) != 3:
            raise errors.InvalidArgument(f"the key of lock {name!r} holds data in a format coordactors does not know; it was left untouched")
        return parts[2]

    # -- liveness and events ---------------------------------------------------------------

    def do_heartbeat(self) -> None:
        joined = list(self._joined)
        if joined:
            keys = [self._alive_key(group, self.member_id) for group in joined]
            results = self._eval("REFRESH", keys, [*([self.token] * len(keys)), *([self._ttl_ms(None)] * len(keys))])
            if not all(results):
                raise errors.BackendUnavailable(
                    f"the session of {self.member_id!r} on {self.url} expired: its memberships were reaped after session_ttl"
                )
        # Reconciliation: reap silently dead members of watched groups (their
        # leave events then reach everyone through the stream) and repair any
        # snapshot that drifted.
        for group in list(self._snapshots):
            self.resync(group)

    def do_watch(self, group: str) -> None:
        # Where the stream stood before the snapshot: entries up to there are
        # in it (a reader that rested hands over older ones too).
        last = self._last_stream_id()
        self._watch_from[group] = _stream_id(last) if last else (0, 0)
        self.on_waiting()
        self.snapshot(group)

    def do_unwatch(self, group: str) -> None:
        self.forget_snapshot(group)
        self._watch_from.pop(group, None)

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        if isinstance(exc, redis.exceptions.AuthenticationError):
            return errors.BackendUnavailable(f"{self.url} refused the credentials (authentication failed)")
        if isinstance(exc, redis.exceptions.ResponseError) and "WRONGTYPE" in str(exc):
            namespace = self.options.extra.get("namespace", "coordactors")
            return errors.InvalidArgument(
                f"a key under namespace {namespace!r} on {self.url} holds data in a format coordactors does not know; it was left untouched"
            )
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)):
            return errors.BackendUnavailable(f"{self.url} is unreachable: {exc}")
        if isinstance(exc, redis.exceptions.RedisError):
            return errors.BackendUnavailable(f"{self.url} failed: {exc}")
        return super().translate_error(exc)
