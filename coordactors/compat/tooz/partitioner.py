"""Partition objects across the members of a group, as ``tooz.partitioner``.

The ring follows the group: a member's weight is read from its capabilities
(``{"weight": n}``, as ``join_partitioned_group`` sets it), and join and
leave callbacks -- run by ``run_watchers()`` -- add and remove members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from coordactors.compat.tooz.exceptions import MemberNotJoined
from coordactors.compat.tooz.hashring import HashRing

if TYPE_CHECKING:
    from coordactors.compat.tooz.driver import CoordinationDriver

__all__ = ["Partitioner"]


def _weight(capabilities: Any) -> int:
    return capabilities.get("weight", 1) if isinstance(capabilities, dict) else 1


class Partitioner:
    """Which members own an object, by consistent hashing over the group's members.

    Objects identify themselves by ``__tooz_hash__()`` (bytes) if they have
    it, else by ``str(obj)`` encoded as UTF-8.
    """

    DEFAULT_PARTITION_NUMBER = HashRing.DEFAULT_PARTITION_NUMBER

    def __init__(self, coordinator: CoordinationDriver, group_id: Any, partitions: int = DEFAULT_PARTITION_NUMBER) -> None:
        self.partitions = partitions
        self.group_id = group_id
        self._coord = coordinator
        self.ring = HashRing([], partitions=partitions)
        # Watch first, then read the members: events are pushed from the
        # moment of the watch, so a member joining in between is not missed
        # (the callbacks skip members already on the ring).
        coordinator.watch_join_group(group_id, self._on_member_join)
        coordinator.watch_leave_group(group_id, self._on_member_leave)
        members = coordinator.get_members(group_id).get()
        capabilities = [(m, coordinator.get_member_capabilities(group_id, m)) for m in members]
        for member, result in capabilities:
            try:
                self.ring.add_node(member, _weight(result.get()))
            except MemberNotJoined:
                continue  # left meanwhile

    def _on_member_join(self, event: Any) -> None:
        if event.member_id in self.ring.nodes:
            return
        try:
            weight = _weight(self._coord.get_member_capabilities(self.group_id, event.member_id).get())
        except MemberNotJoined:
            return  # left again; its leave event follows
        self.ring.add_node(event.member_id, weight)

    def _on_member_leave(self, event: Any) -> None:
        if event.member_id in self.ring.nodes:
            self.ring.remove_node(event.member_id)

    @staticmethod
    def _hash_object(obj: Any) -> bytes:
        if hasattr(obj, "__tooz_hash__"):
            return obj.__tooz_hash__()  # type: ignore[no-any-return]
        return str(obj).encode("utf8")

    def members_for_object(self, obj: Any, ignore_members: Iterable[Any] | None = None, replicas: int = 1) -> set[Any]:
        """The members responsible for ``obj``."""
        return self.ring.get_nodes(self._hash_object(obj), ignore_nodes=ignore_members, replicas=replicas)

    def belongs_to_member(self, obj: Any, member_id: Any, ignore_members: Iterable[Any] | None = None, replicas: int = 1) -> bool:
        """True if ``member_id`` is responsible for ``obj``."""
        return member_id in self.members_for_object(obj, ignore_members=ignore_members, replicas=replicas)

    def belongs_to_self(self, obj: Any, ignore_members: Iterable[Any] | None = None, replicas: int = 1) -> bool:
        """True if this coordinator's member is responsible for ``obj``."""
        return self.belongs_to_member(obj, self._coord._member_bytes, ignore_members=ignore_members, replicas=replicas)  # noqa: SLF001

    def stop(self) -> None:
        """Stop following the group."""
        self._coord.unwatch_join_group(self.group_id, self._on_member_join)
        self._coord.unwatch_leave_group(self.group_id, self._on_member_leave)
