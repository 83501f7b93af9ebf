"""A consistent hash ring, as ``tooz.hashring``: the same placement as tooz's.

Objects (bytes) map onto nodes through ``partitions * weight`` points per node
on a ring of hash values; a node's points come from repeatedly updating one
hash object with the node's name, exactly as tooz 8.1.0 does, so the same
nodes, weights and data give the same owners under both.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any, Iterable

from coordactors.compat.tooz.exceptions import ToozError

__all__ = ["HashRing", "UnknownNode"]


class UnknownNode(ToozError):
    """The node is not on the ring."""

    def __init__(self, node: Any) -> None:
        super().__init__(f"Unknown node `{node}'")
        self.node = node


def _binary(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


class HashRing:
    """Map objects onto nodes by consistent hashing.

    Args:
        nodes: the initial nodes (weight 1).
        partitions: points per node and unit of weight.
        hash_function: a hashlib algorithm name (ValueError if unavailable).
    """

    DEFAULT_PARTITION_NUMBER = 2**5
    DEFAULT_HASH_FUNCTION = "md5"

    def __init__(self, nodes: Iterable[Any], partitions: int = DEFAULT_PARTITION_NUMBER,
                 hash_function: str = DEFAULT_HASH_FUNCTION) -> None:
        if hash_function not in hashlib.algorithms_available:
            raise ValueError(
                f"Hash function {hash_function} is not supported on this system, "
                f"supported are {', '.join(sorted(hashlib.algorithms_available))}"
            )
        self.nodes: dict[Any, int] = {}
        self._ring: dict[int, Any] = {}
        self._partitions: list[int] = []
        self._partition_number = partitions
        self._hash_function = hash_function
        self.add_nodes(set(nodes))

    def _new_hash(self, data: bytes) -> Any:
        if self._hash_function == "md5":
            return hashlib.md5(data, usedforsecurity=False)
        return hashlib.new(self._hash_function, data)

    def _points(self, node: Any, weight: int) -> Iterable[int]:
        key = _binary(node)
        key_hash = self._new_hash(key)
        for _ in range(self._partition_number * weight):
            key_hash.update(key)
            yield int(key_hash.hexdigest(), 16)

    def add_node(self, node: Any, weight: int = 1) -> None:
        """Add ``node``; ``weight`` is its share relative to the others' (1, 2, 3 -> 1/6, 1/3, 1/2)."""
        self.add_nodes((node,), weight)

    def add_nodes(self, nodes: Iterable[Any], weight: int = 1) -> None:
        """Add ``nodes``, each with ``weight``."""
        for node in nodes:
            for point in self._points(node, weight):
                self._ring[point] = node
            self.nodes[node] = weight
        self._partitions = sorted(self._ring)

    def remove_node(self, node: Any) -> None:
        """Remove ``node``; UnknownNode if it is not on the ring."""
        try:
            weight = self.nodes.pop(node)
        except KeyError:
            raise UnknownNode(node) from None
        for point in self._points(node, weight):
            del self._ring[point]
        self._partitions = sorted(self._ring)

    def _get_partition(self, data: bytes) -> int:
        position = bisect.bisect(self._partitions, int(self._new_hash(data).hexdigest(), 16))
        return position if position < len(self._partitions) else 0

    def get_nodes(self, data: bytes, ignore_nodes: Iterable[Any] | None = None, replicas: int = 1) -> set[Any]:
        """The ``replicas`` nodes (fewer if the ring is smaller) ``data`` maps onto, skipping ``ignore_nodes``."""
        ignored = set(ignore_nodes) if ignore_nodes else set()
        candidates = set(self.nodes) - ignored
        replicas = min(replicas, len(candidates))
        found: set[Any] = set()
        if not self._partitions:
            return found
        partition = self._get_partition(data)
        while len(found) < replicas:
            node = self._ring[self._partitions[partition]]
            if node not in ignored:
                found.add(node)
            partition = partition + 1 if partition + 1 < len(self._partitions) else 0
        return found

    def __getitem__(self, key: bytes) -> set[Any]:
        return self.get_nodes(key)

    def __len__(self) -> int:
        return len(self._partitions)
