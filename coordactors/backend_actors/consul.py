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
``l/<lock>``               a lock, acquired by its holder's session; value
                           ``{"member": ..., "token": ...}``
``log/<uuid>``             an event: ``{"g": group, "k": join|leave|leader,
                           "m": member}``
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
  format from being overwritten.  Release is ``check-index`` + ``unlock``
  (KV release).  Locks and memberships are deleted with the session.
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
  session) runs blocking queries with ``index`` on the whole namespace: each
  answer is a consistent snapshot, whose new log entries become
  MemberJoined/MemberLeft/LeaderElected in order, and whose state reveals
  what no log records -- members deleted with an expired session
  (MemberLeft) and locks freed (waiters are woken at once).  The log is
  pruned to the newest ``LOG_KEEP`` entries.
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

LOG_KEEP = 1000
"""Event-log entries kept; pruning starts at twice as many."""

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

    def __init__(self, client: consul.Consul, reader: consul.Consul, session_id: str, epoch: int, index: int, entries: list[dict[str, Any]]) -> None:
        self.client = client
        self.reader = reader
        self.session_id = session_id
        self.epoch = epoch
        self.index = index
        self.entries = entries
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()


class _View:
    """One consistent look at the namespace (a blocking query's answer)."""

    def __init__(self, prefix: str, entries: list[dict[str, Any]] | None) -> None:
        self.log: list[tuple[int, str, str, str, str]] = []  # (CreateIndex, key, group, kind, member)
        self.members: dict[str, set[str]] = {}
        self.held: dict[str, str | None] = {}  # lock name -> holder member (locked keys only)
        groups, members, locks, log = prefix + "g/", prefix + "g/", prefix + "l/", prefix + "log/"
        for entry in entries or ():
            key = entry["Key"]
            try:
                if key.startswith(log):
                    event = json.loads(entry["Value"] or b"{}")
                    self.log.append((entry["CreateIndex"], key, event["g"], event["k"], event["m"]))
                elif key.startswith(locks):
                    if entry.get("Session"):
                        value = json.loads(entry["Value"] or b"{}")
                        self.held[_dec(key[len(locks):])] = value.get("member")
                elif key.startswith(groups):
                    group_part, _, member_part = key[len(members):].partition("/")
                    members_of = self.members.setdefault(_dec(group_part), set())
                    if member_part:
                        members_of.add(_dec(member_part))
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
                continue  # a foreign key: not ours to interpret
        self.log.sort()

    def leader(self, group: str) -> str | None:
        return self.held.get(leader_lock_name(group))


