"""etcd://: coordination through etcd's v2 keys API (plain HTTP, no client library).

URL: ``etcd://[user:password@]host[:port][?options]`` (port 2379 by default;
``user:password`` is sent as HTTP basic authentication, which etcd's v2 auth
checks).  The server must run with ``--enable-v2`` (etcd 3.4 and later keep
the v2 store only then).  Options, besides the common ones:

===================  ==========================================================
``namespace``        the directory holding everything (default ``coordactors``;
                     ``/``-separated parts allowed); give each application or
                     test its own
``request_timeout``  seconds one request may take (default: ``session_ttl``/4,
                     between 0.5 and 5)
===================  ==========================================================

``session_ttl`` (default 30 s) is the TTL of memberships and of the session
key that locks without a TTL of their own live by; it cannot be ``none``.
etcd counts TTLs in whole seconds: a TTL is rounded UP at the server, and the
holder gives a lease up on its own clock at the TTL it asked for (minus a
margin), so it always lets go first.

Layout, under ``/<namespace>``::

    epoch              the fence base (see below); written once
    groups/<g>/        directory: the group
    groups/<g>/<m>     a membership, TTL session_ttl; value {"caps", "token"}
    sessions/<token>   a session key, TTL session_ttl; value: its connection's id
    locks/<name>       a lock; value {"member", "token", "conn"} -- or, for a
                       lease with a TTL of its own, that TTL and {"member", "token"}

Names are arbitrary unicode, so each becomes ONE key segment by
percent-encoding UTF-8, keeping only ASCII letters, digits, ``-`` and ``~``
(``.`` and ``_`` are escaped too: no ``.``/``..`` segment, and no hidden
``_`` key).  The segment is percent-encoded once more in the request URL.

Each coordinator session uses two persistent HTTP/1.1 connections: one for
its requests (kept alive: no new connection per operation) and one for the
long poll of its event reader.

Mechanisms:

* lock: a create-only key (``PUT ?prevExist=false``); a release is
  ``DELETE ?prevIndex=...``, which never touches a key that changed hands.
  etcd v2 has no leases and no multi-key request, so a key's TTL can only be
  refreshed one request per key: a lock instead lives as long as the session
  key of the connection that took it (its token and connection id are in
  its value), and a heartbeat refreshes that one key
  (``refresh=true&prevValue=<connection id>``; no watcher is woken by a
  refresh) and checks the held locks are still there (by one listing of the
  locks directory when it holds many).  A contender that finds a lock taken
  reads its holder's session key: gone, or naming another connection (the
  session reconnected; its old locks were declared lost), and the lock is
  deleted (``prevIndex``) and taken.  A session key seen alive is believed for
  the TTL it had left, so contended try-locks cost no extra request.  The
  reader wakes waiters when a session key goes; every ``REAP_EVERY``
  heartbeats a session deletes the locks of dead sessions nobody contends,
  and a stopping session deletes its key.  A lease with a TTL of its own
  keeps a key with that TTL, refreshed by each heartbeat (``PUT
  ?refresh=true&prevIndex=<modifiedIndex>&ttl=N``).  **The fence is the key's
  ``createdIndex``** plus this namespace's epoch: ``createdIndex`` is the
  etcd index of the write that created the key, set once and strictly
  increasing from one creation to the next, whereas ``modifiedIndex`` moves
  on every refresh of a key with a TTL and would not identify a grant.
  etcd's indexes restart from zero if its data is wiped, so the fence adds an epoch stored in the
  namespace and written once, as ``fence_floor()`` (microseconds since the
  epoch) minus the etcd index at that moment: a wiped etcd also lost the
  epoch key, and the next session writes a new one, which is larger than any
  fence of the old data as long as etcd made fewer than one write per
  microsecond.  A session that sees etcd's index go backwards (its data was
  replaced under it) fails and reconnects, reading the new epoch.  Do not
  delete the namespace by hand while sessions run: they would fail and
  reconnect, but a session that had not yet noticed could hand out a fence
  from the old epoch.
* groups: a directory per group; a membership is a key with a TTL of
  ``session_ttl`` created with ``prevExist=false`` (a second join of the same
  member id fails atomically), refreshed by every heartbeat (guarded by
  ``prevValue``: only this session's own membership) and expired by etcd
  itself when its session stops heartbeating.  A group is deleted with
  ``DELETE ?dir=true``, which etcd refuses for a non-empty directory.  etcd
  v2 has no transactions, and creating a key makes its missing parent
  directories: a join (without ``create``) looks at the group, creates the
  membership, and looks again; if the group was deleted in between (the
  create made it anew), it undoes both and fails with GroupNotFound.  A
  watcher may then see that member join and leave.
* events: etcd's own event history is the log.  A reader thread long-polls
  ``GET /<namespace>?wait=true&recursive=true&waitIndex=N`` on its own
  connection, one event per reply in index order, and hands each to the actor
  thread: joins (``create``), leaves (``delete``, ``expire``,
  ``compareAndDelete`` of a membership) and new leaders (``create`` of a
  leader lock) are reported exactly and in order, and the end of any lock key
  wakes that lock's waiters at once.  A reconnected session resumes from the
  last event it applied.  etcd keeps the last 1000 events: a reader further
  behind gets ``401 index cleared``, re-reads the watched groups and reports
  the differences (changes that came and went in the gap are not seen).
  While the session neither watches nor waits, its reader rests (no long
  poll); woken, it goes on from etcd's current index as after a gap.
"""

from __future__ import annotations

import base64
import collections
import functools
import http.client
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Generator, TypeVar

from coordactors import errors
from coordactors._protocol import Call
from coordactors.backend_actors._coalesce import Coalescing
from coordactors.backend_actors._endpoints import Endpoints, url_hosts
from coordactors.backend_actors._http1 import HttpConnection
from coordactors.backend_actors._keepalive import closed_by_peer
from coordactors.backend_actors._rest import ReaderRest, RestingReader
from coordactors.backend_actors.base import SessionActor, fence_floor, leader_lock_name
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Acquire, Lease, Release
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, seconds

logger = logging.getLogger(__name__)

__all__ = ["EtcdError", "EtcdSession", "decode_name", "encode_name"]

_T = TypeVar("_T")
_Request = tuple[str, str, "dict[str, Any] | None", "dict[str, Any] | None"]
"""method, key, form, query"""
_Steps = Generator[_Request, Any, _T]
"""Requests yielded one by one, each sent its reply (or thrown its error); returns the result."""

DEFAULT_PORT = 2379
KEYS = "/v2/keys"
LEAVE_ACTIONS = frozenset({"delete", "expire", "compareAndDelete"})

