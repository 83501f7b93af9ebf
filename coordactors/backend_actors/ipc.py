"""ipc://name: coordination between the processes of one host, in POSIX shared memory.

The registry (the same document as file:// and memory://) lives as JSON in a
POSIX shared-memory segment ``/coordactors.<name>``, guarded by a POSIX
semaphore ``/coordactors.<name>.mutex`` used as a mutex (posix_ipc).

POSIX semaphores have no SEM_UNDO: a process killed while it holds the mutex
would wedge every other process forever.  Two defences:

* the holder writes its pid into the segment's header right after taking the
  mutex; a process that waits longer than ``mutex_timeout`` for it checks that
  pid, and if that process is dead, posts the semaphore on its behalf.  The
  recovery itself is serialised by a second semaphore, so two waiters that
  both find the corpse do not both post (which would let two holders in).
  A holder killed in the few instructions between taking the mutex and
  writing its pid is recovered after ``4 * mutex_timeout``.
* writes are double-buffered: the new document goes into the inactive slot
  and only then does the header flip to it, so a holder killed mid-write
  leaves the previous document intact.

A slot holds the registry's groups and event log as sections apart from its
core (see ``_sections``), then the core, which says where each section is:
a lock operation parses and encodes only the core, and copies the sections'
bytes over unchanged.  Slot layout: core offset and length (two little-endian
u32), the sections, the core.

The registry's locks are entries in the document, not semaphores, so a lock
holder killed with SIGKILL is reaped (its pid is gone) by the next operation
of any other process.  Other processes notice changes by polling the header's
generation counter every ``poll_interval``.

URL: ``ipc://name`` (or ``ipc:///name``; default name ``default``).
Options: ``size`` (bytes of shared memory, default 4 MiB),
``mutex_timeout`` (seconds, default 1).

The segment and semaphores outlive the processes, as POSIX IPC objects do;
:func:`destroy` removes them.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import struct
import time
from typing import Any, Iterator

import posix_ipc

from coordactors import errors
from coordactors.backend_actors._registry import Registry, boot_id, check_format, new_document, process_alive, process_start
from coordactors.backend_actors._sections import Document, SectionCodec, dumps
from coordactors.backend_actors.base import fence_floor
from coordactors.backend_actors.file import owner_alive
from coordactors.backend_actors.local import SAME_HOST, LocalSession, PolledStorage
from coordactors.urls import SessionOptions, positive_int, seconds

__all__ = ["IpcSession", "IpcStorage", "destroy"]

MAGIC = b"CAREG002"  # 001: one JSON document per slot
# magic, generation, active slot, length of slot 0, length of slot 1,
# mutex holder pid, mutex holder start time
HEADER = struct.Struct("<8sQIIIIQ")
HEADER_SIZE = 64
SLOT = struct.Struct("<II")  # where the slot's core is: offset, length
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def _no_sections(name: str, stamp: str) -> bytes:
    raise KeyError(name)  # a new registry names no stored sections


def _names(name: str) -> tuple[str, str, str]:
    base = f"/coordactors.{name}"
    return base, base + ".mutex", base + ".recovery"


def destroy(name: str) -> None:
    """Remove the shared memory and semaphores of ``ipc://name`` (none may be in use)."""
    memory, mutex, recovery = _names(name)
    for unlink in (lambda: posix_ipc.unlink_shared_memory(memory), lambda: posix_ipc.unlink_semaphore(mutex), lambda: posix_ipc.unlink_semaphore(recovery)):
        with contextlib.suppress(posix_ipc.ExistentialError):
            unlink()


