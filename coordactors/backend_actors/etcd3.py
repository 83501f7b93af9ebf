"""etcd3+http://: coordination through etcd v3's JSON gateway (etcd3gw).

URL: ``etcd3+http://[user:password@]host[:port][?options]`` (``etcd3://`` is
an alias).  The gateway serves the v3 API as JSON over HTTP (etcd 3.4 and
later at ``/v3/``).  Options, besides the common ones:

===================  ======================================================
``namespace``        key prefix isolating all state (default ``coordactors``)
``request_timeout``  seconds one request may take (default: the smaller of
                     5 and ``session_ttl``)
``api_path``         the gateway's path (default ``/v3/``; ``/v3beta/`` for
                     etcd 3.3)
===================  ======================================================

``session_ttl`` is required and rounded up to whole seconds (etcd leases
count seconds); ``lease_ttl`` is not supported: a lock lives exactly as long
as the session.

Mechanisms:

* session: ONE etcd lease per connection, TTL ``session_ttl``, kept alive by
  the heartbeat (``lease/keepalive``).  A keepalive that finds the lease gone
  fails the session, and the supervisor restores it on a new lease.
* lock: a transaction creating the lock key only if absent
  (``create_revision == 0``), attached to the session lease.  The fence is
  the key's ``create_revision`` (etcd's global revision, so it rises
  strictly across every creation of the key, whoever the holder) plus the
  namespace's epoch: a ``fence_floor()`` written once into ``<ns>/epoch``.
  An etcd that lost its data restarts its revisions from 1; the epoch key
  is then re-created with a later floor, and every acquire compares the
  epoch key's ``create_revision`` in the same transaction, so fences keep
  rising.  Release and refresh compare the lock key's ``create_revision``
  and lease, so a key re-created by someone else is never mistaken for
  ours.  A restored session deletes lock keys it still holds on a lost
  lease (new create, new fence) and revokes its old leases after its first
  heartbeat, so what it gave up as lost is freed before ``session_ttl``.
* groups: a key per group; a key per member, under the session lease, holding
  the capabilities.  Leader election is the lock named after the group.
* events: one watch stream per connection over the whole namespace, started
  from the revision after the session lease was granted.  etcd delivers the
  PUTs and DELETEs in revision order, so joins, leaves and leader changes are
  exact; a watched group's snapshot is read in one transaction and events
  at or below its revision are skipped, so none is counted twice.  Deleted
  lock keys wake the waiters for that lock.  The stream is read by a thread
  on its own HTTP connection, which ``close`` shuts down at once.

Keys (names are percent-encoded, so '/', '.', '..' and quotes are safe):
``<ns>/groups/<group>``, ``<ns>/members/<group>/<member>``,
``<ns>/locks/<name>``, ``<ns>/epoch``.  A key there holding a value this
module did not write is reported (InvalidArgument) and never overwritten.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import socket
import threading
import time
import urllib.parse
from typing import Any

import requests
from etcd3gw import exceptions as etcd_exceptions
from etcd3gw.client import Etcd3Client

from coordactors import errors
from coordactors.backend_actors._endpoints import Endpoints, url_hosts
from coordactors.backend_actors._keepalive import CONNECT_FAILED, KeepAliveSession
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import Coalescing
from coordactors.backend_actors.base import SessionActor, fence_floor, leader_lock_name
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, seconds, text

logger = logging.getLogger(__name__)

__all__ = ["Etcd3Session"]

GROUP_MARKER = "coordactors-group"
MAX_TXN_OPS = 128
"""etcd refuses a transaction of more operations than its ``--max-txn-ops`` (128 by default)."""
"""The value of a group's key: anything else there was written by someone else."""


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _prefix_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _api_path(value: str, what: str) -> str:
    path = "/" + value.strip("/") + "/"
    if path == "//" or any(c in value for c in "?#"):
        raise errors.InvalidArgument(f"option '{what}' must be a path such as /v3/ (got {value!r})")
    return path


DEFAULT_PORT = 2379



class _WatchCancelled(ConnectionError):
    """etcd cancelled the watch (its start revision was compacted...): re-opening it cannot help."""