# etcd v2 error codes (etcd/etcdserver/api/v2error).
KEY_NOT_FOUND, COMPARE_FAILED, NOT_A_FILE, NOT_A_DIR, NODE_EXISTS, DIR_NOT_EMPTY = 100, 101, 102, 104, 105, 108
UNAUTHORIZED, INDEX_CLEARED = 110, 401
DIRECTORIES = ("groups", "locks", "sessions")
REAP_EVERY = 16
"""A session looks for locks of dead sessions every this many heartbeats (and at its first)."""
REAPED_AT_MOST = 64
"""Locks of dead sessions one look deletes at most (a request each, on the actor thread); the next look goes on."""
CHECKED_ONE_BY_ONE = 8
"""A heartbeat reads up to this many held locks key by key, more by listing the locks directory once."""


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
"""What ``urllib.parse.quote`` never changes."""
_UNRESERVED_PATH = re.compile(r"[A-Za-z0-9_.~/-]*")


_quote_plus = functools.lru_cache(maxsize=512)(urllib.parse.quote_plus)
"""``quote_plus`` runs Python per byte (~5 µs for a lock's JSON value), and a
session sends the same values again and again (its lock value, its members'
capabilities)."""


def urlencoded(fields: dict[str, Any]) -> str:
    """``urllib.parse.urlencode(fields)``; a name or value that needs no
    quoting (a flag, a number, a token) is not run through ``quote_plus``,
    which was the most expensive part of writing an etcd request, and one
    that does is quoted once per distinct value."""
    parts = []
    for name, value in fields.items():
        text = value if type(value) is str else str(value)
        name = name if _UNRESERVED.fullmatch(name) else _quote_plus(name)
        parts.append(f"{name}={text if _UNRESERVED.fullmatch(text) else _quote_plus(text)}")
    return "&".join(parts)


def quoted_path(key: str) -> str:
    """``urllib.parse.quote(key, safe="/")``, skipped where nothing needs quoting."""
    return key if _UNRESERVED_PATH.fullmatch(key) else urllib.parse.quote(key, safe="/")


def encode_name(name: str) -> str:
    """``name`` as one etcd key segment: percent-encoded UTF-8 keeping only
    ASCII letters, digits, ``-`` and ``~``."""
    return urllib.parse.quote(name, safe="").replace(".", "%2E").replace("_", "%5F")


def decode_name(segment: str) -> str:
    """The name that :func:`encode_name` turned into ``segment``."""
    return urllib.parse.unquote(segment)


class EtcdError(Exception):
    """An error reply of the v2 API: ``code`` is etcd's errorCode (None if the
    reply was not etcd's JSON), ``status`` the HTTP status."""

    def __init__(self, status: int, code: int | None, message: str, cause: str = "", index: int = 0) -> None:
        super().__init__(f"HTTP {status}, etcd error {code}: {message}{' (' + cause + ')' if cause else ''}")
        self.status, self.code, self.message, self.cause, self.index = status, code, message, cause, index


class _Http:
    """One persistent HTTP/1.1 connection to the v2 keys API, on one of the URL's servers.

    A connection the server closed while it sat idle is noticed before
    anything is sent on it; connecting tries the servers in turn (see
    :class:`Endpoints`), so a dead one costs nothing but a refused connect.
    A request that fails once sent is not retried (it may have been
    applied): its server is backed off and the error raised.
    ``abort`` (any thread) shuts the socket down, so a request blocked in a
    long poll ends at once; no socket is opened after it.  ``send`` and
    ``receive`` apart let requests on several connections be in flight at
    once (see ``EtcdSession._at_once``).
    """

    def __init__(self, endpoints: Endpoints, *, connect_timeout: float, timeout: float | None, authorization: str | None) -> None:
        self._endpoints = endpoints
        self._connect_timeout = connect_timeout
        self._conn: HttpConnection | None = None
        self._host = endpoints.current()
        self._timeout = timeout
        self._headers = {"Authorization": authorization} if authorization else {}
        self._lock = threading.Lock()
        self._closed = False
        self._method = "GET"

    def _connect(self) -> HttpConnection:
        last: OSError | None = None
        for host in self._endpoints.rotation():
            try:
                conn = HttpConnection(host[0], host[1], connect_timeout=self._connect_timeout, timeout=self._timeout)
            except OSError as exc:
                self._endpoints.failed(host)
                last = exc
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    raise ConnectionAbortedError("the connection was closed")
                self._conn, self._host = conn, host
            self._endpoints.use(host)
            return conn
        assert last is not None
        raise last

    @property
    def server(self) -> Any:
        """The (host, port) this connection is (or was last) on."""
        return self._host

    def request(self, method: str, key: str, *, form: dict[str, Any] | None = None, query: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Send one request; return (X-Etcd-Index, the reply's JSON) or raise EtcdError."""
        self.send(method, key, form=form, query=query)
        return self.receive()

    def send(self, method: str, key: str, *, form: dict[str, Any] | None = None, query: dict[str, Any] | None = None) -> None:
        """Send one request; ``receive`` reads its reply."""
        conn = self._conn
        if conn is not None and conn.sock is not None and closed_by_peer(conn.sock):
            conn.close()  # nothing was sent on it: safe to send on a new one
        if conn is None or conn.sock is None:
            conn = self._connect()
        target = KEYS + quoted_path(key) + ("?" + urlencoded(query) if query else "")
        headers = self._headers
        body = None
        if form is not None:
            body = urlencoded(form).encode("ascii")
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        try:
            conn.send(method, target, headers, body)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, OSError):
                self._endpoints.failed(self._host)
            raise
        self._method = method

    def receive(self) -> tuple[int, dict[str, Any]]:
        """The reply to the request sent: (X-Etcd-Index, its JSON), or raise EtcdError."""
        conn = self._conn
        if conn is None:
            raise ConnectionError("no request was sent")
        try:
            response = conn.receive(self._method)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, (OSError, http.client.HTTPException)):
                self._endpoints.failed(self._host)
            raise
        if response.will_close:
            conn.close()
        if response.status >= 500:
            self._endpoints.failed(self._host)  # e.g. a member cut off from the leader: try another next time
        else:
            self._endpoints.succeeded(self._host)
        index = int(response.headers.get("x-etcd-index") or 0)
        data = response.body
        try:
            reply = json.loads(data)
        except ValueError:
            raise EtcdError(response.status, None, data[:200].decode("utf-8", "replace").strip()) from None
        if not isinstance(reply, dict):
            raise EtcdError(response.status, None, "the reply is not a JSON object")
        if "errorCode" in reply:
            raise EtcdError(response.status, reply["errorCode"], str(reply.get("message", "")), str(reply.get("cause", "")), int(reply.get("index") or index))
        if response.status >= 300:
            raise EtcdError(response.status, None, str(reply.get("message", reply)))
        return index, reply

    def abort(self) -> None:
        with self._lock:
            self._closed = True
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.abort()
        if self._conn is not None:
            self._conn.close()


class _Connection:
    """The request connection, the reader's connection and thread, and what
    ``open`` learnt: the namespace's fence epoch and etcd's index."""

    def __init__(self, http_: _Http, watch: _Http, epoch: int, index: int) -> None:
        self.http = http_
        self.watch = watch
        self.epoch = epoch
        self.index = index
        self.id = uuid.uuid4().hex
        """The value of the session key while this connection is the session's:
        the locks it takes name it, and die with it."""
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.rest = ReaderRest()
        """The reader does not long-poll while the session neither watches nor waits."""
        self.lanes: list[_Http] = []
        """Connections of their own for requests in flight together (see ``EtcdSession._at_once``)."""

    def close_lanes(self) -> None:
        for lane in self.lanes:
            lane.close()


