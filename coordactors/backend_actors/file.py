"""file:///dir: coordination between the processes of one host, through a directory.

The registry's core is one JSON document, ``<dir>/registry.json``; its
groups and its event log are files of their own,
``<dir>/registry.<section>.<stamp>.json``, named by the core (see
``_sections``: a lock operation reads and rewrites only the core).  All are
read and written under an exclusive inter-process lock on
``<dir>/registry.lock`` (fasteners).  New sections are written first, under
new names; then the core is replaced atomically (a temporary file, then
``os.replace``); then the sections it no longer names are removed.  A process
killed mid-write leaves the previous registry whole.

fasteners locks with ``lockf``, which POSIX ties to the process, not the file
descriptor: two coordinators of one process would not exclude each other
through it.  A threading lock per directory serialises them first.

Liveness: each session registers its pid (with the process's start time, so a
reused pid is not mistaken for it) and an expiry refreshed by its heartbeat.
A process that dies is reaped by the next operation of any other process: its
locks are free and its memberships leave at once.  A process that hangs is
reaped after ``session_ttl``.  Other processes notice changes by polling the
document's inode and mtime every ``poll_interval``.

URL: ``file:///absolute/dir`` (``file://localhost/dir`` too); common options.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from typing import Any, Iterator

import fasteners

from coordactors import errors
from coordactors.backend_actors._registry import Registry, boot_id, new_document, process_alive
from coordactors.backend_actors._sections import Document, SectionCodec, dumps
from coordactors.backend_actors.base import fence_floor
from coordactors.backend_actors.local import SAME_HOST, LocalSession, PolledStorage
from coordactors.urls import SessionOptions

__all__ = ["FileSession", "FileStorage"]

_process_locks: dict[str, tuple[threading.Lock, fasteners.InterProcessLock]] = {}
_process_locks_guard = threading.Lock()


def _locks_for(directory: str) -> tuple[threading.Lock, fasteners.InterProcessLock]:
    # One InterProcessLock per directory per process: closing any descriptor
    # of a lockf'd file drops the process's lock, so never open two.
    with _process_locks_guard:
        found = _process_locks.get(directory)
        if found is None:
            found = _process_locks[directory] = (threading.Lock(), fasteners.InterProcessLock(os.path.join(directory, "registry.lock")))
        return found


def owner_alive(owner: dict[str, Any]) -> bool:
    """True if the owner's process still runs (same pid, same start time, not a zombie)."""
    return process_alive(int(owner["pid"]), owner.get("start"))


class FileStorage(PolledStorage):
    """The registry in a JSON file under an inter-process lock."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise errors.BackendUnavailable(f"cannot use directory {directory!r}: {exc.strerror}") from exc
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            raise errors.BackendUnavailable(f"cannot use directory {directory!r}: no read/write permission")
        self.path = os.path.join(directory, "registry.json")
        self._thread_lock, self._process_lock = _locks_for(directory)
        self._boot = boot_id()
        self._seen: tuple[int, int, int] | None = None
        self._codec = SectionCodec(self.path)

    def _section_path(self, name: str, stamp: str) -> str:
        return os.path.join(self.directory, f"registry.{name}.{stamp}.json")

    def _read_section(self, name: str, stamp: str) -> bytes:
        with open(self._section_path(name, stamp), "rb") as handle:
            return handle.read()

    def _load(self) -> Document:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return self._codec.decode(new_document(self._boot), self._read_section)
        try:
            core = json.loads(raw)
        except ValueError:
            core = None
        doc = self._codec.decode(core, self._read_section)
        if doc["boot"] != self._boot:
            # Written before a reboot: every process it names is gone and its
            # monotonic times mean nothing.  Groups and fences carry over.
            doc["owners"], doc["locks"], doc["boot"] = {}, {}, self._boot
        return doc

    def _store(self, doc: Document) -> None:
        core, written = self._codec.encode(doc)
        for name, (stamp, data) in written.items():
            with open(self._section_path(name, stamp), "wb") as out:
                out.write(data)
        handle, temporary = tempfile.mkstemp(prefix=".registry.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(dumps(core))
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if written:
            self._remove_unnamed(core["sections"])

    def _remove_unnamed(self, stamps: dict[str, str]) -> None:
        """Remove the section files the core no longer names (and any a killed writer left)."""
        keep = {os.path.basename(self._section_path(name, stamp)) for name, stamp in stamps.items()}
        for entry in os.listdir(self.directory):
            if entry.startswith("registry.") and entry.endswith(".json") and entry != "registry.json" and entry not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, entry))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Registry]:
        with self._thread_lock:
            try:
                self._process_lock.acquire()
            except OSError as exc:
                raise errors.BackendUnavailable(f"cannot lock {self.directory!r}: {exc}") from exc
            try:
                registry = Registry(self._load(), time.monotonic(), owner_alive, fence_floor())
                registry.reap()
                yield registry
                if registry.dirty:
                    self._store(registry.doc)
            except BaseException as exc:
                self._codec.forget()
                if isinstance(exc, OSError):
                    raise errors.BackendUnavailable(f"cannot read or write {self.path!r}: {exc}") from exc
                raise
            finally:
                self._process_lock.release()

    def changed(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return False
        self._seen = seen
        return True

    def close(self) -> None:
        """The lock file stays open for the process (see ``_locks_for``)."""


class FileSession(LocalSession):
    """Session of ``file:///dir``: processes of one host, through a directory."""

    CHARACTERISTICS = SAME_HOST
    POLLS = True

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        if options.host not in (None, "", "localhost"):
            raise errors.InvalidArgument(f"file:// URLs name a local directory; host {options.host!r} is not supported in {options.redacted!r}")
        if not options.path.startswith("/") or options.path == "/":
            raise errors.InvalidArgument(f"file:// needs an absolute directory, e.g. file:///var/lib/myapp/coord (got {options.redacted!r})")

    def open_storage(self) -> FileStorage:
        return FileStorage(os.path.normpath(self.options.path))
