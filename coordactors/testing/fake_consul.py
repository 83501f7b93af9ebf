"""A fake Consul agent: the slice of Consul's HTTP API that ``consul://`` uses.

No Consul server can be installed where coordactors is tested, so the
``consul://`` backend is tested against this in-process stand-in::

    with FakeConsulAgent() as agent:
        coordactors.connect(agent.url, "me")      # consul://127.0.0.1:PORT

It is a :class:`http.server.ThreadingHTTPServer` on 127.0.0.1 (a free port)
serving from a daemon thread, with a reaper thread that expires sessions.
``stop()`` closes the listening socket and joins both threads.
:class:`FakeConsulProcess` runs one in a child process instead (the
benchmarks use it: a real agent does not share its client's interpreter).

Endpoints, with Consul's documented semantics:

* ``GET /v1/agent/self``: ``Config`` (``Datacenter`` ``dc1``, ``NodeName``)
  and ``Member`` (``Name``, ``Addr``) of the agent's node, ``fake-consul``.
* ``PUT /v1/catalog/register`` of a node (``Node``, ``Address``; 400
  without them) -> ``true``.
* ``PUT /v1/session/create`` (``Name``, ``Node`` -- the agent's by default,
  500 ``Missing node registration`` for a node not in the catalog -- ``TTL``
  10s..24h, ``Behavior`` ``release``/``delete``, ``LockDelay``, default
  15s) -> ``{"ID": ...}``;
  ``PUT /v1/session/renew/<id>`` (404 once the session is gone);
  ``PUT /v1/session/destroy/<id>``; ``GET /v1/session/info/<id>``.
* ``GET /v1/kv/<key>`` (``recurse``, ``keys`` with ``separator``, blocking ``index``/``wait``,
  ``X-Consul-Index``, 404 for nothing), ``PUT`` (``acquire``, ``release``,
  ``cas``, ``flags``; body = value; answers ``true``/``false``), ``DELETE``
  (``recurse``, ``cas``).  Entries carry ``CreateIndex``, ``ModifyIndex``,
  ``LockIndex``, ``Flags``, ``Key``, ``Value`` (base64) and ``Session``.
* ``PUT /v1/txn``: KV verbs ``set``, ``cas``, ``lock``, ``unlock``, ``get``,
  ``get-tree``, ``check-index``, ``check-session``, ``check-not-exists``,
  ``delete``, ``delete-tree``, ``delete-cas``; all or nothing, one index for
  the whole transaction; 409 with ``Errors`` (``OpIndex``, ``What``) -- a
  ``get`` of a missing key fails it, a ``get-tree`` gives nothing; 413 for
  more than 64 operations.
* ACLs, only as far as a wrong token goes: ``FakeConsulAgent(token=...)``
  answers 403 ``ACL not found`` to a request without that token.

One raft-like index for the whole store, incremented once per write (or
transaction).  A session not renewed within its TTL is invalidated (the
reaper checks every 20 ms) and its Behavior applied to the keys it holds;
those keys then refuse acquisition for the session's LockDelay.

Fidelity limits -- what a real agent does and this fake does not:

* One node, one datacenter, no raft: no ``stale``/``consistent`` modes, no
  leader elections, no data loss; the store outlives ``stop()``/``start()``
  (same port) but not the object.
* A session expires at exactly its TTL (Consul waits up to 2x TTL); there are
  no health checks (``serfHealth``) and no node sessions.  ``min_ttl`` (default
  10 s, Consul's limit) can be lowered so tests can watch expiry quickly.
* A blocking query waits on the index of its key prefix (the highest
  ``ModifyIndex`` under it, or of a delete under it) and returns early at
  ``stop()``; there is no jitter of wait/16 and ``wait`` is capped at 10 min.
* Only the endpoints above; the catalog holds nodes only (no services,
  checks or health); no ``dc``, ``ns``, ``partition``, ``raw``, filtering,
  or ACL policies; values are bytes, keys are whatever the URL path decodes
  to.
"""

from __future__ import annotations

import base64
import bisect
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from coordactors._signals import signals_blocked

__all__ = ["FakeConsulAgent", "FakeConsulProcess"]