class ConsulSession(SessionActor):
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
        return consul.Consul(
            host=options.host or "127.0.0.1",
            port=options.port or 8500,
            token=options.password or options.extra.get("token"),
            scheme="http",
            connections_timeout=options.connect_timeout,
        )

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
            index, entries = client.kv.get(prefix, recurse=True)
            return _Connection(client, reader, session_id, epoch, int(index), entries or [])
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
        view = _View(self._prefix, conn.entries)
        self._held_seen = set(view.held)
        self._log_seen = view.log[-1][0] if view.log else 0
        conn.entries = []
        conn.thread = threading.Thread(target=self._follow, args=(conn, conn.index), name=f"ConsulEvents[{self.member_id}]", daemon=True)
        conn.thread.start()

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.stopping.set()
        conn.client.http.session.close()
        # The reader ends after its blocking query (READER_WAIT at most) and
        # closes its own HTTP session; closing it from here would race it.

    def _follow(self, conn: _Connection, index: int) -> None:
        """Reader thread: blocking queries on the namespace; hand each new view to the actor."""
        prefix = self._prefix
        try:
            while not conn.stopping.is_set():
                try:
                    new_index, entries = conn.reader.kv.get(prefix, recurse=True, index=index, wait=f"{READER_WAIT:g}s")
                except Exception as exc:  # noqa: BLE001 - any failure ends the reader
                    if not conn.stopping.is_set():
                        self.run_on_actor(self._reader_failed, conn, exc)
                    return
                new_index = int(new_index)
                if new_index == index:
                    continue
                # An index that went backwards (a restored or reset Consul) restarts the wait, as Consul's docs say.
                index = new_index if new_index > index else 0
                view = _View(prefix, entries)
                self.run_on_actor(self._on_view, conn, new_index, view)
                if len(view.log) > 2 * LOG_KEEP:
                    self._prune(conn, view)
        finally:
            conn.reader.http.session.close()

    def _prune(self, conn: _Connection, view: _View) -> None:
        old = [key for _ci, key, *_rest in view.log[: len(view.log) - LOG_KEEP]]
        for start in range(0, len(old), 64):
            ops = [{"KV": {"Verb": "delete", "Key": key}} for key in old[start:start + 64]]
            try:
                conn.reader.http.put(_raw, "/v1/txn", data=json.dumps(ops), headers=conn.reader.prepare_headers())
            except Exception:  # noqa: BLE001 - pruning is best effort
                return

    def _reader_failed(self, conn: _Connection, exc: Exception) -> None:
        if conn is self.conn:
            raise self.translate_error(exc) from exc

    def _on_view(self, conn: _Connection, index: int, view: _View) -> None:
        if conn is not self.conn:
            return
        seen, self._log_seen = self._log_seen, max(self._log_seen, view.log[-1][0] if view.log else 0)
        for create_index, _key, group, kind, member in view.log:
            if create_index <= seen or group not in self._snapshots or create_index <= self._watch_from.get(group, 0):
                continue
            members, leader = self._snapshots[group]
            if kind == "join" and member not in members:
                self._snapshots[group] = (members | {member}, leader)
                self.emit(MemberJoined(group, member))
            elif kind == "leave" and member in members:
                self._snapshots[group] = (members - {member}, leader)
                self.emit(MemberLeft(group, member))
            elif kind == "leader" and member != leader:
                self._snapshots[group] = (members, member)
                self.emit(LeaderElected(group, member))
        # What no log entry records: members deleted with an expired session,
        # a leader lock freed.
        for group, (members, leader) in list(self._snapshots.items()):
            if index < self._watch_from.get(group, 0):
                continue
            now = frozenset(view.members.get(group, ()))
            for member in sorted(members - now):
                self.emit(MemberLeft(group, member))
            for member in sorted(now - members):
                self.emit(MemberJoined(group, member))
            holder = view.leader(group)
            if holder is not None and holder != leader:
                self.emit(LeaderElected(group, holder))
            self._snapshots[group] = (now, holder)
        held = set(view.held)
        freed = self._held_seen - held
        self._held_seen = held
        if freed:
            self.wake(freed)

    # -- keys and requests ---------------------------------------------------------

    def _group_key(self, group: str) -> str:
        return f"{self._prefix}g/{_enc(group)}/"

    def _member_key(self, group: str, member: str) -> str:
        return f"{self._prefix}g/{_enc(group)}/{_enc(member)}"

    def _lock_key(self, name: str) -> str:
        return f"{self._prefix}l/{_enc(name)}"

    def _log_op(self, group: str, kind: str, member: str) -> dict[str, Any]:
        value = json.dumps({"g": group, "k": kind, "m": member}, separators=(",", ":")).encode()
        return {"KV": {"Verb": "set", "Key": f"{self._prefix}log/{uuid.uuid4().hex}", "Value": base64.b64encode(value).decode()}}

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
        _index, entries = self.conn.client.kv.get(key, recurse=True)
        if not any(e["Key"] == key for e in entries or ()):
            raise errors.GroupNotFound(f"cannot list the members of {group!r}: no such group")
        members = set()
        for entry in entries:
            if entry["Key"] != key:
                try:
                    members.add(_dec(entry["Key"][len(key):]))
                except (ValueError, binascii.Error):
                    raise self._foreign(entry["Key"]) from None
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
        key = self._lock_key(name)
        results, _failed = self._txn([
            self._kv_op("check-index", key, index=fence - self._epoch),
            self._kv_op("unlock", key, self._lock_value(), session=True),
        ])
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

    def do_watch(self, group: str) -> None:
        index, entries = self.conn.client.kv.get(self._prefix, recurse=True)
        view = _View(self._prefix, entries)
        self._snapshots[group] = (frozenset(view.members.get(group, ())), view.leader(group))
        self._watch_from[group] = int(index)

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
