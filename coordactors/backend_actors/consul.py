"""consul://: coordination through Consul's KV store and sessions (py-consul).

URL: ``consul://[:token@]host[:port][?options]`` (default ``127.0.0.1:8500``;
the password part of the URL, or the ``token`` option, is the ACL token).
Options, besides the common ones:

=============  =============================================================
``namespace``  key prefix, ``/``-separated words of ``[A-Za-z0-9_.-]``
               (default ``coordactors``)
``token``      ACL token (or give it as the URL's password, not both)
=============  =============================================================

``session_ttl`` (default 30 s; Consul accepts 10 s to 24 h) is the TTL of the
Consul session; ``lease_ttl`` is refused: a lock lives exactly as long as the
session (``LEASE_TTL = False``).

Keys, under ``<namespace>/`` (names are base64url-encoded, so any name --
``/``, ``..``, quotes, spaces -- is one safe path segment):

=========================  ==================================================
``epoch``                  the fence base, written once (``cas=0``) with
                           ``fence_floor()``
``s/<token>``              this coordinator's current session id
``g/<group>/``             the group
``g/<group>/<member>``     a membership, acquired by the member's session;
                           value ``{"caps": ..., "token": ...}``
``l/<lock>``               a lock, acquired by its holder's session and
                           deleted at release (so it exists exactly while
                           held); value ``{"member": ..., "token": ...}``
``log/<uuid>.<k>.<g>.<m>`` an event: ``{"g": group, "k": join|leave|leader,
                           "m": member}``, the same in the name (``k``
                           as is, ``g`` and ``m`` encoded)
=========================  ==================================================

Mechanisms:

* session: one Consul session per connection, ``Behavior=delete``,
  ``LockDelay=0s``, TTL ``session_ttl``, renewed by the heartbeat; a renew
  answered 404 means Consul invalidated it, which fails the coordinator's
  session (the supervisor restores it with a new Consul session).  The
  session id is recorded under ``s/<session_token>``; a restored session
  destroys its predecessor first, so what the old one held is freed at once
  rather than after its TTL.
* lock: a transaction ``check-index`` (or ``check-not-exists``) + ``lock``
  (KV acquire with the session) -- the check keeps a key left in a foreign
  format from being overwritten; an unlocked key (left by an older version,
  which unlocked rather than deleted) is taken the same way.  Release is
  ``delete-cas`` with the lock's ModifyIndex: the key goes, so a reader that
  sees key names only knows the lock is free.  Locks and memberships are
  deleted with the session.
* fence: ``epoch + ModifyIndex`` of the acquiring write.  ModifyIndex is
  Consul's global raft index, so it is strictly increasing across every
  holder of a key, even one deleted and re-created in between (LockIndex
  would restart from 1 then).  The lock key is not written while held, so
  ``ModifyIndex == fence - epoch`` also proves the holder still holds it.
  If Consul loses its data, the raft index restarts -- and so does ``epoch``,
  re-seeded from the clock, far above every earlier fence.
* events: every join, leave and leader acquisition writes a ``log/<uuid>``
  entry in the SAME transaction as the change, so the log cannot disagree
  with the state; all of a transaction's writes share one raft index, so the
  entries' CreateIndex orders them exactly.  A reader thread (its own HTTP
  session) runs blocking queries with ``index`` listing the key NAMES of the
  whole namespace (``?keys``), not their values, so a write costs each
  reader a list of names, parsed only where it differs from the last one.
  Each answer is a consistent snapshot.  A single new log key carries its
  event in its name: nothing else new to order it against, it is not read
  (one round trip less per change).  Otherwise the new log keys are
  read by transactions of ``get-tree`` verbs (64 per transaction, Consul's
  limit; ``get-tree`` rather than ``get``, which fails the whole transaction
  for an entry pruned meanwhile) and become MemberJoined/MemberLeft/
  LeaderElected in CreateIndex order; its names reveal what no log records
  -- members deleted with an expired session (MemberLeft) and locks freed,
  their keys gone (waiters are woken at once).  A leader lock's holder is
  the member of the group's newest ``leader`` entry; where that entry may
  have been pruned unread, the lock key itself is read.  Readers prune the
  log to the newest ``LOG_KEEP`` entries, oldest first; one that fell
  further behind learns what it missed from the names.  While the session
  neither watches nor waits, its reader rests (no blocking query); woken, it
  asks from the index it stopped at, and its first answer shows what changed
  meanwhile.  As resting readers prune nothing, the heartbeat also prunes,
  after every ``PRUNE_EVERY`` entries its session wrote.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import consul  # type: ignore[import-untyped]
import consul.callback  # type: ignore[import-untyped]
import consul.exceptions  # type: ignore[import-untyped]
import requests

from coordactors import errors
from coordactors.backend_actors._keepalive import KeepAliveSession
from coordactors.backend_actors._rest import ReaderRest, RestingReader
from coordactors.backend_actors.base import SessionActor, fence_floor, leader_lock_name
from coordactors.characteristics import Characteristics as C
from coordactors.events import LeaderElected, MemberJoined, MemberLeft
from coordactors.messages import Lease
from coordactors.messages._validate import RESERVED_LOCK_PREFIX
from coordactors.urls import SessionOptions, text

logger = logging.getLogger(__name__)

__all__ = ["ConsulSession"]

READER_WAIT = 1.0
"""Seconds a blocking query waits: also how long a stopped reader may linger."""

LOG_KEEP = 256
"""Event-log entries kept; pruning starts at twice as many.  A reader needs
only the entries newer than its last answer; one further behind learns what
it missed from the state (members, lock holders) instead."""

PRUNE_EVERY = 64
"""A session's heartbeat prunes the log after this many entries it wrote
(readers prune too, but they rest while their session neither watches nor waits)."""

TXN_OPS = 64
"""Consul's limit on the operations of one transaction."""

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def _enc(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode()


def _dec(segment: str) -> str:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()


def _duration(seconds: float) -> str:
    """Seconds as a Go duration ("30s", "0.6s"; never "1e+06s")."""
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


def _raw(response: Any) -> Any:
    return response


class _Connection:
    """The command client, the reader's client and thread, and the Consul session."""

    def __init__(self, client: consul.Consul, reader: consul.Consul, session_id: str, epoch: int, index: int, follower: _Follower) -> None:
        self.client = client
        self.reader = reader
        self.session_id = session_id
        self.epoch = epoch
        self.index = index
        self.follower = follower
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.rest = ReaderRest()
        """The reader does not follow the namespace while the session neither watches nor waits."""


class _View:
    """What one answer of the reader's blocking query shows of the namespace."""

    def __init__(self, members: dict[str, frozenset[str]], locks: frozenset[str]) -> None:
        self.log: list[tuple[int, str, str, str, str]] = []  # (CreateIndex, key, group, kind, member), new entries only
        self.members = members
        self.locks = locks  # the lock keys that exist: held (a release deletes the key)
        self.leaders: dict[str, str] = {}  # group -> holder of its leader lock, where known
        self.named_after: int | None = None
        """Set when the log entry is known by its name only: its CreateIndex
        is after this and at most the answer's (which ``log`` gives)."""

    def leader(self, group: str) -> str | None:
        return self.leaders.get(group)


def _meaning(prefix: str, key: str) -> tuple[str, str, str | None] | None:
    """What a key says: ("log", key, None), ("l", lock, None), ("g", group,
    member, or None for the group's own key); None for a foreign key."""
    kind, _, rest = key[len(prefix):].partition("/")
    try:
        if kind == "log":
            return kind, key, None
        if kind == "l":
            return kind, _dec(rest), None
        if kind == "g":
            group_part, _, member_part = rest.partition("/")
            return kind, _dec(group_part), _dec(member_part) if member_part else None
    except (ValueError, binascii.Error):
        pass  # not ours to interpret
    return None


def _event_named(key: str) -> tuple[str, str, str] | None:
    """The (group, kind, member) a log key's name carries after its uuid; None
    for a name without them (written by an older version, or foreign)."""
    parts = key.rpartition("/")[2].split(".")
    if len(parts) != 4 or parts[1] not in ("join", "leave", "leader"):
        return None
    try:
        return _dec(parts[2]), parts[1], _dec(parts[3])
    except (ValueError, binascii.Error):
        return None


def _value(entry: dict[str, Any]) -> bytes:
    """A transaction result's value (base64 in the HTTP API)."""
    return base64.b64decode(entry.get("Value") or "")


class _Follower:
    """The reader thread's memory between answers, so an answer listing key
    names suffices: the keys listed last (each answer's are parsed only where
    they differ), which log entries were read (with their CreateIndex, to
    prune the oldest), and who holds the leader locks.

    Every leader-lock acquisition writes a ``leader`` log entry in the same
    transaction, so the newest such entry names the holder -- unless entries
    were pruned before this reader read them.  Pruning deletes the oldest
    first, so while the newest entry known before an answer is still in it,
    nothing newer was pruned; otherwise (or if an entry vanished between the
    answer and its fetch) the holders are read from the lock keys instead.
    """

    def __init__(self, prefix: str, keys: list[str], log: dict[str, int]) -> None:
        self.prefix = prefix
        self.log = log  # log key -> CreateIndex, of the entries read
        self.holders: dict[str, str | None] = {}  # leader lock name -> holder (None: a value not ours)
        self._keys: set[str] = set()
        self._meanings: dict[str, tuple[str, str, str | None]] = {}
        self._log_keys: set[str] = set()
        self._locks: set[str] = set()
        self._groups: dict[str, set[str | None]] = {}
        self._members: dict[str, frozenset[str]] = {}
        self._newest: tuple[int, str] | None = None  # of self.log
        self._list(keys)
        self._forget_log_keys_not_listed()

    def oldest(self, count: int) -> list[str]:
        return sorted(self.log, key=lambda key: (self.log[key], key))[:count]

    def view(self, keys: list[str], fetch: Callable[[list[str]], dict[str, dict[str, Any]]], index: int, after: int) -> _View:
        """The view of one keys-only answer (at ``index``, the previous one at
        ``after``); ``fetch`` reads the entries of the keys given (in
        transactions), leaving out those gone meanwhile.  A single new log
        entry whose name carries its event needs no read: nothing else new
        in the answer to order it against, its CreateIndex lies in
        (``after``, ``index``], and ``index`` stands in for it."""
        newest = self._newest
        self._list(keys)
        view = _View(dict(self._members), frozenset(self._locks))
        gap = newest[1] not in self._log_keys if newest is not None else bool(self._log_keys)
        if not self.log.keys() <= self._log_keys:
            self._forget_log_keys_not_listed()
        new = sorted(self._log_keys - self.log.keys())
        leader_locks = {name for name in view.locks if name.startswith(RESERVED_LOCK_PREFIX)}
        self.holders = {} if gap else {name: holder for name, holder in self.holders.items() if name in leader_locks}
        unknown = sorted(leader_locks - self.holders.keys())
        named = _event_named(new[0]) if len(new) == 1 and not unknown else None
        entries: dict[str, dict[str, Any]] = {}
        if named is not None:
            self._note_log_entry(new[0], index, named, view)
            view.named_after = after
        elif new or unknown:
            entries = fetch(new + [self._lock_key(name) for name in unknown])
            if any(key not in entries for key in new):
                # Pruned since the answer: a leader entry among them is lost.
                rest = sorted(leader_locks - set(unknown))
                entries.update(fetch([self._lock_key(name) for name in rest]))
                unknown += rest
            for key in new:
                if key in entries:
                    self._read_log_entry(entries[key], view)
        view.log.sort()
        for _index, _key, group, kind, member in view.log:
            if kind == "leader" and leader_lock_name(group) in leader_locks:
                self.holders[leader_lock_name(group)] = member
        # A lock key read now is at least as new as the answer: it wins.
        for name in unknown:
            entry = entries.get(self._lock_key(name))
            if entry is None:
                self.holders.pop(name, None)
            else:
                self.holders[name] = _member_in(_value(entry)) if entry.get("Session") else None
        view.leaders = {name[len(RESERVED_LOCK_PREFIX):]: holder for name, holder in self.holders.items() if holder is not None}
        return view

    def _forget_log_keys_not_listed(self) -> None:
        self.log = {key: index for key, index in self.log.items() if key in self._log_keys}
        self._newest = max(((index, key) for key, index in self.log.items()), default=None)

    def _list(self, keys: list[str]) -> None:
        """Take in the keys of an answer, parsing only those not listed last time."""
        listed = set(keys)
        changed: set[str] = set()
        for key in self._keys - listed:
            meaning = self._meanings.pop(key, None)
            if meaning is not None:
                self._note(meaning, changed, False)
        for key in listed - self._keys:
            meaning = _meaning(self.prefix, key)
            if meaning is not None:
                self._meanings[key] = meaning
                self._note(meaning, changed, True)
        self._keys = listed
        for group in changed:
            names = self._groups.get(group)
            if names:
                self._members[group] = frozenset(name for name in names if name is not None)
            else:
                self._groups.pop(group, None)
                self._members.pop(group, None)

    def _note(self, meaning: tuple[str, str, str | None], changed: set[str], listed: bool) -> None:
        """Count a key in (``listed``) or out of the sets it belongs to."""
        kind, name, member = meaning
        if kind == "g":
            changed.add(name)
            in_group = self._groups.setdefault(name, set())
            if listed:
                in_group.add(member)
            else:
                in_group.discard(member)
            return
        of_kind = self._log_keys if kind == "log" else self._locks
        if listed:
            of_kind.add(name)
        else:
            of_kind.discard(name)

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}l/{_enc(name)}"

    def _read_log_entry(self, entry: dict[str, Any], view: _View) -> None:
        try:
            event = json.loads(_value(entry))
            named = (event["g"], event["k"], event["m"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            named = None  # a foreign entry: not ours to interpret
        self._note_log_entry(entry["Key"], entry["CreateIndex"], named, view)

    def _note_log_entry(self, key: str, create_index: int, event: tuple[str, str, str] | None, view: _View) -> None:
        self.log[key] = create_index
        self._newest = max(self._newest or (0, ""), (create_index, key))
        if event is not None:
            view.log.append((create_index, key, *event))


def _member_in(value: bytes | None) -> str | None:
    """The member a held lock key's value names; None if it is not ours."""
    try:
        member = json.loads(value or b"{}")["member"]
    except (ValueError, KeyError, TypeError):
        return None
    return member if isinstance(member, str) else None


class ConsulSession(RestingReader, SessionActor):
    """Session of ``consul://``: a Consul session, KV locks and memberships, an event log."""

    CHARACTERISTICS = frozenset({C.DISTRIBUTED_ACROSS_THREADS, C.DISTRIBUTED_ACROSS_PROCESSES, C.DISTRIBUTED_ACROSS_HOSTS})
    DEFAULTS: ClassVar[dict[str, Any]] = {"session_ttl": 30.0}
    OPTIONS: ClassVar[dict[str, Callable[[str, str], Any]]] = {"namespace": text, "token": text}
    LEASE_TTL = False

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        if options.path.strip("/"):
            raise errors.InvalidArgument(f"a consul:// URL has no path (got {options.path!r} in {options.redacted!r}); use ?namespace=")
        namespace = options.extra.get("namespace", "coordactors")
        if not _NAMESPACE.fullmatch(namespace) or any(part in (".", "..") for part in namespace.split("/")):
            raise errors.InvalidArgument(
                f"option 'namespace' must be /-separated words of letters, digits, '_', '-', '.' (got {namespace!r} in {options.redacted!r})"
            )
        if options.session_ttl is None:
            raise errors.InvalidArgument(f"option 'session_ttl' must be set for consul://: the Consul session lives by its TTL ({options.redacted!r})")
        if options.lease_ttl is not None:
            raise errors.InvalidArgument(
                f"option 'lease_ttl' is not supported by consul://: a lock lives as long as the Consul session (see session_ttl) ({options.redacted!r})"
            )
        if options.password and "token" in options.extra:
            raise errors.InvalidArgument(f"give the ACL token either as the URL's password or as option 'token', not both ({options.redacted!r})")

    # -- connection -------------------------------------------------------------

    @property
    def _prefix(self) -> str:
        return self.options.extra.get("namespace", "coordactors").strip("/") + "/"

    def _new_client(self) -> consul.Consul:
        options = self.options
        client = consul.Consul(
            host=options.host or "127.0.0.1",
            port=options.port or 8500,
            token=options.password or options.extra.get("token"),
            scheme="http",
            connections_timeout=options.connect_timeout,
        )
        # requests' own costs ~0.4 ms of Python per call: see _keepalive.
        client.http.session.close()
        client.http.session = KeepAliveSession()
        return client

    def open(self) -> _Connection:
        client, reader = self._new_client(), self._new_client()
        session_id = None
        try:
            prefix = self._prefix
            session_id = client.http.put(
                consul.callback.CB.json(is_id=True),
                "/v1/session/create",
                data=json.dumps({"Name": f"coordactors {self.member_id}", "TTL": _duration(self.options.session_ttl or 0), "Behavior": "delete", "LockDelay": "0s"}),
                headers=client.prepare_headers(),
            )
            # A restored session takes over from its predecessor at once.
            _index, previous = client.kv.get(prefix + "s/" + self.session_token)
            if previous is not None and previous.get("Value") and previous["Value"].decode() != session_id:
                client.session.destroy(previous["Value"].decode())
            client.kv.put(prefix + "s/" + self.session_token, session_id)
            client.kv.put(prefix + "epoch", str(fence_floor()), cas=0)
            _index, entry = client.kv.get(prefix + "epoch")
            try:
                epoch = int((entry or {}).get("Value") or b"")
            except ValueError:
                raise errors.InvalidArgument(
                    f"key {prefix}epoch on {self.url} holds data in a format coordactors does not know; it was left untouched"
                ) from None
            index, keys = client.kv.get(prefix, keys=True)
            # The log's CreateIndexes, to prune the oldest first; entries
            # newer than the keys' answer are the reader's to find.
            listed = set(keys or ())
            _index, log = client.kv.get(prefix + "log/", recurse=True)
            follower = _Follower(prefix, keys or [], {e["Key"]: e["CreateIndex"] for e in log or () if e["Key"] in listed})
            return _Connection(client, reader, session_id, epoch, int(index), follower)
        except BaseException:
            if session_id is not None:
                try:
                    client.session.destroy(session_id)
                except Exception:
                    logger.debug("%r: could not destroy the half-opened session", self, exc_info=True)
            client.http.session.close()
            reader.http.session.close()
            raise

    def on_connected(self) -> None:
        conn = self.conn
        self._epoch = conn.epoch
        self._watch_from: dict[str, int] = {}
        self._log_writes = 0
        self._held_seen: frozenset[str] = frozenset()
        # Every log entry that existed at the connection's first answer is older than it.
        self._log_seen = conn.index
        conn.thread = threading.Thread(target=self._follow, args=(conn, conn.index), name=f"ConsulEvents[{self.member_id}]", daemon=True)
        conn.thread.start()

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.stopping.set()
        conn.rest.stop()
        conn.client.http.session.close()
        # The reader ends after its blocking query (READER_WAIT at most) and
        # closes its own HTTP session; closing it from here would race it.

    def _follow(self, conn: _Connection, index: int) -> None:
        """Reader thread: blocking queries on the namespace's key names; hand each new view to the actor.

        While the session neither watches a group nor waits for a lock or a
        campaign it rests instead: every write in the namespace made every
        reader list its key names, and in one process those readers took the
        requests' time.  Woken, it asks from the index it stopped at, so its
        first view shows what changed meanwhile (the locks waited for that
        are free, the log entries still kept)."""
        prefix, follower = self._prefix, conn.follower
        try:
            while not conn.stopping.is_set():
                if conn.rest.settle(lambda: self._waiters or self._campaigns or self._watch_from):
                    conn.rest.wait(READER_WAIT)
                    continue
                try:
                    new_index, keys = conn.reader.kv.get(prefix, keys=True, index=index, wait=f"{READER_WAIT:g}s")
                    new_index = int(new_index)
                    if new_index == index:
                        continue
                    view = follower.view(keys or [], lambda wanted: self._fetch(conn, wanted), new_index, index)
                except Exception as exc:  # noqa: BLE001 - any failure ends the reader
                    if not conn.stopping.is_set():
                        self.run_on_actor(self._reader_failed, conn, exc)
                    return
                # An index that went backwards (a restored or reset Consul) restarts the wait, as Consul's docs say.
                index = new_index if new_index > index else 0
                self.run_on_actor(self._on_view, conn, new_index, view)
                if len(follower.log) > 2 * LOG_KEEP:
                    self._prune(conn, follower.oldest(len(follower.log) - LOG_KEEP))
        finally:
            conn.reader.http.session.close()

    def _fetch(self, conn: _Connection, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Reader thread: the entries of ``keys`` that still exist, by key, read
        in transactions of ``get-tree`` verbs -- a ``get`` of a key deleted
        meanwhile (a pruned log entry, a released lock) would fail its whole
        transaction; ``get-tree`` of it gives nothing."""
        wanted, found = set(keys), {}
        for start in range(0, len(keys), TXN_OPS):
            ops = [{"KV": {"Verb": "get-tree", "Key": key}} for key in keys[start:start + TXN_OPS]]
            response = conn.reader.http.put(_raw, "/v1/txn", data=json.dumps(ops), headers=conn.reader.prepare_headers())
            consul.callback.CB._status(response)
            for result in json.loads(response.body).get("Results") or ():
                if result["KV"]["Key"] in wanted:  # get-tree of "k" also gives "k2"
                    found[result["KV"]["Key"]] = result["KV"]
        return found

    def _prune(self, conn: _Connection, old: list[str], client: consul.Consul | None = None) -> None:
        """Delete the log entries ``old`` (best effort), by the reader's client unless told otherwise."""
        client = client or conn.reader
        for start in range(0, len(old), TXN_OPS):
            ops = [{"KV": {"Verb": "delete", "Key": key}} for key in old[start:start + TXN_OPS]]
            try:
                client.http.put(_raw, "/v1/txn", data=json.dumps(ops), headers=client.prepare_headers())
            except Exception:  # noqa: BLE001 - pruning is best effort
                return

    def _prune_written(self) -> None:
        """Actor thread: after ``PRUNE_EVERY`` log entries written here, keep the newest ``LOG_KEEP``."""
        if self._log_writes < PRUNE_EVERY:
            return
        self._log_writes = 0
        try:
            _index, entries = self.conn.client.kv.get(self._prefix + "log/", recurse=True)
        except Exception:  # noqa: BLE001 - pruning is best effort: the session's next request meets any real failure
            logger.debug("%r: could not list the log to prune it", self, exc_info=True)
            return
        entries = entries or []
        if len(entries) > 2 * LOG_KEEP:
            entries.sort(key=lambda entry: (entry["CreateIndex"], entry["Key"]))
            self._prune(self.conn, [entry["Key"] for entry in entries[: len(entries) - LOG_KEEP]], self.conn.client)

    def _reader_failed(self, conn: _Connection, exc: Exception) -> None:
        if conn is self.conn:
            raise self.translate_error(exc) from exc

    def _on_view(self, conn: _Connection, index: int, view: _View) -> None:
        if conn is not self.conn:
            return
        seen, self._log_seen = self._log_seen, max(self._log_seen, view.log[-1][0] if view.log else 0)
        for create_index, _key, group, kind, member in view.log:
            watched_from = self._watch_from.get(group, 0)
            if create_index <= seen or group not in self._snapshots or create_index <= watched_from:
                continue
            if view.named_after is not None and view.named_after < watched_from:
                continue  # it may be older than the watch's snapshot: the names below tell what changed
            self.apply_logged(group, kind, member)
        # What no log entry records: members deleted with an expired session,
        # a leader lock freed.
        for group, (members, leader) in list(self._snapshots.items()):
            if index < self._watch_from.get(group, 0):
                continue
            now = view.members.get(group, frozenset())
            for member in sorted(members - now):
                self.emit(MemberLeft(group, member))
            for member in sorted(now - members):
                self.emit(MemberJoined(group, member))
            holder = view.leader(group)
            if holder is not None and holder != leader:
                self.emit(LeaderElected(group, holder))
            self._snapshots[group] = (now, holder)
        # A lock acquired and freed between two answers is in neither: the
        # locks waited for here are retried whenever they are not held.
        freed = (self._held_seen | self._waited_for()) - view.locks
        self._held_seen = view.locks
        if freed:
            self.wake(freed)

    def _waited_for(self) -> set[str]:
        """The locks a waiting acquire or a campaign here wants."""
        leaders = {leader_lock_name(group) for group in self._campaigns if group not in self._leaders}
        return leaders | self._waiters.keys()

    # -- keys and requests ---------------------------------------------------------

    def _group_key(self, group: str) -> str:
        return f"{self._prefix}g/{_enc(group)}/"

    def _member_key(self, group: str, member: str) -> str:
        return f"{self._prefix}g/{_enc(group)}/{_enc(member)}"

    def _lock_key(self, name: str) -> str:
        return f"{self._prefix}l/{_enc(name)}"

    def _log_op(self, group: str, kind: str, member: str) -> dict[str, Any]:
        self._log_writes += 1
        value = json.dumps({"g": group, "k": kind, "m": member}, separators=(",", ":")).encode()
        key = f"{self._prefix}log/{uuid.uuid4().hex}.{kind}.{_enc(group)}.{_enc(member)}"
        return {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value).decode()}}

    def _kv_op(self, verb: str, key: str, value: bytes | None = None, index: int | None = None, session: bool = False) -> dict[str, Any]:
        op: dict[str, Any] = {"Verb": verb, "Key": key}
        if value is not None:
            op["Value"] = base64.b64encode(value).decode()
        if index is not None:
            op["Index"] = index
        if session:
            op["Session"] = self.conn.session_id
        return {"KV": op}

    def _txn(self, ops: list[dict[str, Any]]) -> tuple[list[dict[str, Any]] | None, int | None]:
        """Run a transaction: (results, None) if applied, (None, index of the failed op) if not."""
        client = self.conn.client
        response = client.http.put(_raw, "/v1/txn", data=json.dumps(ops), headers=client.prepare_headers())
        if response.code == 409:
            failures = json.loads(response.body).get("Errors") or [{}]
            return None, failures[0].get("OpIndex", 0)
        consul.callback.CB._status(response)
        return [result["KV"] for result in json.loads(response.body).get("Results") or ()], None

    def _get(self, key: str) -> dict[str, Any] | None:
        entry: dict[str, Any] | None = self.conn.client.kv.get(key)[1]
        return entry

    def _entry(self, capabilities_json: str) -> bytes:
        return json.dumps({"caps": capabilities_json, "token": self.session_token}, separators=(",", ":")).encode()

    def _foreign(self, key: str) -> errors.InvalidArgument:
        return errors.InvalidArgument(f"key {key!r} on {self.url} holds data in a format coordactors does not know; it was left untouched")

    # -- groups ---------------------------------------------------------------------

    def do_create_group(self, group: str) -> None:
        if not self.conn.client.kv.put(self._group_key(group), "", cas=0):
            raise errors.GroupAlreadyExists(f"cannot create group {group!r}: it exists already")

    def do_delete_group(self, group: str) -> None:
        key = self._group_key(group)
        for _attempt in range(100):
            _index, entries = self.conn.client.kv.get(key, recurse=True)
            marker = next((e for e in entries or () if e["Key"] == key), None)
            if marker is None:
                raise errors.GroupNotFound(f"cannot delete group {group!r}: no such group")
            if len(entries) > 1:
                raise errors.GroupNotEmpty(f"cannot delete group {group!r}: it still has members")
            # Every join rewrites the group key, so its index proves no one joined since.
            results, _failed = self._txn([
                self._kv_op("check-index", key, index=marker["ModifyIndex"]),
                self._kv_op("delete-tree", key),
                self._kv_op("delete", self._lock_key(leader_lock_name(group))),
            ])
            if results is not None:
                return
        raise errors.BackendUnavailable(f"cannot delete group {group!r}: it kept changing under the request")

    def do_get_groups(self) -> frozenset[str]:
        prefix = self._prefix + "g/"
        keys = self.conn.client.kv.get(prefix, keys=True)[1] or []
        groups = set()
        for key in keys:
            rest = key[len(prefix):]
            if rest.endswith("/") and rest.count("/") == 1:
                try:
                    groups.add(_dec(rest[:-1]))
                except (ValueError, binascii.Error):
                    continue
        return frozenset(groups)

    def do_group_exists(self, group: str) -> bool:
        return self._get(self._group_key(group)) is not None

    def do_join(self, group: str, capabilities_json: str, create: bool) -> None:
        key, member_key = self._group_key(group), self._member_key(group, self.member_id)
        for _attempt in range(100):
            marker = self._get(key)
            if marker is None and not create:
                raise errors.GroupNotFound(f"cannot join {group!r}: no such group")
            results, failed = self._txn([
                self._kv_op("cas", key, b"", index=0 if marker is None else marker["ModifyIndex"]),
                self._kv_op("check-not-exists", member_key),
                self._kv_op("lock", member_key, self._entry(capabilities_json), session=True),
                self._log_op(group, "join", self.member_id),
            ])
            if results is not None:
                return
            if failed in (1, 2):
                raise errors.MemberAlreadyJoined(f"cannot join {group!r}: member {self.member_id!r} is already a member")
        raise errors.BackendUnavailable(f"cannot join {group!r}: the group kept changing under the request")

    def do_leave(self, group: str) -> None:
        member_key = self._member_key(group, self.member_id)
        results, _failed = self._txn([
            self._kv_op("check-session", member_key, session=True),
            self._kv_op("delete", member_key),
            self._log_op(group, "leave", self.member_id),
        ])
        if results is None:
            if not self.do_group_exists(group):
                raise errors.GroupNotFound(f"cannot leave {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot leave {group!r}: member {self.member_id!r} has not joined it")

    def do_get_members(self, group: str) -> frozenset[str]:
        key = self._group_key(group)
        _index, keys = self.conn.client.kv.get(key, keys=True)
        if key not in (keys or ()):
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        members = set()
        for member_key in keys:
            if member_key != key:
                try:
                    members.add(_dec(member_key[len(key):]))
                except (ValueError, binascii.Error):
                    raise self._foreign(member_key) from None
        return frozenset(members)

    def do_get_capabilities(self, group: str, member: str) -> str:
        entry = self._get(self._member_key(group, member))
        if entry is None:
            if not self.do_group_exists(group):
                raise errors.GroupNotFound(f"cannot read capabilities in {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot read capabilities of {member!r} in {group!r}: not a member")
        try:
            caps: str = json.loads(entry["Value"])["caps"]
        except (ValueError, TypeError, KeyError):
            raise self._foreign(entry["Key"]) from None
        return caps

    def do_update_capabilities(self, group: str, capabilities_json: str) -> None:
        member_key = self._member_key(group, self.member_id)
        results, _failed = self._txn([
            self._kv_op("check-session", member_key, session=True),
            self._kv_op("lock", member_key, self._entry(capabilities_json), session=True),
        ])
        if results is None:
            if not self.do_group_exists(group):
                raise errors.GroupNotFound(f"cannot update capabilities in {group!r}: no such group")
            raise errors.MemberNotJoined(f"cannot update capabilities in {group!r}: member {self.member_id!r} has not joined it")

    # -- locks ------------------------------------------------------------------------

    def _lock_value(self) -> bytes:
        return json.dumps({"member": self.member_id, "token": self.session_token}, separators=(",", ":")).encode()

    def _holder(self, entry: dict[str, Any]) -> str | None:
        """The member named by a lock key's value (None if free); InvalidArgument if foreign."""
        if not entry.get("Value"):
            return None
        try:
            member = json.loads(entry["Value"])["member"]
        except (ValueError, TypeError, KeyError):
            raise self._foreign(entry["Key"]) from None
        if not isinstance(member, str):
            raise self._foreign(entry["Key"])
        return member

    def do_try_acquire(self, name: str, ttl: float | None) -> int | None:
        key = self._lock_key(name)
        entry = self._get(key)
        if entry is not None:
            self._holder(entry)
            # Held by this very session yet not granted here (a release that
            # failed): locking it again is allowed and gives a new fence.
            if entry.get("Session") and entry["Session"] != self.conn.session_id:
                return None
            check = self._kv_op("check-index", key, index=entry["ModifyIndex"])
        else:
            check = self._kv_op("check-not-exists", key)
        ops = [check, self._kv_op("lock", key, self._lock_value(), session=True)]
        if name.startswith(RESERVED_LOCK_PREFIX):
            ops.append(self._log_op(name[len(RESERVED_LOCK_PREFIX):], "leader", self.member_id))
        results, _failed = self._txn(ops)
        if results is None:
            return None
        # check-not-exists has no result; the lock's is the last for its key.
        locked = [r for r in results if r.get("Key") == key][-1]
        return self._epoch + int(locked["ModifyIndex"])

    def do_release(self, name: str, fence: int) -> bool:
        # Deleted, not unlocked: to the readers, which list key names only, a
        # lock is free exactly when its key is gone.
        results, _failed = self._txn([self._kv_op("delete-cas", self._lock_key(name), index=fence - self._epoch)])
        return results is not None

    def do_refresh(self, leases: list[Lease]) -> set[tuple[str, int]]:
        # The session's renewal (the heartbeat) keeps every lock; this only
        # checks, in one read, that none was deleted or taken meanwhile.
        _index, entries = self.conn.client.kv.get(self._prefix + "l/", recurse=True)
        by_key = {e["Key"]: e for e in entries or ()}
        lost = set()
        for lease in leases:
            entry = by_key.get(self._lock_key(lease.name))
            if entry is None or entry.get("Session") != self.conn.session_id or entry["ModifyIndex"] != lease.fence - self._epoch:
                lost.add((lease.name, lease.fence))
        return lost

    def do_lock_holder(self, name: str) -> str | None:
        entry = self._get(self._lock_key(name))
        if entry is None or not entry.get("Session"):
            return None
        return self._holder(entry)

    # -- liveness and events ---------------------------------------------------------------

    def do_heartbeat(self) -> None:
        try:
            self.conn.client.session.renew(self.conn.session_id)
        except consul.exceptions.NotFound:
            raise errors.BackendUnavailable(
                f"the Consul session of {self.member_id!r} on {self.url} was invalidated (not renewed within session_ttl)"
            ) from None
        self._prune_written()

    def do_watch(self, group: str) -> None:
        index, keys = self.conn.client.kv.get(self._prefix, keys=True)
        keys = keys or []
        index, leader = int(index), None
        name = leader_lock_name(group)
        if self._lock_key(name) in keys:
            entry = self._get(self._lock_key(name))
            if entry is not None:
                leader = _member_in(entry["Value"]) if entry.get("Session") else None
                # Taken after the listing: the snapshot is as of then.
                index = max(index, int(entry["ModifyIndex"]))
        self._snapshots[group] = (self._members_listed(group, keys), leader)
        self._watch_from[group] = index
        self.on_waiting()

    def _members_listed(self, group: str, keys: list[str]) -> frozenset[str]:
        """The members of ``group`` in a listing of the namespace's keys."""
        group_key, members = self._group_key(group), set()
        for key in keys:
            meaning = _meaning(self._prefix, key) if key.startswith(group_key) else None
            if meaning is not None and meaning[2] is not None:
                members.add(meaning[2])
        return frozenset(members)

    def do_unwatch(self, group: str) -> None:
        self.forget_snapshot(group)
        self._watch_from.pop(group, None)

    def do_shutdown(self) -> None:
        client = self.conn.client
        client.session.destroy(self.conn.session_id)
        client.kv.delete(self._prefix + "s/" + self.session_token)

    def translate_error(self, exc: BaseException) -> errors.CoordinationError:
        if isinstance(exc, errors.CoordinationError):
            # The base's acquire path translates whatever do_try_acquire
            # raised, our own errors (a foreign lock key) included.
            return exc
        if isinstance(exc, consul.exceptions.ACLPermissionDenied):
            return errors.BackendUnavailable(f"{self.url} refused the ACL token (permission denied)")
        if isinstance(exc, consul.exceptions.BadRequest):
            return errors.InvalidArgument(f"{self.url} refused a request: {exc}")
        if isinstance(exc, (requests.exceptions.RequestException, OSError)):
            return errors.BackendUnavailable(f"{self.url} is unreachable: {exc}")
        if isinstance(exc, consul.exceptions.ConsulException):
            return errors.BackendUnavailable(f"{self.url} failed: {exc}")
        return super().translate_error(exc)