class IpcStorage(PolledStorage):
    """The registry in POSIX shared memory under a POSIX semaphore."""

    def __init__(self, name: str, size: int, mutex_timeout: float) -> None:
        self.name = name
        self._mutex_timeout = mutex_timeout
        memory, mutex, recovery = _names(name)
        try:
            self._mutex = posix_ipc.Semaphore(mutex, posix_ipc.O_CREAT, initial_value=1)
            self._recovery = posix_ipc.Semaphore(recovery, posix_ipc.O_CREAT, initial_value=1)
            shm = posix_ipc.SharedMemory(memory, posix_ipc.O_CREAT, size=size)
        except (posix_ipc.Error, OSError) as exc:
            raise errors.BackendUnavailable(f"cannot open POSIX IPC objects for ipc://{name}: {exc}") from exc
        try:
            self._map = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        self._slot_size = (len(self._map) - HEADER_SIZE) // 2
        self._boot = boot_id()
        self._pid = os.getpid()
        self._start = process_start(self._pid) or 0
        self._seen_generation = -1
        self._codec = SectionCodec(f"ipc://{name}")

    # -- the mutex --------------------------------------------------------------

    def _header(self) -> tuple[bytes, int, int, int, int, int, int]:
        return HEADER.unpack_from(self._map, 0)  # type: ignore[return-value]

    def _set_holder(self, pid: int, start: int) -> None:
        magic, generation, active, len0, len1, _, _ = self._header()
        HEADER.pack_into(self._map, 0, magic, generation, active, len0, len1, pid, start)

    def _lock(self) -> None:
        waited = 0.0
        while True:
            try:
                self._mutex.acquire(self._mutex_timeout)
            except posix_ipc.BusyError:
                waited += self._mutex_timeout
                self._recover_mutex(waited)
                continue
            self._set_holder(self._pid, self._start)
            return

    def _recover_mutex(self, waited: float) -> None:
        try:
            self._recovery.acquire(self._mutex_timeout)
        except posix_ipc.BusyError:
            return  # someone else is recovering
        try:
            _, _, _, _, _, pid, start = self._header()
            if pid == 0:
                # The holder died before it could write its pid (or never
                # existed): only after a long wait, as a live holder writes it
                # within microseconds of taking the mutex.
                dead = waited >= 4 * self._mutex_timeout
            else:
                dead = not process_alive(pid, start or None)
            if dead and self._mutex.value == 0:
                self._set_holder(0, 0)
                self._mutex.release()
        finally:
            self._recovery.release()

    def _unlock(self) -> None:
        self._set_holder(0, 0)
        self._mutex.release()

    # -- the document ---------------------------------------------------------------

    def _load(self) -> Document:
        magic, _generation, active, len0, len1, _, _ = self._header()
        where = f"ipc://{self.name}"
        if magic == b"\0" * 8:
            return self._codec.decode(new_document(self._boot), _no_sections)
        if magic != MAGIC:
            check_format(None, where)
        base = HEADER_SIZE + active * self._slot_size
        core_at, core_length = SLOT.unpack_from(self._map, base)
        try:
            core = json.loads(self._map[base + core_at : base + core_at + core_length])
            places = core.pop("places")
        except (ValueError, KeyError, TypeError, AttributeError):
            core, places = None, {}

        def read_section(name: str, stamp: str) -> bytes:
            at, length = places[name]
            return self._map[base + at : base + at + length]

        doc = self._codec.decode(core, read_section)
        doc.place = (base, places)
        return doc

    def _store(self, doc: Document) -> None:
        core, written = self._codec.encode(doc)
        old_base, old_places = doc.place or (0, {})
        sections = []
        for name, stamp in core["sections"].items():
            if name in written:
                sections.append((name, written[name][1]))
            else:
                at, length = old_places[name]
                sections.append((name, self._map[old_base + at : old_base + at + length]))
        places, at = {}, SLOT.size
        for name, data in sections:
            places[name] = [at, len(data)]
            at += len(data)
        core["places"] = places
        core_data = dumps(core)
        size = at + len(core_data)
        if size > self._slot_size:
            raise errors.NotSupported(
                f"the registry of ipc://{self.name} needs {size} bytes but its slot holds {self._slot_size}: "
                "reconnect with a larger ?size= after destroying the old segment"
            )
        magic, generation, active, len0, len1, pid, start = self._header()
        target = 0 if magic != MAGIC else 1 - active
        base = HEADER_SIZE + target * self._slot_size
        for name, data in sections:
            offset = base + places[name][0]
            self._map[offset : offset + len(data)] = data
        self._map[base + at : base + size] = core_data
        SLOT.pack_into(self._map, base, at, len(core_data))
        lengths = [len0, len1]
        lengths[target] = size
        HEADER.pack_into(self._map, 0, MAGIC, generation + 1, target, lengths[0], lengths[1], pid, start)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Registry]:
        self._lock()
        try:
            registry = Registry(self._load(), time.monotonic(), owner_alive, fence_floor())
            registry.reap()
            yield registry
            if registry.dirty:
                self._store(registry.doc)
        except BaseException:
            self._codec.forget()
            raise
        finally:
            self._unlock()

    def changed(self) -> bool:
        generation = self._header()[1]
        if generation == self._seen_generation:
            return False
        self._seen_generation = generation
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()
        for semaphore in (self._mutex, self._recovery):
            with contextlib.suppress(Exception):
                semaphore.close()


class IpcSession(LocalSession):
    """Session of ``ipc://name``: processes of one host, in POSIX shared memory."""

    CHARACTERISTICS = SAME_HOST
    POLLS = True
    OPTIONS = {"size": positive_int, "mutex_timeout": seconds}

    @classmethod
    def namespace(cls, options: SessionOptions) -> str:
        """The IPC name from ``ipc://name`` or ``ipc:///name``."""
        return (options.host or options.path.strip("/")) or "default"

    @classmethod
    def check_location(cls, options: SessionOptions) -> None:
        name = cls.namespace(options)
        if not _NAME.match(name):
            raise errors.InvalidArgument(f"ipc:// names are 1-200 letters, digits, '_', '.' or '-' (got {name!r} in {options.redacted!r})")
        size = options.extra.get("size", 4 << 20)
        if size < 64 << 10:
            raise errors.InvalidArgument(f"option 'size' must be at least 65536 bytes (got {size})")

    def open_storage(self) -> IpcStorage:
        extra = self.options.extra
        return IpcStorage(self.namespace(self.options), extra.get("size", 4 << 20), extra.get("mutex_timeout", 1.0))
