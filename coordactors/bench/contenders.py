"""The contenders: coordactors (ask, submit, asyncio), the raw client, tooz.

The raw contender is the floor: the same backend protocol -- the very
statements, scripts and znode operations coordactors' session sends -- issued
by the backend's own client library (redis-py, kazoo, pymemcache, psycopg2,
PyMySQL, requests for etcd, etcd3gw, py-consul, posix_ipc, fasteners) on the
caller's thread, with no actor, no reply slot and no supervisor.  It drives
the backend module's ``do_*`` hooks directly, so "coordactors minus raw" is
exactly what the library adds per request.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from coordactors.backend_actors.base import CONNECTED
from coordactors.messages import Lease
from coordactors.messages.locks import LeaseState
from coordactors.runtime import runtime as _runtime
from coordactors.urls import parse_url

logger = logging.getLogger(__name__)

__all__ = ["RawSession", "open_tooz"]


class _NoSupervisor:
    """Stands in for the supervisor actor: the raw contender has none; state
    changes and events a hook reports are dropped."""

    def tell(self, message: Any) -> None:
        """Drop ``message``."""


class RawSession:
    """A backend connection driven by hand on the caller's thread."""

    def __init__(self, url: str, member_id: str) -> None:
        session_class, options = parse_url(url)
        self._runtime = _runtime.acquire()
        self.session = session_class(options, member_id, _NoSupervisor(), self._runtime)
        try:
            self.session.conn = self.session.open()
            self.session.on_connected()
            self.session.state = CONNECTED
        except BaseException:
            self._runtime.release()
            raise
        self.member_id = member_id

    # The operations, as a caller would write them with the client library.

    def lock(self, name: str) -> None:
        """Acquire and release ``name`` (uncontended)."""
        fence = self.session.do_try_acquire(name, None)
        if fence is None:
            raise AssertionError(f"raw: {name!r} unexpectedly held")
        self.session.do_release(name, fence)

    def try_lock_refused(self, name: str) -> None:
        """Try ``name``, held by someone else: must be refused."""
        if self.session.do_try_acquire(name, None) is not None:
            raise AssertionError(f"raw: contended {name!r} was granted")

    def join_leave(self, group: str) -> None:
        """Join and leave ``group``."""
        self.session.do_join(group, "null", False)
        self.session.do_leave(group)

    def members(self, group: str) -> frozenset[str]:
        """The members of ``group``."""
        return self.session.do_get_members(group)  # type: ignore[no-any-return]

    def update_capabilities(self, group: str, capabilities_json: str) -> None:
        """Replace this member's capabilities in ``group``."""
        self.session.do_update_capabilities(group, capabilities_json)

    def hold(self, names: list[str], ttl: float | None) -> list[Lease]:
        """Take every lock of ``names``; return their leases (for heartbeat)."""
        leases = []
        for name in names:
            fence = self.session.do_try_acquire(name, ttl)
            leases.append(Lease(name, fence, self.member_id, ttl=ttl, state=LeaseState(None)))
        return leases

    def heartbeat(self, leases: list[Lease]) -> None:
        """Prove the session alive and refresh ``leases``."""
        self.session.do_heartbeat()
        if leases:
            self.session.do_refresh(leases)

    def as_member(self, member_id: str) -> None:
        """Act as another member (to populate a large group from one connection)."""
        self.session.member_id = member_id

    def close(self) -> None:
        """Close the connection."""
        try:
            with contextlib.suppress(Exception):
                self.session.do_shutdown()
            with contextlib.suppress(Exception):
                self.session.close()
        finally:
            self._runtime.release()


def open_tooz(url: str, member_id: str) -> Any:
    """A started tooz coordinator (no heartbeat thread: the benchmark beats by hand)."""
    from tooz import coordination

    coord = coordination.get_coordinator(url, member_id.encode())
    coord.start(start_heart=False)
    return coord