NODE = "fake-consul"
"""The agent's node name (``/v1/agent/self``), on which sessions are created by default."""

MAX_TXN_OPS = 64
"""Consul's limit on the operations of one transaction (413 beyond it)."""

_DURATION = re.compile(r"([\d.]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: Any) -> float:
    """A Go duration ("15s", "1.5s", "100ms") or a number of nanoseconds, in seconds."""
    if isinstance(text, (int, float)):
        return float(text) / 1e9
    parts = _DURATION.findall(str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


class _Conflict(Exception):
    """A transaction operation failed: roll back, answer 409."""


class _Entry:
    __slots__ = ("create_index", "flags", "key", "lock_index", "modify_index", "session", "value")

    def __init__(self, key: str, value: bytes, flags: int, index: int) -> None:
        self.key = key
        self.value = value
        self.flags = flags
        self.create_index = index
        self.modify_index = index
        self.lock_index = 0
        self.session: str | None = None

    def copy(self) -> _Entry:
        clone = _Entry(self.key, self.value, self.flags, self.create_index)
        clone.modify_index, clone.lock_index, clone.session = self.modify_index, self.lock_index, self.session
        return clone

    def json(self, with_value: bool = True) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": (base64.b64encode(self.value).decode() if self.value else None) if with_value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.session:
            entry["Session"] = self.session
        return entry


class _Session:
    __slots__ = ("behavior", "create_index", "expires_at", "id", "lock_delay", "name", "node", "ttl")

    def __init__(self, name: str, node: str, ttl: float | None, behavior: str, lock_delay: float, index: int) -> None:
        self.id = str(uuid.uuid4())
        self.name = name
        self.node = node
        self.ttl = ttl
        self.behavior = behavior
        self.lock_delay = lock_delay
        self.create_index = index
        self.expires_at = None if ttl is None else time.monotonic() + ttl

    def json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": int(self.lock_delay * 1e9),
            "Behavior": self.behavior,
            "TTL": "" if self.ttl is None else f"{self.ttl:g}s",
            "NodeChecks": ["serfHealth"],
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


def _restore(table: dict[str, Any], key: str, saved: Any) -> None:
    """Put back a table's value for ``key`` as journaled (None: it had none)."""
    if saved is None:
        table.pop(key, None)
    else:
        table[key] = saved


class _Store:
    """The KV store and sessions, under one condition variable."""

    def __init__(self, min_ttl: float) -> None:
        self.min_ttl = min_ttl
        self.cond = threading.Condition()
        self.index = 1
        self.kv: dict[str, _Entry] = {}
        self.sessions: dict[str, _Session] = {}
        self.nodes: dict[str, str] = {NODE: "127.0.0.1"}  # the catalog's nodes: name -> address
        self.tombstones: dict[str, int] = {}
        self.lock_delay_until: dict[str, float] = {}
        self.stopping = False
        # The keys written, sorted: prefix reads cost what lies under the
        # prefix, as in Consul's radix tree, not what the whole store holds.
        # Deleted keys linger (a rolled-back create too) until there are
        # more of them than live ones, then the list is rebuilt.
        self._keys: list[str] = []
        self._deleted = 0
        # The index of the newest write under each prefix that ends in "/"
        # (the index of a prefix read): any write is the newest, so it is
        # noted at each such prefix of its key, and a blocking query on the
        # namespace costs nothing per tombstone -- a workload that churns
        # keys would otherwise slow every read down without bound (Consul's
        # tombstones are reaped; these are kept for exact reads).
        self._newest: dict[str, int] = {}
        self._written: list[str] = []  # keys touched by the write in progress
        # While a transaction runs: each touched key's state before it, to
        # roll back without copying the store.
        self._journal: dict[str, tuple[_Entry | None, int | None, float | None]] | None = None
        # What reads computed at the current index: blocking queries woken by
        # one write (or by their 50 ms poll) share it instead of each walking
        # the prefix again.  Every change of the store moves the index.
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._memo_index = 0

    # -- indexes -------------------------------------------------------------

    def memoized(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()``, at most once per store index for each ``key``."""
        if self._memo_index != self.index:
            self._memo, self._memo_index = {}, self.index
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def prefix_index(self, prefix: str, exact: bool) -> int:
        index: int = self.memoized(("index", prefix, exact), lambda: self._prefix_index(prefix, exact))
        return index

    def _prefix_index(self, prefix: str, exact: bool) -> int:
        if exact:
            entry = self.kv.get(prefix)
            return entry.modify_index if entry is not None else self.tombstones.get(prefix, 1)
        if prefix.endswith("/") or not prefix:
            return self._newest.get(prefix, 1)
        live = [entry.modify_index for entry in self.entries_under(prefix)]
        return max(live + [index for key, index in self.tombstones.items() if key.startswith(prefix)], default=1)

    def note_writes(self, index: int) -> None:
        """The write in progress is done, at ``index``: note it at the prefixes of the keys it touched."""
        newest = self._newest
        if self._written:
            newest[""] = index
        for key in self._written:
            at = key.find("/")
            while at >= 0:
                newest[key[:at + 1]] = index
                at = key.find("/", at + 1)
        self._written.clear()
        if self._deleted > max(1000, len(self.kv)):
            self._keys, self._deleted = sorted(self.kv), 0

    def entries_under(self, prefix: str) -> list[_Entry]:
        """The live entries whose keys start with ``prefix``, in key order."""
        kv = self.kv
        return [kv[key] for key in self.keys_under(prefix) if key in kv]

    def keys_under(self, prefix: str) -> list[str]:
        """The keys written under ``prefix`` (deleted ones among them), in order."""
        keys = self._keys
        start = bisect.bisect_left(keys, prefix)
        if not prefix:
            return keys[start:]
        if ord(prefix[-1]) == sys.maxunicode:  # nothing to bump: filter
            return [key for key in keys[start:] if key.startswith(prefix)]
        # Past the last key with the prefix: the prefix with its last character bumped.
        end = bisect.bisect_left(keys, prefix[:-1] + chr(ord(prefix[-1]) + 1), start)
        return keys[start:end]

    def _touch(self, key: str) -> None:
        """Note ``key`` before a write: keep it in the sorted index, and its state in the journal."""
        entry = self.kv.get(key)
        self._written.append(key)
        if entry is None:
            keys = self._keys
            at = bisect.bisect_left(keys, key)
            if at == len(keys) or keys[at] != key:
                keys.insert(at, key)
        if self._journal is not None and key not in self._journal:
            self._journal[key] = (None if entry is None else entry.copy(), self.tombstones.get(key), self.lock_delay_until.get(key))

    def _roll_back(self, journal: dict[str, tuple[_Entry | None, int | None, float | None]]) -> None:
        self._written.clear()
        for key, (entry, tombstone, delay) in journal.items():
            _restore(self.kv, key, entry)
            _restore(self.tombstones, key, tombstone)
            _restore(self.lock_delay_until, key, delay)

    def _bump(self) -> int:
        self.index += 1
        return self.index

    # -- sessions ------------------------------------------------------------

    def expire_sessions(self) -> None:
        now = time.monotonic()
        expired = [s for s in self.sessions.values() if s.expires_at is not None and s.expires_at <= now]
        if expired:
            index = self._bump()
            for session in expired:
                self._invalidate(session, index)
            self.cond.notify_all()

    def _invalidate(self, session: _Session, index: int) -> None:
        self.sessions.pop(session.id, None)
        until = time.monotonic() + session.lock_delay
        for key, entry in list(self.kv.items()):
            if entry.session != session.id:
                continue
            self._touch(key)
            if session.lock_delay > 0:
                self.lock_delay_until[key] = until
            if session.behavior == "delete":
                del self.kv[key]
                self.tombstones[key] = index
                self._deleted += 1
            else:
                entry.session = None
                entry.modify_index = index
        self.note_writes(index)

    # -- KV primitives (caller holds cond; ``index`` is this write's index) ---

    def _set(self, key: str, value: bytes, flags: int, index: int) -> _Entry:
        self._touch(key)
        entry = self.kv.get(key)
        if entry is None:
            entry = self.kv[key] = _Entry(key, value, flags, index)
            self.tombstones.pop(key, None)
        else:
            entry.value, entry.flags, entry.modify_index = value, flags, index
        return entry

    def _acquire(self, key: str, value: bytes, flags: int, session_id: str, index: int) -> _Entry | None:
        if session_id not in self.sessions:
            raise ValueError(f"invalid session {session_id!r}")
        entry = self.kv.get(key)
        if entry is not None and entry.session and entry.session != session_id:
            return None
        if entry is None or entry.session != session_id:
            if self.lock_delay_until.get(key, 0) > time.monotonic():
                return None
            self._touch(key)
            self.lock_delay_until.pop(key, None)
        was_ours = entry is not None and entry.session == session_id
        entry = self._set(key, value, flags, index)
        if not was_ours:
            entry.lock_index += 1
            entry.session = session_id
        return entry

    def _release(self, key: str, value: bytes, flags: int, session_id: str, index: int) -> _Entry | None:
        entry = self.kv.get(key)
        if entry is None or entry.session != session_id:
            return None
        entry = self._set(key, value, flags, index)
        entry.session = None
        return entry

    def _delete(self, key: str, index: int) -> None:
        if key in self.kv:
            self._touch(key)
        if self.kv.pop(key, None) is not None:
            self.tombstones[key] = index
            self._deleted += 1

    def _delete_tree(self, prefix: str, index: int) -> None:
        for key in [key for key in self.keys_under(prefix) if key in self.kv]:
            self._delete(key, index)

    # -- transactions --------------------------------------------------------

    def txn(self, ops: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        with self.cond:
            self.expire_sessions()
            journal: dict[str, tuple[_Entry | None, int | None, float | None]] = {}
            self._journal = journal
            index = self.index + 1
            results: list[dict[str, Any]] = []
            wrote = False
            try:
                for position, op in enumerate(ops):
                    try:
                        kv = op["KV"]
                        result, writes = self._txn_op(kv, index)
                    except _Conflict as exc:
                        self._roll_back(journal)
                        return 409, {"Results": None, "Errors": [{"OpIndex": position, "What": str(exc)}]}
                    except (KeyError, TypeError, ValueError) as exc:
                        self._roll_back(journal)
                        return 400, {"Results": None, "Errors": [{"OpIndex": position, "What": f"invalid operation: {exc}"}]}
                    wrote = wrote or writes
                    if result is not None:
                        results.extend({"KV": e} for e in result)
            finally:
                self._journal = None
            if wrote:
                self.index = index
                self.note_writes(index)
                self.cond.notify_all()
            return 200, {"Results": results, "Errors": None}

    def _txn_op(self, kv: dict[str, Any], index: int) -> tuple[list[dict[str, Any]] | None, bool]:
        verb, key = kv["Verb"], kv["Key"]
        value = base64.b64decode(kv.get("Value") or "")
        flags = int(kv.get("Flags") or 0)
        entry = self.kv.get(key)
        if verb == "set":
            return [self._set(key, value, flags, index).json(False)], True
        if verb == "cas":
            want = int(kv.get("Index") or 0)
            if (want == 0 and entry is not None) or (want != 0 and (entry is None or entry.modify_index != want)):
                raise _Conflict(f'failed to set key "{key}", index is stale')
            return [self._set(key, value, flags, index).json(False)], True
        if verb == "lock":
            try:
                locked = self._acquire(key, value, flags, kv.get("Session") or "", index)
            except ValueError as exc:
                raise _Conflict(f'failed to lock key "{key}": {exc}') from None
            if locked is None:
                raise _Conflict(f'failed to lock key "{key}", lock is already held')
            return [locked.json(False)], True
        if verb == "unlock":
            released = self._release(key, value, flags, kv.get("Session") or "", index)
            if released is None:
                raise _Conflict(f'failed to unlock key "{key}", lock is not held by the session')
            return [released.json(False)], True
        if verb == "get":
            if entry is None:
                raise _Conflict(f'key "{key}" doesn\'t exist')
            return [entry.json()], False
        if verb == "get-tree":
            return [e.json() for e in self.entries_under(key)], False
        if verb == "check-index":
            if entry is None or entry.modify_index != int(kv.get("Index") or 0):
                raise _Conflict(f'current modify index {entry.modify_index if entry else 0} != {kv.get("Index")} for key "{key}"')
            return [entry.json(False)], False
        if verb == "check-session":
            if entry is None or entry.session != kv.get("Session"):
                raise _Conflict(f'key "{key}" is not locked by session "{kv.get("Session")}"')
            return [entry.json(False)], False
        if verb == "check-not-exists":
            if entry is not None:
                raise _Conflict(f'key "{key}" exists')
            return None, False
        if verb == "delete":
            self._delete(key, index)
            return None, True
        if verb == "delete-tree":
            self._delete_tree(key, index)
            return None, True
        if verb == "delete-cas":
            if entry is None or entry.modify_index != int(kv.get("Index") or 0):
                raise _Conflict(f'failed to delete key "{key}", index is stale')
            self._delete(key, index)
            return None, True
        raise ValueError(f"unknown KV verb {verb!r}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # stop() shut the socket down under us

    # -- plumbing --------------------------------------------------------------

    def _reply(self, code: int, body: Any, index: int | None = None, raw: bool = False, encoded: bool = False) -> None:
        """Answer ``body``: JSON-encoded here, or already (``encoded``), or text (``raw``)."""
        if raw or encoded:
            data = body if isinstance(body, bytes) else body.encode()
        else:
            data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if raw else "application/json")
        self.send_header("Content-Length", str(len(data)))
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
            self.send_header("X-Consul-KnownLeader", "true")
            self.send_header("X-Consul-LastContact", "0")
        # Headers and body in one write: two small writes meet the client's
        # delayed ACK and cost 40 ms per request.
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        self.flush_headers()

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self, method: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        params = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        body = self._body()
        server = self.server
        if server.token is not None and self.headers.get("X-Consul-Token") != server.token:
            self._reply(403, "ACL not found", raw=True)
            return
        try:
            if path.startswith("/v1/kv/"):
                self._kv(method, path[len("/v1/kv/"):], params, body)
            elif path.startswith("/v1/session/"):
                self._session(method, path[len("/v1/session/"):], body)
            elif path == "/v1/txn" and method == "PUT":
                ops = json.loads(body or b"[]")
                if len(ops) > MAX_TXN_OPS:
                    self._reply(413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})", raw=True)
                    return
                code, answer = server.store.txn(ops)
                self._reply(code, answer, index=server.store.index)
            elif path == "/v1/agent/self" and method == "GET":
                self._reply(200, self._agent_self())
            elif path == "/v1/catalog/register" and method == "PUT":
                self._register(body)
            else:
                self._reply(404, f"no handler for {method} {path}", raw=True)
        except ValueError as exc:
            self._reply(400, f"Bad request: {exc}", raw=True)

    def _agent_self(self) -> dict[str, Any]:
        """The local agent: a server, alone in datacenter ``dc1``."""
        address, _port = self.server.server_address[:2]
        return {
            "Config": {"Datacenter": "dc1", "NodeName": NODE, "NodeID": self.server.node_id, "Server": True, "Version": "fake"},
            "Member": {"Name": NODE, "Addr": address, "Port": 8301, "Tags": {"dc": "dc1", "role": "consul"}, "Status": 1},
            "Meta": {},
        }

    def _register(self, body: bytes) -> None:
        """``PUT /v1/catalog/register`` of a node (services and checks are not faked)."""
        spec = {k.lower(): v for k, v in json.loads(body or b"{}").items()}
        if spec.get("service") or spec.get("check") or spec.get("checks"):
            raise ValueError("the fake agent registers nodes only, not services or checks")
        if not spec.get("node"):
            raise ValueError("Must provide node")
        if not spec.get("address"):
            raise ValueError("Must provide address")
        store = self.server.store
        with store.cond:
            store.nodes[spec["node"]] = spec["address"]
            store._bump()
            store.cond.notify_all()
            self._reply(200, True, index=store.index)

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # -- sessions ----------------------------------------------------------------

    def _session(self, method: str, rest: str, body: bytes) -> None:
        store = self.server.store
        action, _, session_id = rest.partition("/")
        with store.cond:
            store.expire_sessions()
            if action == "create" and method == "PUT":
                spec = {k.lower(): v for k, v in (json.loads(body) if body.strip() else {}).items()}
                ttl = _duration(spec["ttl"]) if spec.get("ttl") else None
                if ttl is not None and not store.min_ttl <= ttl <= 86400:
                    raise ValueError(f"Invalid Session TTL '{spec['ttl']}', must be between [{store.min_ttl:g}s=24h0m0s]")
                behavior = spec.get("behavior") or "release"
                if behavior not in ("release", "delete"):
                    raise ValueError(f"Invalid Behavior setting '{behavior}'")
                lock_delay = _duration(spec["lockdelay"]) if "lockdelay" in spec else 15.0
                node = spec.get("node") or NODE
                if node not in store.nodes:
                    self._reply(500, "Missing node registration", raw=True)
                    return
                created = _Session(spec.get("name") or "", node, ttl, behavior, lock_delay, store._bump())
                store.sessions[created.id] = created
                store.cond.notify_all()
                self._reply(200, {"ID": created.id}, index=store.index)
            elif action == "renew" and method == "PUT":
                session = store.sessions.get(session_id)
                if session is None:
                    self._reply(404, f"Session id '{session_id}' not found", raw=True)
                    return
                if session.ttl is not None:
                    session.expires_at = time.monotonic() + session.ttl
                self._reply(200, [session.json()], index=store.index)
            elif action == "destroy" and method == "PUT":
                session = store.sessions.get(session_id)
                if session is not None:
                    store._invalidate(session, store._bump())
                    store.cond.notify_all()
                self._reply(200, True, index=store.index)
            elif action == "info" and method == "GET":
                session = store.sessions.get(session_id)
                self._reply(200, [session.json()] if session else [], index=store.index)
            else:
                self._reply(404, f"no handler for {method} /v1/session/{rest}", raw=True)

    # -- KV -----------------------------------------------------------------------------

    def _kv(self, method: str, key: str, params: dict[str, str], body: bytes) -> None:
        store = self.server.store
        if method == "GET":
            self._kv_get(key, params)
            return
        with store.cond:
            store.expire_sessions()
            index = store.index + 1
            if method == "PUT":
                flags = int(params.get("flags") or 0)
                if "acquire" in params:
                    try:
                        done = store._acquire(key, body, flags, params["acquire"], index) is not None
                    except ValueError as exc:
                        self._reply(500, str(exc), raw=True)
                        return
                elif "release" in params:
                    done = store._release(key, body, flags, params["release"], index) is not None
                elif "cas" in params:
                    want, entry = int(params["cas"]), store.kv.get(key)
                    done = (want == 0 and entry is None) or (want != 0 and entry is not None and entry.modify_index == want)
                    if done:
                        store._set(key, body, flags, index)
                else:
                    store._set(key, body, flags, index)
                    done = True
            elif method == "DELETE":
                entry = store.kv.get(key)
                if "cas" in params:
                    done = entry is not None and entry.modify_index == int(params["cas"]) and int(params["cas"]) != 0
                    if done:
                        store._delete(key, index)
                elif "recurse" in params:
                    store._delete_tree(key, index)
                    done = True
                else:
                    store._delete(key, index)
                    done = True
            else:
                self._reply(405, "method not allowed", raw=True)
                return
            if done:
                store.index = index
                store.note_writes(index)
                store.cond.notify_all()
            self._reply(200, done, index=store.index)

    def _kv_get(self, key: str, params: dict[str, str]) -> None:
        store = self.server.store
        exact = "recurse" not in params and "keys" not in params
        with store.cond:
            store.expire_sessions()
            if "index" in params:
                wanted = int(params["index"])
                deadline = time.monotonic() + min(_duration(params["wait"]) if "wait" in params else 300.0, 600.0)
                while store.prefix_index(key, exact) <= wanted and not store.stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    store.cond.wait(min(left, 0.05))
                    store.expire_sessions()
            index = store.prefix_index(key, exact)
            separator = params.get("separator") if "keys" in params else None
            body = store.memoized(("get", key, exact, "keys" in params, separator), lambda: self._listing(key, exact, "keys" in params, separator))
            if body is None:
                self._reply(404, b"", index=index, raw=True)
            else:
                self._reply(200, body, index=index, encoded=True)

    def _listing(self, key: str, exact: bool, keys_only: bool, separator: str | None) -> bytes | None:
        """The JSON answer of a read of ``key`` (None: nothing there); with a
        ``separator``, each key is cut after the first one past ``key``."""
        store = self.server.store
        entries = ([store.kv[key]] if key in store.kv else []) if exact else store.entries_under(key)
        if not entries:
            return None
        if not keys_only:
            return json.dumps([e.json() for e in entries]).encode()
        names = [e.key for e in entries]
        if separator:
            cut = (name.find(separator, len(key)) for name in names)
            names = list(dict.fromkeys(name if at < 0 else name[:at + len(separator)] for name, at in zip(names, cut)))
        return json.dumps(names).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: _Store, token: str | None, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.store = store
        self.token = token
        self.node_id = str(uuid.uuid4())
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()

    def drop_connections(self) -> None:
        """Shut every accepted connection, as a dying agent's would be."""
        with self.lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeConsulAgent:
    """An in-process fake Consul agent (see the module docstring for its limits).

    Args:
        token: if given, every request must carry it (``X-Consul-Token``),
            else 403 ``ACL not found``.
        min_ttl: the shortest session TTL accepted (Consul's is 10 s).
    """

    def __init__(self, *, token: str | None = None, min_ttl: float = 10.0) -> None:
        self.token = token
        self.store = _Store(min_ttl)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        """``consul://127.0.0.1:PORT``."""
        return f"consul://{self.host}:{self.port}"

    def start(self) -> FakeConsulAgent:
        """Serve from a daemon thread: on a free port, or on the same port as
        before after a ``stop()`` (the store survives it, as a restarted
        agent's would)."""
        if self._server is not None:
            return self
        self._stop.clear()
        self.store.stopping = False
        self._server = _Server(self.store, self.token, self.port)
        self.port = self._server.server_address[1]
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"FakeConsul[{self.port}]", daemon=True),
            threading.Thread(target=self._reap, name=f"FakeConsulReaper[{self.port}]", daemon=True),
        ]
        with signals_blocked():  # a stand-in for a separate agent process: the test's signals are not its own
            for thread in self._threads:
                thread.start()
        return self

    def _reap(self) -> None:
        while not self._stop.wait(0.02):
            with self.store.cond:
                self.store.expire_sessions()

    def stop(self) -> None:
        """Stop serving: wake blocking queries, close the socket, join the threads.
        Connections already accepted are closed by their clients; the store is kept."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop.set()
        with self.store.cond:
            self.store.stopping = True
            self.store.cond.notify_all()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        for thread in self._threads:
            thread.join(5)
        self._threads = []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeConsulAgent {self.url} {'running' if self._server else 'stopped'}>"


class FakeConsulProcess:
    """A :class:`FakeConsulAgent` in a process of its own, as a real agent is.

    For benchmarks: in-process, the agent's request handling takes the
    client's interpreter lock and the client's work takes the agent's, which
    no deployment of Consul does.  The child stops when ``stop()`` closes its
    stdin, or when this process dies and its stdin closes with it.
    """

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> FakeConsulProcess:
        """Start the child; return once it serves (its URL is its first line)."""
        process = subprocess.Popen([sys.executable, "-m", "coordactors.testing.fake_consul"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        self._process = process
        no_answer = threading.Timer(self.start_timeout, process.kill)
        no_answer.start()
        try:
            line = process.stdout.readline().strip()  # type: ignore[union-attr]
        finally:
            no_answer.cancel()
        if not line.startswith("consul://"):
            self.stop()
            raise RuntimeError(f"the fake Consul agent process did not start (exit status {process.poll()}, said {line!r})")
        self.url = line
        return self

    def stop(self) -> None:
        """Stop the child and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()  # type: ignore[union-attr]
            process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait(10)
        finally:
            process.stdout.close()  # type: ignore[union-attr]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeConsulProcess {self.url or 'not started'} {'running' if self._process else 'stopped'}>"


def main() -> None:
    """Serve a fake agent until stdin closes; print its URL first."""
    with FakeConsulAgent() as agent:
        print(agent.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