class _Connection:
    """The gateway client, the session lease and the watch stream's reader."""

    def __init__(self, client: Etcd3Client, lease_id: int, revision: int, token: str | None) -> None:
        self.client = client
        self.lease_id = lease_id
        self.revision = revision
        self.auth_token = token
        self.watch: http.client.HTTPConnection | None = None
        self.stream: http.client.HTTPResponse | None = None
        self.watch_host: tuple[str, int] | None = None
        self.next_revision = revision + 1
        """Where a re-opened watch stream starts: after the last event read."""
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.revoked = False


class Etcd3Session(Coalescing, SessionActor):
    """Session of ``etcd3+http://``: a lease, create-if-absent transactions and a watch stream.

    Acquires and releases queued together (many callers sharing the
    coordinator) are one transaction: each its own nested transaction
    (etcd 3.3+), with the compares and effects it has alone.
    """

    COALESCED = frozenset({Acquire, Release})
    MAX_BATCH = 64  # within etcd's --max-txn-ops (128) operations per transaction

    # Every read is a default (linearizable, not serializable) range served
    # through the raft leader, as ZooKeeper's sync'd reads are.
    CHARACTERISTICS = frozenset(
        {C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS,
         C.LINEARIZABLE, C.SEQUENTIAL, C.CAUSAL, C.SAME_VIEW_UNDER_PARTITIONS}
    )
    DEFAULTS = {"session_ttl": 30.0}
    OPTIONS = {"namespace": text, "request_timeout": seconds, "api_path": _api_path}
    LEASE_TTL = False
    RETRY_ONCE_WAITING = True  # the watch reader drops deleted locks while nobody waits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._endpoints = Endpoints(url_hosts(self.options, DEFAULT_PORT), self.options.backoff_initial, self.options.backoff_max)

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        if not options.host:
            raise errors.InvalidArgument(f"{options.scheme}:// needs a host: {options.scheme}://host[:port][,host[:port]...] (got {options.redacted!r})")
        url_hosts(options, DEFAULT_PORT)
        if options.path.strip("/"):
            raise errors.InvalidArgument(
                f"an etcd3+http:// URL has no path: use ?namespace= to isolate state (got {options.path!r} in {options.redacted!r})"
            )
        if options.session_ttl is None:
            raise errors.InvalidArgument("etcd3+http:// needs a session_ttl: memberships and locks live by an etcd lease")
        if options.lease_ttl is not None:
            raise errors.InvalidArgument(
                f"option 'lease_ttl' is not supported on {options.scheme}://: a lock lives exactly as long as the "
                "session's etcd lease (see session_ttl)"
            )
        namespace = options.extra.get("namespace", "coordactors")
        if not namespace or any(ord(c) < 32 for c in namespace):
            raise errors.InvalidArgument(f"option 'namespace' must be a non-empty name without control characters (got {namespace!r})")
        if options.username is not None and options.password is None:
            raise errors.InvalidArgument(f"a user name needs a password in {options.redacted!r}")

    # -- connection -------------------------------------------------------------

    @property
    def _timeout(self) -> float:
        return float(self.options.extra.get("request_timeout", min(5.0, self.options.session_ttl or 5.0)))

    def open(self) -> _Connection:
        options = self.options
        session = KeepAliveSession()  # requests' own costs ~0.5 ms of Python per call: see _keepalive
        host, port = self._endpoints.current()
        client = Etcd3Client(
            host=host,
            port=port,
            timeout=(min(options.connect_timeout, self._timeout), self._timeout),  # type: ignore[arg-type]
            api_path=options.extra.get("api_path", "/v3/"),
            session=session,  # type: ignore[arg-type]
        )
        try:
            token = None
            if options.username is not None:
                reply = self._call(client, "/auth/authenticate", {"name": options.username, "password": options.password})
                token = reply["token"]
                session.headers["Authorization"] = token
            ttl = max(1, math.ceil(self.options.session_ttl or 1))
            granted = self._call(client, "/lease/grant", {"TTL": ttl, "ID": 0})
            if "ID" not in granted:
                raise errors.BackendUnavailable(f"{options.redacted} granted no lease: {granted.get('error', granted)!r}")
            return _Connection(client, int(granted["ID"]), int(granted["header"]["revision"]), token)
        except BaseException:
            session.close()
            raise

    def on_connected(self) -> None:
        self._stale_leases: list[int] = getattr(self, "_stale_leases", [])
        self._ns = self.options.extra.get("namespace", "coordactors").rstrip("/") + "/"
        self._views: dict[str, list[Any]] = {}
        self._watching: set[str] = set()
        """Watched groups, from before their snapshot is read (see ``_wants``)."""
        self._load_epoch()
        conn = self.conn
        conn.watch, conn.stream = self._open_watch(conn)
        conn.thread = threading.Thread(target=self._follow, args=(conn,), name=f"Etcd3Watch[{self.member_id}]", daemon=True)
        conn.thread.start()

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.stopping.set()
        # Its lease may outlive this connection (a lost keepalive, a network
        # split): the next connection revokes it once restored.
        stale = getattr(self, "_stale_leases", None)
        if stale is not None and not conn.revoked:
            stale.append(conn.lease_id)
        watch = conn.watch
        if watch is not None:
            # Shutting the socket down ends the reader's blocking read at once.
            sock = watch.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if conn.thread is not None and conn.thread is not threading.current_thread():
            conn.thread.join(5)
        if watch is not None:
            watch.close()
        conn.client.session.close()

    # -- the watch stream ---------------------------------------------------------

    def _open_watch(self, conn: _Connection) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Open the namespace's watch stream, from ``conn.next_revision``, on
        any server of the URL that accepts it."""
        last: Exception | None = None
        for host in self._endpoints.rotation():
            try:
                opened = self._open_watch_on(conn, host)
            except (OSError, http.client.HTTPException, errors.BackendUnavailable) as exc:
                self._endpoints.failed(host)
                last = exc
                continue
            conn.watch_host = host
            return opened
        assert last is not None
        raise last

    def _open_watch_on(self, conn: _Connection, host: tuple[str, int]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Open the watch stream on its own HTTP connection to ``host`` (requests
        cannot be interrupted mid-read from another thread; a raw socket can)."""
        prefix = self._ns.encode("utf-8")
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(_prefix_end(prefix)),
                "start_revision": conn.next_revision,
            }
        }
        http_conn = http.client.HTTPConnection(host[0].strip("[]"), host[1], timeout=self._timeout)
        headers = {"Content-Type": "application/json"}
        if conn.auth_token is not None:
            headers["Authorization"] = conn.auth_token
        try:
            http_conn.request("POST", conn.client.get_url("/watch")[len(conn.client.base_url):], body=json.dumps(request), headers=headers)
            response = http_conn.getresponse()
            if response.status != 200:
                raise errors.BackendUnavailable(f"{self.url} refused the watch stream: HTTP {response.status}")
            line = response.readline()
            created = json.loads(line).get("result", {}) if line.strip() else {}
            if not created.get("created"):
                raise errors.BackendUnavailable(f"{self.url} did not open the watch stream: {line[:200]!r}")
            # From now on the reader blocks until events come, however long.
            if http_conn.sock is not None:
                http_conn.sock.settimeout(None)
        except BaseException:
            http_conn.close()
            raise
        return http_conn, response

    def _follow(self, conn: _Connection) -> None:
        """Reader thread: read the stream; with several servers, re-open it on
        another (from the revision after the last event read) when it breaks."""
        retries = 2 * len(self._endpoints) if len(self._endpoints) > 1 else 0
        failures = 0
        response = conn.stream
        while not conn.stopping.is_set():
            opened_at = conn.next_revision
            try:
                if response is None:
                    conn.watch, response = self._open_watch(conn)
                    conn.stream = response
                    if conn.stopping.is_set():  # close() may have missed the new socket
                        conn.watch.close()
                        return
                self._read_stream(conn, response)
            except Exception as exc:  # noqa: BLE001 - any end of the stream
                if conn.stopping.is_set():
                    return
                if conn.next_revision > opened_at:
                    failures = 0  # the stream had delivered: a new failure, not the same one
                if failures >= retries or isinstance(exc, _WatchCancelled):
                    self.run_on_actor(self._watch_failed, conn, exc)
                    return
                failures += 1
                if conn.watch_host is not None:
                    self._endpoints.failed(conn.watch_host)
                if conn.watch is not None:
                    conn.watch.close()
                response = None
                conn.stopping.wait(min(self.options.backoff_max, self.options.backoff_initial * failures))

    def _read_stream(self, conn: _Connection, response: http.client.HTTPResponse) -> None:
        """Parse the stream, hand each batch of events to the actor; return when stopping."""
        while not conn.stopping.is_set():
            line = response.readline()
            if not line:
                raise ConnectionError("the server closed the watch stream")
            if not line.strip():
                continue
            result = json.loads(line).get("result")
            if result is None:
                raise ConnectionError(f"the watch stream reported {line[:200]!r}")
            if result.get("canceled") or result.get("compact_revision"):
                raise _WatchCancelled(f"the server cancelled the watch: {result.get('cancel_reason', 'compacted')}")
            events = [
                (
                    event.get("type", "PUT"),
                    _unb64(event["kv"]["key"]).decode("utf-8", "replace"),
                    _unb64(event["kv"].get("value", "")),
                    int(event["kv"].get("mod_revision", 0)),
                )
                for event in result.get("events", ())
            ]
            if events:
                conn.next_revision = max(revision for *_rest, revision in events) + 1
                # Hand over only what this session acts on: waking the actor
                # for every change in the namespace (its own acquires and
                # releases among them) cost each request a thread switch.
                wanted = [event for event in events if self._wants(event[0], event[1])]
                if wanted:
                    self.run_on_actor(self._on_events, conn, wanted)

    def _wants(self, kind: str, key: str) -> bool:
        """Reader thread: does this session act on this event?  A deleted
        lock matters to a session with waiters (one registered just after
        tries once more, see ``RETRY_ONCE_WAITING``), members and leader
        locks to one that watches (watching starts before the snapshot)."""
        if self._watching:
            return True
        return kind == "DELETE" and bool(self._waiters or self._campaigns) and key.startswith(self._ns + "locks/")

    def _watch_failed(self, conn: _Connection, exc: Exception) -> None:
        if conn is self.conn:
            self.fail(f"lost the watch stream of {self.url}: {type(exc).__name__}: {exc}")

    def _on_events(self, conn: _Connection, events: list[tuple[str, str, bytes, int]]) -> None:
        if conn is not self.conn:
            return
        members_prefix, locks_prefix = self._ns + "members/", self._ns + "locks/"
        freed = []
        for kind, key, value, revision in events:
            if key.startswith(locks_prefix):
                name = urllib.parse.unquote(key[len(locks_prefix):])
                if kind == "DELETE":
                    freed.append(name)
                if not name.startswith(RESERVED_LOCK_PREFIX):
                    continue
                group = name[len(RESERVED_LOCK_PREFIX):]
                view = self._views.get(group)
                if view is None or revision <= view[2]:
                    continue
                if kind == "DELETE":
                    view[1] = None
                else:
                    holder = self._parse_lock(name, value, strict=False)
                    if holder is not None and holder[1] != view[1]:
                        view[1] = holder[1]
                        self.emit(LeaderElected(group, holder[1]))
            elif key.startswith(members_prefix):
                group_part, _, member_part = key[len(members_prefix):].partition("/")
                group = urllib.parse.unquote(group_part)
                view = self._views.get(group)
                if view is None or revision <= view[2]:
                    continue
                member = urllib.parse.unquote(member_part)
                if kind == "DELETE":
                    if member in view[0]:
                        view[0].discard(member)
                        self.emit(MemberLeft(group, member))
                elif member not in view[0]:
                    view[0].add(member)
                    self.emit(MemberJoined(group, member))
        if freed:
            self.wake(freed)

    # -- keys and requests ----------------------------------------------------------

    def _group_key(self, group: str) -> str:
        return f"{self._ns}groups/{_q(group)}"

    def _members_prefix(self, group: str) -> str:
        return f"{self._ns}members/{_q(group)}/"

    def _member_key(self, group: str, member: str) -> str:
        return self._members_prefix(group) + _q(member)

    def _lock_key(self, name: str) -> str:
        return f"{self._ns}locks/{_q(name)}"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self.conn.client, path, body)

    def _call(self, client: Etcd3Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the server in use; one that refuses the connection (nothing
        was sent) is backed off and the next is tried.  A server that failed
        once the request was sent (timed out, 5xx: no leader) is backed off
        too, and the error raised: the request may have been applied."""
        for _attempt in range(len(self._endpoints)):
            host = (client.host, client.port)
            try:
                return client.post(client.get_url(path), json=body)  # type: ignore[no-any-return]
            except etcd_exceptions.ConnectionFailedError as exc:
                self._switch(client, host)
                if CONNECT_FAILED not in (exc.detail_text or ""):
                    raise
                last: Exception = exc
            except (etcd_exceptions.ConnectionTimeoutError, etcd_exceptions.InternalServerError):
                self._switch(client, host)
                raise
        raise last

    def _switch(self, client: Etcd3Client, host: tuple[str, int]) -> None:
        self._endpoints.failed(host)
        client.host, client.port = self._endpoints.current()

    def probe(self) -> bool:
        """While suspended: one read, from any server of the URL."""
        self._post("/kv/range", {"key": _b64(self._ns + "epoch"), "keys_only": True})
        return True

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One transaction: ``success`` if every ``compare`` holds, else ``failure``."""
        return self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    @staticmethod
    def _exists(key: str) -> dict[str, Any]:
        return {"key": _b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"}

    @staticmethod
    def _absent(key: str) -> dict[str, Any]:
        return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}

    @staticmethod
    def _range(key: str, prefix: bool = False, keys_only: bool = False) -> dict[str, Any]:
        request: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            request["range_end"] = _b64(_prefix_end(key.encode("utf-8")))
        if keys_only:
            request["keys_only"] = True
        return {"request_range": request}

    def _put(self, key: str, value: str, leased: bool = True) -> dict[str, Any]:
        request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if leased:
            request["lease"] = str(self.conn.lease_id)
        return {"request_put": request}

    @staticmethod
    def _delete(key: str, prefix: bool = False) -> dict[str, Any]:
        request: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            request["range_end"] = _b64(_prefix_end(key.encode("utf-8")))
        return {"request_delete_range": request}

    @staticmethod
    def _kvs(reply: dict[str, Any], index: int) -> list[dict[str, Any]]:
        responses = reply.get("responses", [])
        return responses[index].get("response_range", {}).get("kvs", []) if index < len(responses) else []

    def _foreign(self, what: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"{what} under namespace {self._ns.rstrip('/')!r} on {self.url} holds data in a format coordactors does not know; it was left untouched"
        )

    def _check_group_value(self, group: str, kvs: list[dict[str, Any]]) -> bool:
        if not kvs:
            return False
        if _unb64(kvs[0].get("value", "")).decode("utf-8", "replace") != GROUP_MARKER:
            raise self._foreign(f"the key of group {group!r}")
        return True

    def _member_entry(self, capabilities_json: str) -> str:
        return json.dumps({"caps": capabilities_json, "token": self.session_token}, separators=(",", ":"))

    def _parse_member(self, group: str, member: str, value: bytes) -> dict[str, Any]:
        try:
            entry = json.loads(value)
            if isinstance(entry, dict) and isinstance(entry.get("caps"), str) and isinstance(entry.get("token"), str):
                return entry
        except ValueError:
            pass
        raise self._foreign(f"the key of member {member!r} of group {group!r}")

    def _lock_value(self) -> str:
        return json.dumps({"token": self.session_token, "member": self.member_id}, separators=(",", ":"))

    def _parse_lock(self, name: str, value: bytes, strict: bool = True) -> tuple[str, str] | None:
        """(token, member) of a lock key's value; a foreign value raises (or None if not ``strict``)."""
        try:
            entry = json.loads(value)
            if isinstance(entry, dict) and isinstance(entry.get("token"), str) and isinstance(entry.get("member"), str):
                return entry["token"], entry["member"]
        except ValueError:
            pass
        if strict:
            raise self._foreign(f"the key of lock {name!r}")
        return None

    # -- groups ---------------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        key = self._group_key(group)
        reply = self._txn([self._absent(key)], [self._put(key, GROUP_MARKER, leased=False)], [self._range(key)])
        if not reply.get("succeeded"):
            self._check_group_value(group, self._kvs(reply, 0))
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already")

    def do_delete_group(self, group: str) -> None:
        key, members = self._group_key(group), self._members_prefix(group)
        empty = {**self._absent(members), "range_end": _b64(_prefix_end(members.encode("utf-8")))}
        reply = self._txn(
            [self._exists(key), empty],
            [self._delete(key), self._delete(self._lock_key(leader_lock_name(group)))],
            [self._range(key)],
        )
        if not reply.get("succeeded"):
            if not self._check_group_value(group, self._kvs(reply, 0)):
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has members")

    def do_get_groups(self) -> frozenset[str]:
        prefix = self._ns + "groups/"
        reply = self._post("/kv/range", self._range(prefix, prefix=True, keys_only=True)["request_range"])
        return frozenset(urllib.parse.unquote(_unb64(kv["key"]).decode("utf-8")[len(prefix):]) for kv in reply.get("kvs", []))

    def do_group_exists(self, group: str) -> bool:
        reply = self._post("/kv/range", {"key": _b64(self._group_key(group))})
        return self._check_group_value(group, reply.get("kvs", []))

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        key, member_key = self._group_key(group), self._member_key(group, self.member_id)
        for _attempt in range(3):
            if create:
                try:
                    self.do_create_group(group)
                except errors.GroupAlreadyExists:
                    pass
            reply = self._txn(
                [self._exists(key), self._absent(member_key)],
                [self._put(member_key, self._member_entry(capabilities_json))],
                [self._range(key), self._range(member_key)],
            )
            if reply.get("succeeded"):
                return
            if self._check_group_value(group, self._kvs(reply, 0)):
                member = self._kvs(reply, 1)
                if member:
                    self._parse_member(group, self.member_id, _unb64(member[0].get("value", "")))
                raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")
            if not create:
                break
            # The group was deleted between its creation and the join: again.
        raise errors.GroupNotFound(f"cannot join {group!r}: no such group")

    def do_leave(self, group: str) -> None:
        key, member_key = self._group_key(group), self._member_key(group, self.member_id)
        reply = self._txn([self._exists(key), self._exists(member_key)], [self._delete(member_key)], [self._range(key)])
        if not reply.get("succeeded"):
            if not self._check_group_value(group, self._kvs(reply, 0)):
                raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")

    def _read_group(self, group: str) -> tuple[frozenset[str], str | None, int]:
        """Members, leader and the revision they were read at, in one request."""
        key, prefix = self._group_key(group), self._members_prefix(group)
        reply = self._txn([], [self._range(key), self._range(prefix, prefix=True, keys_only=True), self._range(self._lock_key(leader_lock_name(group)))])
        if not self._check_group_value(group, self._kvs(reply, 0)):
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        members = frozenset(urllib.parse.unquote(_unb64(kv["key"]).decode("utf-8")[len(prefix):]) for kv in self._kvs(reply, 1))
        lock = self._kvs(reply, 2)
        holder = self._parse_lock(leader_lock_name(group), _unb64(lock[0].get("value", "")), strict=False) if lock else None
        return members, holder[1] if holder else None, int(reply["header"]["revision"])

    def do_get_members(self, group: str) -> frozenset[str]:
        return self._read_group(group)[0]

    def do_get_capabilities(self, group: str, member: str) -> str:
        reply = self._txn([], [self._range(self._group_key(group)), self._range(self._member_key(group, member))])
        if not self._check_group_value(group, self._kvs(reply, 0)):
            raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
        kvs = self._kvs(reply, 1)
        if not kvs:
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return self._parse_member(group, member, _unb64(kvs[0].get("value", "")))["caps"]

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        key, member_key = self._group_key(group), self._member_key(group, self.member_id)
        # Re-putting the key also moves it to this connection's lease: that is
        # how a restored session takes over a membership its old lease kept.
        reply = self._txn(
            [self._exists(key), self._exists(member_key)],
            [self._put(member_key, self._member_entry(capabilities_json))],
            [self._range(key), self._range(member_key)],
        )
        if not reply.get("succeeded"):
            if not self._check_group_value(group, self._kvs(reply, 0)):
                raise errors.GroupNotFound(f"cannot update capabilities in {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")

    # -- locks ------------------------------------------------------------------------

    def _load_epoch(self) -> None:
        """Read (or start) the namespace's fence epoch: a fence is the epoch's
        floor plus the lock key's create_revision."""
        key, floor = self._ns + "epoch", fence_floor()
        reply = self._txn([self._absent(key)], [self._put(key, str(floor), leased=False)], [self._range(key)])
        if reply.get("succeeded"):
            self._epoch = (floor, int(reply["header"]["revision"]))
            return
        kvs = self._kvs(reply, 0)
        value = _unb64(kvs[0].get("value", "")).decode("utf-8", "replace") if kvs else ""
        if not value.isdigit():
            raise self._foreign("the fence epoch key")
        self._epoch = (int(value), int(kvs[0]["create_revision"]))

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        key = self._lock_key(name)
        for _attempt in range(3):
            floor, epoch_revision = self._epoch
            same_epoch = {"key": _b64(self._ns + "epoch"), "target": "CREATE", "result": "EQUAL", "create_revision": str(epoch_revision)}
            reply = self._txn([self._absent(key), same_epoch], [self._put(key, self._lock_value())], [self._range(key), self._range(self._ns + "epoch")])
            if reply.get("succeeded"):
                # The put happened at the transaction's revision: the key's create_revision.
                return floor + int(reply["header"]["revision"])
            epoch = self._kvs(reply, 1)
            if not epoch or int(epoch[0]["create_revision"]) != epoch_revision:
                # The epoch key was re-created: etcd lost its data (revisions
                # restart from 1) or someone deleted it.  A new floor keeps
                # fences rising.
                self._load_epoch()
                continue
            kvs = self._kvs(reply, 0)
            if not kvs:
                continue
            token, _member = self._parse_lock(name, _unb64(kvs[0].get("value", "")))  # type: ignore[misc]
            if token != self.session_token or int(kvs[0].get("lease", 0)) == self.conn.lease_id:
                return None
            # Ours, but on the lease of a connection this session lost (the
            # base declared that lease lost already): free it rather than wait
            # out the old lease's TTL.  A new create gives a new fence.
            self._txn([{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": kvs[0]["create_revision"]}], [self._delete(key)])
        return None

    def do_release(self, name: str, fence: int) -> bool:
        key = self._lock_key(name)
        reply = self._txn(
            [
                {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(fence - self._epoch[0])},
                {"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(self.conn.lease_id)},
            ],
            [self._delete(key)],
        )
        return bool(reply.get("succeeded"))

    # -- coalescing --------------------------------------------------------------

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        floor, epoch_revision = self._epoch
        same_epoch = {"key": _b64(self._ns + "epoch"), "target": "CREATE", "result": "EQUAL", "create_revision": str(epoch_revision)}
        nested = []
        for call, lease in run:
            key = self._lock_key(call.message.name)
            if lease is None:  # do_try_acquire's transaction
                txn = {"compare": [self._absent(key), same_epoch], "success": [self._put(key, self._lock_value())], "failure": [self._range(key)]}
            else:  # do_release's
                txn = {"compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(lease.fence - floor)},
                                   {"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(self.conn.lease_id)}],
                       "success": [self._delete(key)], "failure": []}
            nested.append({"request_txn": txn})
        sent_at = time.monotonic()
        try:
            reply = self._txn([], nested)
            revision = int(reply["header"]["revision"])
            results = [response["response_txn"] for response in reply["responses"]]
        except Exception:  # noqa: BLE001 - the usual path reports it, call by call
            for call, _lease in run:
                self._serve(call)
            return
        freed = []
        for (call, lease), result in zip(run, results):
            succeeded = bool(result.get("succeeded"))
            if lease is not None:
                freed.append(lease.name)
                self.settle_release(call, lease, succeeded)
            else:
                # Every put of the transaction happened at its revision: the key's create_revision.
                # A refusal that was not another's hold (a new epoch, a foreign value, a key of
                # ours on a lost lease) is served the usual way, which handles it.
                self.settle_acquire(call, floor + revision if succeeded else None, sent_at,
                                    held=not succeeded and self._held_by_another(call.message.name, result))
        self.retry_freed(freed)

    def _held_by_another(self, name: str, result: dict[str, Any]) -> bool:
        """Whether a refused nested acquire found the lock held, as do_try_acquire would judge it."""
        kvs = self._kvs(result, 0)
        if not kvs:
            return False  # the epoch compare failed
        parsed = self._parse_lock(name, _unb64(kvs[0].get("value", "")), strict=False)
        return parsed is not None and (parsed[0] != self.session_token or int(kvs[0].get("lease", 0)) == self.conn.lease_id)

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        # The heartbeat's keepalive extended the one lease every lock lives
        # by; this only checks that each key is still ours: one request per
        # MAX_TXN_OPS locks.
        lost = set()
        for first in range(0, len(leases), MAX_TXN_OPS):
            chunk = leases[first:first + MAX_TXN_OPS]
            reply = self._txn([], [self._range(self._lock_key(lease.name)) for lease in chunk])
            lost |= self._not_ours(reply, chunk)
        return lost

    def _not_ours(self, reply: dict[str, Any], leases: list[Lease]) -> set[tuple[str, int]]:
        """The leases whose key, as the ranges in ``reply`` read it, is no longer this session's grant."""
        lost = set()
        for index, lease in enumerate(leases):
            kvs = self._kvs(reply, index)
            if not kvs or int(kvs[0].get("create_revision", 0)) != lease.fence - self._epoch[0] or int(kvs[0].get("lease", 0)) != self.conn.lease_id:
                lost.add((lease.name, lease.fence))
        return lost

    def do_lock_holder(self, name: str) -> str | None:
        reply = self._post("/kv/range", {"key": _b64(self._lock_key(name))})
        kvs = reply.get("kvs", [])
        if not kvs:
            return None
        return self._parse_lock(name, _unb64(kvs[0].get("value", "")))[1]  # type: ignore[index]

    # -- liveness and events ---------------------------------------------------------------

    def do_heartbeat(self) -> None:
        reply = self._post("/lease/keepalive", {"ID": str(self.conn.lease_id)})
        if int(reply.get("result", {}).get("TTL", -1)) <= 0:
            raise errors.BackendUnavailable(
                f"the session lease of {self.member_id!r} on {self.url} expired: its locks and memberships were dropped after session_ttl"
            )
        # By now the restore moved this session's memberships and leaderships
        # to the new lease; what the old leases still hold (locks given up as
        # lost) is freed now rather than after session_ttl.
        while self._stale_leases:
            lease_id = self._stale_leases.pop()
            try:
                self._post("/kv/lease/revoke", {"ID": str(lease_id)})
            except etcd_exceptions.Etcd3Exception as exc:
                if "lease not found" not in (exc.detail_text or ""):
                    self._stale_leases.append(lease_id)
                    raise

    def do_watch(self, group: str) -> None:
        self._watching.add(group)
        try:
            members, leader, revision = self._read_group(group)
        except errors.GroupNotFound:
            members, leader, revision = frozenset(), None, self._current_revision()
        self._views[group] = [set(members), leader, revision]

    def _current_revision(self) -> int:
        reply = self._post("/kv/range", {"key": _b64(self._ns), "count_only": True})
        return int(reply["header"]["revision"])

    def do_unwatch(self, group: str) -> None:
        self._views.pop(group, None)
        self._watching.discard(group)

    def do_shutdown(self) -> None:
        # Revoking the lease drops every key this session still had at once,
        # instead of after session_ttl.
        self._post("/kv/lease/revoke", {"ID": str(self.conn.lease_id)})
        self.conn.revoked = True

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        if isinstance(exc, errors.CoordinationError):
            # Ours already (a foreign key's InvalidArgument raised inside an
            # acquire reaches here through the base's catch-all).
            return type(exc)(str(exc))
        if isinstance(exc, etcd_exceptions.Etcd3Exception):
            detail = exc.detail_text or ""
            try:
                message = json.loads(detail).get("error") or json.loads(detail).get("message") or detail
            except (ValueError, AttributeError):
                message = detail
            if "authentication failed" in message or "invalid auth token" in message or "permission denied" in message or "user name" in message:
                return errors.BackendUnavailable(f"{self.url} refused the credentials ({message})")
            if isinstance(exc, (etcd_exceptions.ConnectionFailedError, etcd_exceptions.ConnectionTimeoutError, etcd_exceptions.InternalServerError)):
                # The session's lease lives on in the cluster until its TTL;
                # another server (or this one, back) may answer.
                return errors.ConnectionSuspended(f"{self.url} is unreachable or cannot serve now: {message[:300] or type(exc).__name__}")
            return errors.BackendUnavailable(f"{self.url} failed: {message[:300] or type(exc).__name__}")
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, http.client.HTTPException, OSError)):
            return errors.ConnectionSuspended(f"{self.url} is unreachable: {type(exc).__name__}: {exc}")
        if isinstance(exc, (requests.RequestException, ValueError, KeyError)):
            return errors.BackendUnavailable(f"{self.url} is unreachable or answered garbage: {type(exc).__name__}: {exc}")
        return super().translate_error(exc)