class _View:
    """What a watcher has reported of one group, and up to which etcd index."""

    __slots__ = ("leader", "leader_index", "members", "members_index")

    def __init__(self, members: set[str], members_index: int, leader: str | None, leader_index: int) -> None:
        self.members, self.members_index = members, members_index
        self.leader, self.leader_index = leader, leader_index


def _namespace(value: str, what: str) -> str:
    parts = value.strip("/").split("/")
    if any(p in ("", ".", "..") or p.startswith("_") for p in parts):
        raise errors.InvalidArgument(f"option '{what}' must be key names separated by '/' (no empty, '.', '..' or '_'-prefixed parts; got {value!r})")
    return "/".join(parts)


class EtcdSession(Coalescing, RestingReader, SessionActor):
    """Session of ``etcd://``: TTL keys and the event history of etcd's v2 API.

    Threads: ``open`` runs on the runtime's blocking executor (connects,
    checks the layout, reads the epoch).  Every ``do_*`` hook runs on the
    actor thread and makes one to a few requests, each bounded by
    ``request_timeout``; only ``do_heartbeat`` and ``do_refresh`` make one per
    membership or per lease with a TTL of its own (v2 has no multi-key
    request).  The reader thread
    (``EtcdEvents[<member>]``) only long-polls and hands each event to the
    actor with ``run_on_actor``; ``close`` shuts its socket down and joins it.

    Acquires and releases queued together (many callers sharing the
    coordinator), and the per-lease requests of a heartbeat, are sent at
    once, as etcd v2 has no transaction to put them in: each is written as
    *steps* (a generator yielding its requests, sent each reply), and
    ``_at_once`` runs up to ``LANES`` of them together on connections of
    their own, sending every one's next request before reading any reply.
    The usual path runs the same steps one request after another.
    """

    COALESCED = frozenset({Acquire, Release})
    LANES = 16

    CHARACTERISTICS = frozenset({C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS})
    DEFAULTS = {"session_ttl": 30.0}
    OPTIONS = {"namespace": _namespace, "request_timeout": seconds}

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        shown = options.redacted
        if not options.host:
            raise errors.InvalidArgument(f"etcd:// needs a host: etcd://host[:port][,host[:port]...] (got {shown!r})")
        url_hosts(options, DEFAULT_PORT)
        if options.path.strip("/"):
            raise errors.InvalidArgument(f"an etcd:// URL has no path; use ?namespace= (got {options.path!r} in {shown!r})")
        if options.session_ttl is None:
            raise errors.InvalidArgument(f"option 'session_ttl' cannot be none on etcd:// (got {shown!r}): memberships and locks live by TTL")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._root = "/" + self.options.extra.get("namespace", "coordactors")
        ttl = float(self.options.session_ttl or 30.0)
        self._timeout = self.options.extra.get("request_timeout", min(5.0, max(0.5, ttl / 4)))
        self._epoch = 0
        self._max_index: dict[Any, int] = {}
        """Server -> the highest etcd index it answered at.  Per server: another
        server of the cluster may be a little behind, which is not data lost."""
        self._sent_at_index: dict[Any, int] | None = None
        self._applied: int | None = None
        """The etcd index up to which the actor has applied events (the last
        event's, or where the reader started): a new reader resumes after it,
        so nothing that happened while the session was down is missed."""
        self._held: dict[str, list[int]] = {}
        """Lock name -> [createdIndex, modifiedIndex] of the keys this session holds."""
        self._member_values: dict[str, str] = {}
        """Group -> the value of this session's membership key."""
        self._alive: dict[str, tuple[str, float]] = {}
        """Session token -> (its connection id, until when its session key is
        known to live): a key with a TTL lives at least that long unless
        deleted, and a deletion seen by the reader drops the entry."""
        self._heartbeats = 0
        self._parsed: tuple[Any, Any] = (None, None)
        """The last node value ``_parse`` read, and what it holds."""
        self._views: dict[str, _View] = {}
        self._endpoints = Endpoints(url_hosts(self.options, DEFAULT_PORT), self.options.backoff_initial, self.options.backoff_max)

    # -- connection ---------------------------------------------------------------

    def _new_http(self, timeout: float | None, connect_timeout: float) -> _Http:
        options = self.options
        authorization = None
        if options.username:
            raw = f"{options.username}:{options.password or ''}".encode()
            authorization = "Basic " + base64.b64encode(raw).decode("ascii")
        return _Http(self._endpoints, connect_timeout=connect_timeout, timeout=timeout, authorization=authorization)

    def open(self) -> _Connection:
        """Executor thread: connect, check the namespace's layout, make what is missing, read the epoch."""
        # The request connection may reconnect on the actor thread (after
        # etcd closed a kept-alive connection): no longer than a request.
        http_ = self._new_http(self._timeout, min(self.options.connect_timeout, self._timeout))
        try:
            index, epoch = self._prepare(http_)
        except BaseException:
            http_.close()
            raise
        return _Connection(http_, self._new_http(None, self.options.connect_timeout), epoch, index)

    def _prepare(self, http_: _Http) -> tuple[int, int]:
        try:
            index, reply = http_.request("GET", self._root)
            node = reply["node"]
            if not node.get("dir"):
                raise self._foreign(self._root, "a directory")
            children = {child["key"].rpartition("/")[2]: child for child in node.get("nodes", ())}
        except EtcdError as exc:
            if exc.code != KEY_NOT_FOUND:
                raise
            index, children = exc.index, {}
        for name in DIRECTORIES:
            child = children.get(name)
            if child is None:
                try:
                    http_.request("PUT", f"{self._root}/{name}", form={"dir": "true", "prevExist": "false"})
                except EtcdError as exc:
                    if exc.code != NODE_EXISTS:
                        raise
            elif not child.get("dir"):
                raise self._foreign(f"{self._root}/{name}", "a directory")
        epoch_key = f"{self._root}/epoch"
        child = children.get("epoch")
        if child is None:
            try:
                http_.request("PUT", epoch_key, form={"value": str(fence_floor() - index), "prevExist": "false"})
            except EtcdError as exc:
                if exc.code != NODE_EXISTS:
                    raise
            index, reply = http_.request("GET", epoch_key)
            child = reply["node"]
        try:
            return index, int(child["value"])
        except (KeyError, TypeError, ValueError):
            raise self._foreign(epoch_key, "a whole number") from None

    def _foreign(self, key: str, expected: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"the key {key!r} on {self.url} holds data in a format coordactors does not know (expected {expected}); it was left untouched"
        )

    def on_connected(self) -> None:
        """Actor thread: adopt the connection's epoch and start the event reader."""
        conn = self.conn
        server = conn.http.server
        seen = self._max_index.get(server, 0)
        # Data lost: the server answers below what it said before, or (any
        # server) the epoch key, written once, holds another value.
        wiped = conn.index < seen or (self._epoch != 0 and conn.epoch != self._epoch)
        if wiped:
            logger.warning("%r: etcd lost its data (index on %s:%s %d, it had said %d; epoch %d, was %d)",
                           self, *server, conn.index, seen, conn.epoch, self._epoch)
            self._max_index = {}  # what the other servers said is no floor either
        self._max_index[server] = conn.index
        self._epoch = conn.epoch
        self._held = {}
        self._heartbeats = 0
        # Made here, after the base noted when the session began: the key
        # outlives the holder's own view of its untimed leases.  Set, not
        # created: an earlier connection of this session may have left it,
        # and the new value kills that connection's locks at once.
        self._request("PUT", self._session_key(self.session_token), form={"value": conn.id, "ttl": self._ttl(None)})
        if wiped or self._applied is None or not self._views:
            self._applied = conn.index
        start = self._applied + 1
        conn.thread = threading.Thread(target=self._follow, args=(conn, start), name=f"EtcdEvents[{self.member_id}]", daemon=True)
        conn.thread.start()
        if wiped:
            self._resync_all()

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.stopping.set()
        conn.rest.stop()
        conn.watch.abort()  # ends the reader's long poll at once
        if conn.thread is not None and conn.thread is not threading.current_thread():
            conn.thread.join(5)
        conn.watch.close()
        conn.close_lanes()
        conn.http.close()

    # -- requests ------------------------------------------------------------------

    def _request(self, method: str, key: str, *, form: dict[str, Any] | None = None, query: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = self.conn
        if conn is None:
            raise errors.BackendUnavailable(f"no connection to {self.url}")
        self._send(conn.http, (method, key, form, query))
        return self._receive(conn.http)

    def _send(self, http_: _Http, request: _Request) -> None:
        try:
            http_.send(request[0], request[1], form=request[2], query=request[3])
        except (OSError, http.client.HTTPException) as exc:
            raise self._lost_connection(exc) from exc

    def _lost_connection(self, exc: BaseException) -> errors.ConnectionSuspended:
        return errors.ConnectionSuspended(
            f"lost the connection to {self.url} ({type(exc).__name__}: {exc}); the session's keys live on until their TTL while the servers are tried again"
        )

    def _receive(self, http_: _Http) -> dict[str, Any]:
        """The reply to the request sent on ``http_``, errors translated, its index seen."""
        try:
            index, reply = http_.receive()
        except EtcdError as exc:
            if exc.status >= 500:
                # No leader (an election, a member cut off): the keys live on
                # in the cluster until their TTL; another server may answer.
                raise errors.ConnectionSuspended(f"{self.url} could not serve the request ({exc}); trying again, on another server if there is one") from exc
            self._saw(exc.index, http_.server)
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise self._lost_connection(exc) from exc
        self._saw(index, http_.server)
        return reply

    # -- steps: requests written as generators ------------------------------------

    def _run(self, steps: _Steps[_T]) -> _T:
        """Run ``steps`` on the session's connection, one request after another."""
        reply: Any = None
        error: Exception | None = None
        while True:
            try:
                request = steps.throw(error) if error is not None else steps.send(reply)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                reply, error = self._request(request[0], request[1], form=request[2], query=request[3]), None
            except Exception as exc:  # noqa: BLE001 - raised where the steps sent the request
                reply, error = None, exc

    def _at_once(self, works: list[_Steps[Any]], *, settle: Callable[[int, bool, Any], None] | None = None,
                 more: Callable[[], list[_Steps[Any]]] | None = None) -> list[tuple[bool, Any]]:
        """Run every ``steps`` of ``works``, up to ``LANES`` at once, each on a
        lane connection of its own; return each one's (True, result) or
        (False, exception), in order.

        ``settle(i, ok, value)``, if given, is told each outcome as soon as it
        is known (work ``i``: works added by ``more`` number on), so a caller
        whose request is done is not held up by the slower ones.  ``more()``,
        if given, is asked for further steps whenever none wait, and its steps
        join the run (on a free lane, or one more, up to ``LANES``): requests
        queued meanwhile start at once instead of after the whole run.

        No thread per lane: every running steps' next request is sent
        before any reply is read, so the round trips overlap, and the replies
        are read in the order sent."""
        conn = self.conn
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(works)
        waiting = collections.deque(range(len(works)))
        running: collections.deque[tuple[_Http, int]] = collections.deque()
        free: list[_Http] = []
        used = 0  # lanes of conn.lanes taken by this run

        def done(item: int, ok: bool, value: Any) -> None:
            outcomes[item] = (ok, value)
            if settle is not None:
                settle(item, ok, value)

        def step(lane: _Http, item: int, reply: Any, error: Exception | None) -> bool:
            # Feed the steps their reply; True if they sent their next request on ``lane``.
            steps = works[item]
            while True:
                try:
                    request = steps.throw(error) if error is not None else steps.send(reply)
                except StopIteration as stop:
                    done(item, True, stop.value)
                    return False
                except Exception as exc:  # noqa: BLE001 - answered per item by the caller
                    done(item, False, exc)
                    return False
                try:
                    self._send(lane, request)
                except Exception as exc:  # noqa: BLE001 - raised where the steps sent it
                    reply, error = None, exc
                    continue
                running.append((lane, item))
                return True

        # Requests sent at once may be answered in any order: their indexes
        # are held to the one seen before they were sent (see _saw).
        self._sent_at_index = dict(self._max_index)
        try:
            while True:
                if more is not None and not waiting and (free or used < self.LANES):
                    for steps in more():
                        works.append(steps)
                        outcomes.append((False, None))
                        waiting.append(len(works) - 1)
                while waiting and (free or used < self.LANES):
                    if free:
                        lane = free.pop()
                    else:
                        if used == len(conn.lanes):
                            conn.lanes.append(self._new_http(self._timeout, min(self.options.connect_timeout, self._timeout)))
                        lane, used = conn.lanes[used], used + 1
                    if not step(lane, waiting.popleft(), None, None):
                        free.append(lane)  # (steps that ended at once let the next start on their lane)
                if not running:
                    return outcomes
                lane, item = running.popleft()
                try:
                    reply, error = self._receive(lane), None
                except Exception as exc:  # noqa: BLE001 - raised where the steps sent the request
                    reply, error = None, exc
                if not step(lane, item, reply, error):
                    free.append(lane)
        finally:
            self._sent_at_index = None
            # Left early (a failure settling a reply): a lane whose reply is
            # still to come would hand it to the next request sent on it.
            for lane, _item in running:
                lane.close()
                conn.lanes.remove(lane)

    def probe(self) -> bool:
        """While suspended: one read, from any server of the URL."""
        self._request("GET", self._root)
        return True

    def _saw(self, index: int, server: Any) -> None:
        """Actor thread: ``server`` answered at etcd index ``index``, which may
        not go back below what that server answered before."""
        # Requests sent at once (_at_once) may be answered in any order: they
        # are held to the index seen before they were sent.
        floor = (self._max_index if self._sent_at_index is None else self._sent_at_index).get(server, 0)
        if index < floor:
            raise errors.BackendUnavailable(
                f"etcd's index on {self.url} went back from {floor} to {index}: its data was lost; reconnecting"
            )
        if index > self._max_index.get(server, 0):
            self._max_index[server] = index

    def _get(self, key: str) -> dict[str, Any] | None:
        """The node at ``key``, or None if there is none."""
        return self._run(self._read(key))

    @staticmethod
    def _read(key: str) -> _Steps[dict[str, Any] | None]:
        try:
            return (yield ("GET", key, None, None))["node"]  # type: ignore[no-any-return]
        except EtcdError as exc:
            if exc.code == KEY_NOT_FOUND:
                return None
            raise

    # -- keys ------------------------------------------------------------------------

    def _group_key(self, group: str) -> str:
        return f"{self._root}/groups/{encode_name(group)}"

    def _member_key(self, group: str, member: str) -> str:
        return f"{self._group_key(group)}/{encode_name(member)}"

    def _lock_key(self, name: str) -> str:
        return f"{self._root}/locks/{encode_name(name)}"

    def _session_key(self, token: str) -> str:
        return f"{self._root}/sessions/{encode_name(token)}"

    def _ttl(self, ttl: float | None) -> int:
        return max(1, math.ceil(ttl if ttl is not None else float(self.options.session_ttl or 30.0)))

    def _parse(self, key: str, node: dict[str, Any], field: str) -> Any:
        try:
            text = node["value"]
            if text is self._parsed[0]:  # a holder's value is read for several fields in a row
                value = self._parsed[1]
            else:
                value = json.loads(text)
                self._parsed = (text, value)
            return value[field]
        except (KeyError, TypeError, ValueError):
            raise self._foreign(key, f"coordactors' JSON with {field!r}") from None

    # -- groups ------------------------------------------------------------------------

    def _group_node(self, group: str) -> dict[str, Any] | None:
        node = self._get(self._group_key(group))
        if node is not None and not node.get("dir"):
            raise self._foreign(self._group_key(group), "a directory")
        return node

    def do_create_group(self, group: str) -> None:
        try:
            self._request("PUT", self._group_key(group), form={"dir": "true", "prevExist": "false"})
        except EtcdError as exc:
            if exc.code == NODE_EXISTS:
                raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already") from None
            raise

    def do_delete_group(self, group: str) -> None:
        for _attempt in range(8):
            node = self._group_node(group)
            if node is None:
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            if node.get("nodes"):
                raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has {len(node['nodes'])} member(s)")
            try:
                self._request("DELETE", self._group_key(group), query={"dir": "true"})
            except EtcdError as exc:
                if exc.code in (DIR_NOT_EMPTY, KEY_NOT_FOUND):
                    continue  # joined or deleted meanwhile: look again
                raise
            try:
                self._request("DELETE", self._lock_key(leader_lock_name(group)))
            except EtcdError as exc:
                if exc.code != KEY_NOT_FOUND:
                    raise
            return
        raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it kept changing while being deleted")

    def do_get_groups(self) -> frozenset[str]:
        node = self._get(f"{self._root}/groups")
        if node is None:
            return frozenset()
        return frozenset(decode_name(child["key"].rpartition("/")[2]) for child in node.get("nodes", ()) if child.get("dir"))

    def do_group_exists(self, group: str) -> bool:
        return self._group_node(group) is not None

    def _member_value(self, capabilities_json: str) -> str:
        return json.dumps({"caps": capabilities_json, "token": self.session_token}, separators=(",", ":"))

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        if not create and self._group_node(group) is None:
            raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
        value = self._member_value(capabilities_json)
        key = self._member_key(group, self.member_id)
        try:
            node = self._request("PUT", key, form={"value": value, "ttl": self._ttl(None), "prevExist": "false"})["node"]
        except EtcdError as exc:
            if exc.code == NODE_EXISTS:
                raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member") from None
            if exc.code in (NOT_A_DIR, NOT_A_FILE):
                raise self._foreign(self._group_key(group), "a directory") from None
            raise
        self._member_values[group] = value
        if not create:
            self._undo_if_resurrected(group, key, node)

    def _undo_if_resurrected(self, group: str, key: str, node: dict[str, Any]) -> None:
        """etcd makes missing parent directories: if the group was deleted
        between our look and our create, the create made it anew (the
        directory's createdIndex is the membership's).  Undo both, so the
        join fails as if it had come after the delete."""
        now = self._group_node(group)
        if now is not None and now.get("createdIndex") != node["createdIndex"]:
            return
        self._member_values.pop(group, None)
        for query in ({"prevIndex": node["modifiedIndex"]}, None):
            try:
                self._request("DELETE", key if query else self._group_key(group), query=query or {"dir": "true"})
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED, DIR_NOT_EMPTY):
                    raise
        raise errors.GroupNotFound(f"cannot join {group!r}: the group was deleted as this member joined")

    def _own_membership(self, group: str, doing: str) -> dict[str, Any]:
        """This session's membership node in ``group`` (GroupNotFound, MemberNotJoined)."""
        key = self._member_key(group, self.member_id)
        node = self._get(key)
        if node is None or node.get("dir") or self._parse(key, node, "token") != self.session_token:
            self._member_values.pop(group, None)
            if self._group_node(group) is None:
                raise errors.GroupNotFound(f"cannot {doing} {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot {doing} {group!r}: member {self.member_id!r} has not joined it")
        return node

    def do_leave(self, group: str) -> None:
        key = self._member_key(group, self.member_id)
        value = self._member_values.pop(group, None)
        if value is not None:
            try:
                self._request("DELETE", key, query={"prevValue": value})
                return
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise
        for _attempt in range(8):
            node = self._own_membership(group, "leave")
            try:
                self._request("DELETE", key, query={"prevIndex": node["modifiedIndex"]})
                return
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise
        raise errors.BackendUnavailable(f"cannot leave {group!r}: its membership kept changing under this member")

    def do_get_members(self, group: str) -> frozenset[str]:
        node = self._group_node(group)
        if node is None:
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        return frozenset(decode_name(child["key"].rpartition("/")[2]) for child in node.get("nodes", ()) if not child.get("dir"))

    def do_get_capabilities(self, group: str, member: str) -> str:
        key = self._member_key(group, member)
        node = self._get(key)
        if node is None or node.get("dir"):
            if self._group_node(group) is None:
                raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        return self._parse(key, node, "caps")

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        """Also how a restored session takes over its own membership that
        outlived the old connection (same session token)."""
        key = self._member_key(group, self.member_id)
        value = self._member_value(capabilities_json)
        ttl = self._ttl(None)
        old = self._member_values.get(group)
        if old is not None:
            try:
                self._request("PUT", key, form={"value": value, "ttl": ttl, "prevValue": old})
                self._member_values[group] = value
                return
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise
        for _attempt in range(8):
            node = self._own_membership(group, "update capabilities in")
            try:
                self._request("PUT", key, form={"value": value, "ttl": ttl, "prevIndex": node["modifiedIndex"]})
                self._member_values[group] = value
                return
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise
        raise errors.BackendUnavailable(f"cannot update capabilities in {group!r}: its membership kept changing under this member")

    # -- locks ---------------------------------------------------------------------------

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        return self._run(self._claim(name, ttl))

    def _claim(self, name: str, ttl: float | None) -> _Steps[int | None]:
        key = self._lock_key(name)
        if ttl is None:  # lives as long as this connection's session key
            form = {"value": self._lock_value(), "prevExist": "false"}
        else:
            form = {"value": self._lock_value(with_connection=False), "ttl": self._ttl(ttl), "prevExist": "false"}
        for _attempt in range(4):
            try:
                node = (yield ("PUT", key, form, None))["node"]
            except EtcdError as exc:
                if exc.code in (NOT_A_DIR, NOT_A_FILE):
                    raise self._foreign(f"{self._root}/locks", "a directory") from None
                if exc.code != NODE_EXISTS:
                    raise
            else:
                self._held[name] = [node["createdIndex"], node["modifiedIndex"]]
                return self._epoch + int(node["createdIndex"])
            holder = yield from self._read(key)
            if holder is None:
                continue  # freed as we looked
            if holder.get("dir"):
                return None
            if self._parse(key, holder, "token") != self.session_token:
                if (yield from self._holder_alive(key, holder)):
                    return None
                # Its session is gone: the lock is free.  (prevIndex: a
                # key taken meanwhile by someone alive is left alone.)
                try:
                    yield ("DELETE", key, None, {"prevIndex": holder["modifiedIndex"]})
                except EtcdError as exc:
                    if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                        raise
                continue
            # Ours, from a connection this session gave up (the base never
            # retries a lock it holds): its lease was declared lost already.
            try:
                yield ("DELETE", key, None, {"prevIndex": holder["modifiedIndex"]})
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise
        return None

    def _lock_value(self, *, with_connection: bool = True) -> str:
        fields = {"member": self.member_id, "token": self.session_token}
        if with_connection:
            fields["conn"] = self.conn.id
        return json.dumps(fields, separators=(",", ":"))

    def _holder_alive(self, key: str, holder: dict[str, Any], *, cached: bool = True) -> _Steps[bool]:
        """Whether the lock ``holder`` (a lock key's node) still stands: a key
        with a TTL of its own (an ``expiration``: etcd leaves ``ttl`` out once
        it reaches 0, before the key is removed) lives until it expires; one
        without lives as long as the session key of the connection that took
        it.

        ``cached``: a session key seen alive is believed for the TTL it had
        left (unless the reader saw it go), so contended try-locks on a
        live holder cost no extra request -- a holder that dies is then
        found dead no later than its lock would have expired with a TTL."""
        if "expiration" in holder:
            return True
        token, connection = self._parse(key, holder, "token"), self._parse(key, holder, "conn")
        known = self._alive.get(token)
        if cached and known is not None and known[0] == connection and known[1] > time.monotonic():
            return True
        asked_at = time.monotonic()
        session = yield from self._read(self._session_key(token))
        if session is None or session.get("value") != connection:
            self._alive.pop(token, None)
            return False
        if session.get("ttl", 0) > 1:  # (whole seconds left, rounded up: one less is sure)
            self._alive[token] = (connection, asked_at + int(session["ttl"]) - 1)
        return True

    def _still_mine(self, name: str, held: list[int], exc: EtcdError) -> _Steps[bool]:
        """After a refused compare on ``prevIndex``: is the key still this
        grant (a refresh whose reply was lost moved its modifiedIndex)?"""
        if exc.code == KEY_NOT_FOUND:
            return False
        if exc.code != COMPARE_FAILED:
            raise exc
        node = yield from self._read(self._lock_key(name))
        if node is None or node.get("createdIndex") != held[0]:
            return False
        held[1] = node["modifiedIndex"]
        return True

    def do_release(self, name: str, fence: int) -> bool:
        return self._run(self._unclaim(name, fence))

    def _unclaim(self, name: str, fence: int) -> _Steps[bool]:
        held = self._held.get(name)
        if held is None or self._epoch + held[0] != fence:
            return False
        del self._held[name]
        for _attempt in range(4):
            try:
                yield ("DELETE", self._lock_key(name), None, {"prevIndex": held[1]})
                return True
            except EtcdError as exc:
                if not (yield from self._still_mine(name, held, exc)):
                    return False
        return False

    # -- requests queued together, sent at once --------------------------------------------

    def flush_batch(self, run: list[tuple[Call, Any]]) -> None:
        """Claim and unclaim the run's locks at once on the lanes; each caller
        is answered as soon as its request is done, and requests queued
        meanwhile join the run (``take_queued``).  What only the usual path
        handles (a lock held by another, to wait for; a failure to report) is
        served that way after the run."""
        calls = list(run)
        sent_at = [time.monotonic()] * len(calls)
        names = {call.message.name for call, _lease in calls}
        after: list[Call] = []
        freed: list[str] = []

        def steps(call: Call, lease: Lease | None) -> _Steps[Any]:
            if lease is None:
                return self._claim(call.message.name, self.lease_ttl_of(call.message))
            return self._unclaim(lease.name, lease.fence)

        def settle(item: int, ok: bool, value: Any) -> None:
            call, lease = calls[item]
            if lease is None:
                if ok and (value is not None or call.message.timeout == 0):
                    names.discard(call.message.name)
                    self.settle_acquire(call, value, sent_at[item])
                else:
                    after.append(call)  # it waits, or meets (and reports) the failure: its name stays in flight
                return
            names.discard(lease.name)
            if ok:
                freed.append(lease.name)
                self.settle_release(call, lease, value)
            else:
                self._leases.pop(lease.name, None)  # as when the usual path's release fails (unless the session failed meanwhile)
                self._reject(call, value if isinstance(value, errors.CoordinationError) else self._translated(value))

        def more() -> list[_Steps[Any]]:
            taken = self.take_queued(names)
            now = time.monotonic()
            calls.extend(taken)
            sent_at.extend([now] * len(taken))
            return [steps(call, lease) for call, lease in taken]

        self._at_once([steps(call, lease) for call, lease in calls], settle=settle, more=more)
        for call in after:
            self._serve(call)
        self.retry_freed(freed)

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        """Leases without a TTL of their own live by the session key, which
        the heartbeat refreshed: they are only checked for being still there
        (key by key, or by one listing of the locks when many are held).
        Leases with a TTL get one refresh each (etcd v2 has no multi-key
        request), up to ``LANES`` at once."""
        timed, untimed = [], []
        lost = set()
        for lease in leases:
            held = self._held.get(lease.name)
            if held is None or self._epoch + held[0] != lease.fence:
                lost.add((lease.name, lease.fence))
            else:
                (untimed if lease.ttl is None else timed).append((lease, held))
        # Reads go on the session's own connection: a lane may be on another
        # server, whose reads can lag (writes cannot: a server answers one
        # once it applied it), and an index seen going back fails the session.
        if len(untimed) > CHECKED_ONE_BY_ONE:
            standing = self._standing_locks()
            lost.update((lease.name, lease.fence) for lease, held in untimed if standing.get(lease.name) != held[0])
        else:
            lost.update((lease.name, lease.fence) for lease, held in untimed if not self._run(self._check_lock(lease, held)))
        works = [self._refresh_lock(*item) for item in timed]
        if len(works) <= 1:
            outcomes = [(True, self._run(work)) for work in works]
        else:
            outcomes = self._at_once(works)
        for (lease, _held), (ok, refreshed) in zip(timed, outcomes):
            if not ok:
                raise refreshed
            if not refreshed:
                lost.add((lease.name, lease.fence))
        for name, _fence in lost:
            self._held.pop(name, None)
        return lost

    def _check_lock(self, lease: Lease, held: list[int]) -> _Steps[bool]:
        node = yield from self._read(self._lock_key(lease.name))
        return node is not None and node.get("createdIndex") == held[0]

    def _standing_locks(self) -> dict[str, int]:
        """Every lock key of the namespace: name -> createdIndex."""
        node = self._get(f"{self._root}/locks")
        if node is None or not node.get("dir"):
            return {}
        return {decode_name(child["key"].rpartition("/")[2]): child.get("createdIndex") for child in node.get("nodes", ()) if not child.get("dir")}

    def _refresh_lock(self, lease: Lease, held: list[int]) -> _Steps[bool]:
        form = {"refresh": "true", "prevExist": "true", "ttl": self._ttl(lease.ttl)}
        for _attempt in range(4):
            try:
                node = (yield ("PUT", self._lock_key(lease.name), {**form, "prevIndex": held[1]}, None))["node"]
            except EtcdError as exc:
                if not (yield from self._still_mine(lease.name, held, exc)):
                    return False
                continue
            held[1] = node["modifiedIndex"]
            return True
        return False

    def do_lock_holder(self, name: str) -> str | None:
        key = self._lock_key(name)
        node = self._get(key)
        if node is None:
            return None
        if node.get("dir"):
            raise self._foreign(key, "a lock key")
        return self._live_holder(key, node)

    def _live_holder(self, key: str, node: dict[str, Any]) -> str | None:
        """The member holding the lock key ``node``, or None if its session is gone."""
        member = self._parse(key, node, "member")
        if self._parse(key, node, "token") == self.session_token and "expiration" not in node:
            return member if self._parse(key, node, "conn") == self.conn.id else None
        return member if self._run(self._holder_alive(key, node, cached=False)) else None

    # -- liveness ----------------------------------------------------------------------------

    def do_heartbeat(self) -> None:
        """Refresh the session key (which every lock without a TTL of its own
        lives by) and every membership (one request each); now and then,
        free the locks of dead sessions."""
        ttl = self._ttl(None)
        try:
            self._request("PUT", self._session_key(self.session_token), form={"refresh": "true", "ttl": ttl, "prevValue": self.conn.id})
        except EtcdError as exc:
            if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                raise
            raise errors.BackendUnavailable(
                f"the session key of {self.member_id!r} on {self.url} expired or was taken: the session lapsed, and its locks with it"
            ) from None
        for group, value in list(self._member_values.items()):
            try:
                self._request("PUT", self._member_key(group, self.member_id), form={"refresh": "true", "ttl": ttl, "prevValue": value})
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise
                del self._member_values[group]
                raise errors.BackendUnavailable(
                    f"the membership of {self.member_id!r} in {group!r} on {self.url} expired or was taken: the session lapsed"
                ) from None
        if self._heartbeats % REAP_EVERY == 0:
            self._reap()
        self._heartbeats += 1

    def _reap(self) -> None:
        """Delete the locks whose session key is gone (their holders died
        without a successor taking the lock), so none outlives its holder
        for long.  The locks are listed before the sessions: a lock's session
        key is made before the lock, so a lock listed first whose session is
        missing from the later listing was dead when it was listed."""
        locks = self._get(f"{self._root}/locks")
        sessions = self._get(f"{self._root}/sessions")
        if locks is None or sessions is None:
            return
        alive = {child["key"].rpartition("/")[2]: child.get("value") for child in sessions.get("nodes", ())}
        dead = []
        for child in locks.get("nodes", ()):
            if child.get("dir") or "expiration" in child:
                continue
            try:
                holder = json.loads(child["value"])
                if alive.get(encode_name(holder["token"])) != holder["conn"]:
                    dead.append(child)
            except (KeyError, TypeError, ValueError):
                continue  # not a lock of ours: left alone
        for child in dead[:REAPED_AT_MOST]:
            try:
                self._request("DELETE", child["key"], query={"prevIndex": child["modifiedIndex"]})
            except EtcdError as exc:
                if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                    raise

    def do_shutdown(self) -> None:
        """Delete the session key: locks left behind are free at once, not after session_ttl."""
        try:
            self._request("DELETE", self._session_key(self.session_token), query={"prevValue": self.conn.id})
        except EtcdError as exc:
            if exc.code not in (KEY_NOT_FOUND, COMPARE_FAILED):
                raise

    # -- events ---------------------------------------------------------------------------------

    def _follow(self, conn: _Connection, index: int) -> None:
        """Reader thread: long-poll etcd's event history, one event per reply.

        While the session neither watches a group nor waits for a lock it
        rests instead of polling: every change in the namespace -- each of the
        session's own acquires, releases, joins -- took a reply, a new poll
        and a hand-over to the actor.  ``on_waiting`` and ``do_watch`` wake it;
        it then goes on from etcd's current index, and the actor re-reads the
        watched groups and retries every waiter (as after a gap)."""
        query = {"wait": "true", "recursive": "true"}
        # With several servers, a long poll that broke (its server died, lost
        # the leader) is sent again to another: it is a read, from the same
        # index, so nothing is missed.  Each try connects to the next server.
        retries = 2 * len(self._endpoints) if len(self._endpoints) > 1 else 0
        failures = 0
        rested = False
        while not conn.stopping.is_set():
            if conn.rest.settle(lambda: self._views or self._waiters or self._campaigns):
                rested = True
                conn.rest.wait(1.0)
                continue
            try:
                if rested:
                    now, _reply = conn.watch.request("GET", self._root)
                    index, rested = now + 1, False
                    self.run_on_actor(self._on_gap, conn, now, False)
                _index, event = conn.watch.request("GET", self._root, query={**query, "waitIndex": index})
            except EtcdError as exc:
                if exc.code == INDEX_CLEARED and not conn.stopping.is_set():
                    index = exc.index + 1
                    self.run_on_actor(self._on_gap, conn, exc.index)
                    continue
                if exc.status >= 500 and failures < retries:
                    failures += 1
                    conn.stopping.wait(min(self.options.backoff_max, self.options.backoff_initial * failures))
                    continue
                if not conn.stopping.is_set():
                    self.run_on_actor(self._reader_failed, conn, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a socket closed under http.client raises several kinds
                if not conn.stopping.is_set() and failures < retries:
                    failures += 1
                    conn.stopping.wait(min(self.options.backoff_max, self.options.backoff_initial * failures))
                    continue
                if not conn.stopping.is_set():
                    self.run_on_actor(self._reader_failed, conn, exc)
                return
            failures = 0
            node = event.get("node") or {}
            index = int(node.get("modifiedIndex", index)) + 1
            self.run_on_actor(self._on_event, conn, event)

    def _reader_failed(self, conn: _Connection, exc: Exception) -> None:
        if conn is self.conn:
            self.fail(f"lost the event stream of {self.url}: {type(exc).__name__}: {exc}")

    def _on_gap(self, conn: _Connection, index: int, cleared: bool = True) -> None:
        """The reader goes on from ``index`` after a gap (etcd cleared the
        events it had not read, or it rested): re-read, and retry, everything."""
        if conn is not self.conn:
            return
        if cleared:
            logger.info("%r: etcd cleared the events this session had not read; re-reading the watched groups", self)
        self._applied = index
        self._resync_all()
        self.wake()

    def _on_event(self, conn: _Connection, event: dict[str, Any]) -> None:
        if conn is not self.conn:
            return
        node, action = event.get("node") or {}, event.get("action", "")
        index = int(node.get("modifiedIndex", 0))
        self._applied = index
        key = str(node.get("key", ""))
        if key == self._root or not key.startswith(self._root + "/"):
            if action in LEAVE_ACTIONS and (key == self._root or self._root.startswith(key.rstrip("/") + "/")):
                raise errors.BackendUnavailable(f"the namespace {self._root!r} was deleted from {self.url}; reconnecting recreates it")
            return
        parts = key[len(self._root) + 1 :].split("/")
        created = action == "create" or (action == "set" and "prevNode" not in event)
        if parts[0] == "locks" and len(parts) == 2:
            name = decode_name(parts[1])
            group = name[len(RESERVED_LOCK_PREFIX) :] if name.startswith(RESERVED_LOCK_PREFIX) else None
            view = self._views.get(group) if group is not None else None
            if action in LEAVE_ACTIONS:
                if view is not None and index > view.leader_index:
                    view.leader, view.leader_index = None, index
                self.wake([name])
            elif created and view is not None and index > view.leader_index:
                view.leader_index = index
                try:
                    member = json.loads(node["value"])["member"]
                except (KeyError, TypeError, ValueError):
                    return
                if member != view.leader:
                    view.leader = member
                    self.emit(LeaderElected(group, member))  # type: ignore[arg-type]
        elif parts[0] == "groups" and len(parts) in (2, 3):
            view = self._views.get(decode_name(parts[1]))
            if view is None or index <= view.members_index:
                return
            view.members_index = index
            group = decode_name(parts[1])
            if len(parts) == 2:
                if action in LEAVE_ACTIONS:  # the group was deleted
                    for member in sorted(view.members):
                        self.emit(MemberLeft(group, member))
                    view.members = set()
                return
            member = decode_name(parts[2])
            if created and member not in view.members:
                view.members.add(member)
                self.emit(MemberJoined(group, member))
            elif action in LEAVE_ACTIONS and member in view.members:
                view.members.discard(member)
                self.emit(MemberLeft(group, member))
        elif parts[0] == "sessions" and len(parts) == 2:
            if action in LEAVE_ACTIONS or (action == "set" and "prevNode" in event):
                # A session ended (or a new connection of it took over): its
                # untimed locks are free -- the waiters' next try deletes them.
                self._alive.pop(decode_name(parts[1]), None)
                self.wake()
        elif len(parts) == 1 and parts[0] in DIRECTORIES and action in LEAVE_ACTIONS:
            raise errors.BackendUnavailable(f"{self._root}/{parts[0]} was deleted from {self.url}; reconnecting recreates it")

    def _look(self, group: str) -> _View:
        """Read ``group``'s members and leader, with the etcd index of each read."""
        conn = self.conn
        try:
            members_index, reply = conn.http.request("GET", self._group_key(group))
            self._saw(members_index, conn.http.server)
            node = reply["node"]
            if not node.get("dir"):
                raise self._foreign(self._group_key(group), "a directory")
            members = {decode_name(c["key"].rpartition("/")[2]) for c in node.get("nodes", ()) if not c.get("dir")}
        except EtcdError as exc:
            if exc.code != KEY_NOT_FOUND:
                raise
            members_index, members = exc.index, set()
            self._saw(members_index, conn.http.server)
        key = self._lock_key(leader_lock_name(group))
        try:
            leader_index, reply = conn.http.request("GET", key)
            leader = self._live_holder(key, reply["node"])
        except EtcdError as exc:
            if exc.code != KEY_NOT_FOUND:
                raise
            leader_index, leader = exc.index, None
        self._saw(leader_index, conn.http.server)
        return _View(members, members_index, leader, leader_index)

    def _resync_all(self) -> None:
        for group in list(self._views):
            old, new = self._views[group], self._look(group)
            self._views[group] = new
            for member in sorted(old.members - new.members):
                self.emit(MemberLeft(group, member))
            for member in sorted(new.members - old.members):
                self.emit(MemberJoined(group, member))
            if new.leader is not None and new.leader != old.leader:
                self.emit(LeaderElected(group, new.leader))

    def do_watch(self, group: str) -> None:
        """Start reporting ``group``'s events after a look at it; a group
        still watched across a reconnect keeps its view (the reader resumes
        from the last event applied)."""
        if group not in self._views:
            self._views[group] = self._look(group)
            self.on_waiting()

    def do_unwatch(self, group: str) -> None:
        self._views.pop(group, None)

    # -- errors -------------------------------------------------------------------------------

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        if isinstance(exc, errors.CoordinationError):
            return exc  # ours already (a foreign key found inside a lock attempt)
        if isinstance(exc, EtcdError):
            if exc.code == UNAUTHORIZED or exc.status == 401:
                return errors.BackendUnavailable(f"{self.url} refused the credentials (authentication failed)")
            if exc.code in (NOT_A_FILE, NOT_A_DIR):
                return errors.InvalidArgument(
                    f"a key under {self._root!r} on {self.url} holds data in a format coordactors does not know ({exc.message}: {exc.cause}); it was left untouched"
                )
            if exc.code is None and exc.status == 404:
                return errors.BackendUnavailable(f"{self.url} does not serve the v2 keys API (is etcd running with --enable-v2?)")
            return errors.BackendUnavailable(f"{self.url} failed: {exc}")
        if isinstance(exc, (OSError, http.client.HTTPException)):
            return errors.BackendUnavailable(f"{self.url} is unreachable: {type(exc).__name__}: {exc}")
        return super().translate_error(exc)
