"""memory://'s store reaps only once the clock reaches an expiry: what expires still goes."""

from __future__ import annotations

import time
import uuid

import pytest
from helpers import wait_until

from coordactors.backend_actors.memory import MemoryStore


def _store() -> MemoryStore:
    return MemoryStore(f"test-{uuid.uuid4().hex}")


@pytest.mark.timeout(30)
def test_an_owner_past_its_ttl_is_reaped_with_its_memberships_and_locks() -> None:
    store = _store()
    with store.transaction() as reg:
        reg.register_owner("a", "alice", 0.2)
        reg.register_owner("b", "bob", None)
        reg.join("g", "alice", "null", "a", True)
        assert reg.try_acquire("lock", "a", "alice", None) is not None

    def alice_gone() -> bool:
        with store.transaction() as reg:
            return "alice" not in reg.members("g")

    wait_until(alice_gone, timeout=10)
    with store.transaction() as reg:
        assert reg.holder("lock") is None
        assert reg.try_acquire("lock", "b", "bob", None) is not None
        events, _gap = reg.events_since(0)
        assert [e[1:] for e in events] == [["g", "join", "alice"], ["g", "leave", "alice"]]


@pytest.mark.timeout(30)
def test_a_refreshed_owner_outlives_its_first_expiry() -> None:
    store = _store()
    with store.transaction() as reg:
        reg.register_owner("a", "alice", 0.3)
        reg.join("g", "alice", "null", "a", True)
    first_expiry = time.monotonic() + 0.3
    while time.monotonic() < first_expiry + 0.3:  # refreshed well past the first expiry
        with store.transaction() as reg:
            assert reg.refresh_owner("a", 0.3)
    with store.transaction() as reg:
        assert reg.members("g") == {"alice"}


def test_a_grant_to_a_session_already_reaped_is_undone_by_the_next_transaction() -> None:
    store = _store()
    with store.transaction() as reg:
        reg.register_owner("b", "bob", None)
        assert reg.try_acquire("lock", "ghost", "ghost", None) is not None
    with store.transaction() as reg:
        assert reg.holder("lock") is None
        assert reg.try_acquire("lock", "b", "bob", None) is not None
