"""The tooz facade's parts that need no backend: URLs, capabilities encoding,
errors, names, the hash ring and the partitioner (on memory://)."""

from __future__ import annotations

import datetime
import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coordactors
import coordactors.compat.tooz as tooz
from coordactors import errors
from coordactors.compat.tooz import capabilities, coordination, hashring, locking, partitioner
from coordactors.compat.tooz.urls import to_coordactors_url
from tests.helpers import wait_until


@pytest.mark.parametrize(
    ("tooz_url", "kwargs", "expected"),
    [
        ("redis://h:6379?timeout=20&lock_timeout=5", {}, "redis://h:6379?session_ttl=20&lease_ttl=5"),
        ("redis://h:6379?timeout=20&membership_timeout=9", {}, "redis://h:6379?session_ttl=9"),
        ("redis://:pw@h:6379?db=3&namespace=app&socket_timeout=2", {}, "redis://:pw@h:6379/3?socket_timeout=2&namespace=app"),
        ("redis://h:26379?sentinel=mymaster&sentinel_fallback=a:1&sentinel_fallback=b:2", {},
         "redis://h:26379?sentinel=mymaster&sentinel_fallback=a:1,b:2"),
        ("redis://h:6379?ssl=true&ssl_ca_certs=/ca.pem&encoding=utf8&retry_on_timeout=1", {}, "rediss://h:6379?ssl_ca_certs=/ca.pem"),
        ("redis://h:6379?timeout=20", {"timeout": 7}, "redis://h:6379?session_ttl=7"),
        ("zookeeper://h1:2181?hosts=h2:2181&hosts=h3:2181&timeout=4&namespace=app&randomize_hosts=false", {},
         "zookeeper://h1:2181,h2:2181,h3:2181?session_ttl=4&namespace=app"),
        ("kazoo://u:p@h1:2181?use_ssl=false", {}, "kazoo://u:p@h1:2181"),
        ("memcached://h:11211?timeout=30&lock_timeout=10&leader_timeout=5&max_pool_size=4", {},
         "memcached://h:11211?session_ttl=30&lease_ttl=10"),
        ("file:///var/lib/app?timeout=12", {}, "file:///var/lib/app?session_ttl=12"),
        ("ipc://", {}, "ipc://"),
        ("etcd://h:2379?timeout=15&lock_timeout=6&protocol=http", {}, "etcd://h:2379?session_ttl=15&lease_ttl=6"),
        ("etcd3+http://h:2379?timeout=15&lock_timeout=6&api_version=v3beta", {}, "etcd3+http://h:2379?session_ttl=15&api_path=/v3beta/"),
        ("consul://h:8500?ttl=20&namespace=app&acl_token=secret", {}, "consul://h:8500?session_ttl=20&namespace=app&token=secret"),
        ("postgresql://u:p@h:5432/db?host=other&port=6543&dbname=x", {}, "postgresql://u:p@other:6543/x"),
        ("mysql://u:p@h:3306/db", {}, "mysql://u:p@h:3306/db"),
        ("zake://", {}, "zake://"),
        ("memory://ns?session_ttl=none", {}, "memory://ns?session_ttl=none"),
    ],
)
def test_tooz_url_options_translate_to_their_coordactors_meaning(tooz_url: str, kwargs: dict[str, Any], expected: str) -> None:
    assert to_coordactors_url(tooz_url, kwargs) == expected


@pytest.mark.parametrize(
    "tooz_url",
    [
        "kubernetes://default",
        "etcd3+https://h:2379",
        "etcd://h:2379?protocol=https",
        "zookeeper://h:2181?use_ssl=true",
        "memcached://h:11211?use_ssl=true",
        "redis://h:6379?sentinel_password=pw",
        "mysql://u@h/db?unix_socket=/run/mysqld.sock",
        "postgresql:///db?host=/var/run/postgresql",
    ],
)
def test_tooz_options_coordactors_cannot_honour_are_refused_as_not_implemented(tooz_url: str) -> None:
    with pytest.raises(tooz.NotImplemented) as info:
        coordination.get_coordinator(tooz_url, b"m")
    assert isinstance(info.value, NotImplementedError)


@pytest.mark.parametrize(
    "tooz_url",
    ["no-scheme", "redis://h:6379?timeout=soon", "redis://h:6379?no_such_option=1", "redis://:hunter2@h:99999", "nosuch://x"],
)
def test_malformed_urls_raise_a_tooz_error_that_is_a_value_error_without_the_password(tooz_url: str) -> None:
    with pytest.raises(coordination.ToozError) as info:
        coordination.get_coordinator(tooz_url, b"m")
    assert isinstance(info.value, ValueError)
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value.cause, errors.CoordinationError) or info.value.cause is None


def test_characteristics_are_checked_at_get_coordinator_as_tooz_does() -> None:
    assert coordactors.Characteristics.DISTRIBUTED_ACROSS_THREADS in coordination.get_coordinator("memory://", b"m").CHARACTERISTICS
    coordination.get_coordinator("memory://", b"m", characteristics=[coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS])
    with pytest.raises(coordination.ToozDriverChosenPoorly):
        coordination.get_coordinator("memory://", b"m", characteristics=[coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS])


def test_member_and_group_ids_that_cannot_be_names_are_refused_clearly() -> None:
    with pytest.raises(coordination.ToozError):
        coordination.get_coordinator("memory://", b"\xff\xfe")
    with pytest.raises(coordination.ToozError):
        coordination.get_coordinator("memory://", 42)
    coord = coordination.get_coordinator(f"memory://{uuid.uuid4().hex}", b"m")
    coord.start()
    try:
        with pytest.raises(ValueError):
            coord.create_group(b"").get()
        with pytest.raises(coordination.ToozError):
            coord.get_lock(b"__leader__/g")
    finally:
        coord.stop()


def test_tooz_names_exist_where_tooz_code_imports_them() -> None:
    for name in ("ToozError", "NotImplemented", "get_coordinator", "GroupNotCreated", "MemberJoinedGroup", "LeaderElected"):
        assert hasattr(tooz, name), name
    for name in ("get_coordinator", "CoordinationDriver", "CoordAsyncResult", "Characteristics", "ToozError", "ToozConnectionError",
                 "OperationTimedOut", "LockAcquireFailed", "GroupNotCreated", "GroupAlreadyExist", "MemberAlreadyExist",
                 "MemberNotJoined", "GroupNotEmpty", "WatchCallbackNotFound", "MemberJoinedGroup", "MemberLeftGroup", "LeaderElected"):
        assert hasattr(coordination, name), name
    assert coordination.ToozError is tooz.ToozError
    assert issubclass(tooz.NotImplemented, NotImplementedError) and issubclass(tooz.NotImplemented, tooz.ToozError)
    assert issubclass(locking.CoordactorsLock, locking.Lock)
    assert hashring.HashRing and partitioner.Partitioner


def test_coordactors_errors_become_tooz_errors_with_the_cause_chained() -> None:
    from coordactors.compat.tooz.exceptions import translate

    cases = [
        (errors.GroupNotFound("x"), coordination.GroupNotCreated),
        (errors.GroupAlreadyExists("x"), coordination.GroupAlreadyExist),
        (errors.GroupNotEmpty("x"), coordination.GroupNotEmpty),
        (errors.MemberAlreadyJoined("x"), coordination.MemberAlreadyExist),
        (errors.MemberNotJoined("x"), coordination.MemberNotJoined),
        (errors.BackendUnavailable("x"), coordination.ToozConnectionError),
        (errors.CoordinatorStopped("x"), coordination.ToozConnectionError),
        (errors.OperationTimedOut("x"), coordination.OperationTimedOut),
        (errors.NotSupported("x"), tooz.NotImplemented),
        (errors.InvalidArgument("x"), coordination.InvalidArgument),
        (errors.LockLost("x"), coordination.ToozError),
    ]
    for original, kind in cases:
        result = translate(original, b"g", b"m")
        assert type(result) is kind, (original, result)
        assert result.cause is original and result.__cause__ is original
    assert translate(errors.MemberNotJoined("x"), b"g", b"m").member_id == b"m"


def test_a_connection_refused_at_start_is_a_tooz_connection_error() -> None:
    coord = coordination.get_coordinator("redis://127.0.0.1:1?connect_timeout=2", b"m")
    with pytest.raises(coordination.ToozConnectionError):
        coord.start()
    assert not coord.is_started


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text() | st.binary() | st.integers(), children, max_size=4)
    | st.frozensets(st.text() | st.binary(), max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_VALUES)
def test_capabilities_round_trip_exactly_through_json(value: Any) -> None:
    import json

    assert capabilities.decode(json.loads(json.dumps(capabilities.encode(value)))) == value


def test_capabilities_that_look_like_the_encoding_and_odd_values_survive() -> None:
    import json

    for value in ({"__tooz__": "bytes", "v": "AA=="}, float("inf"), datetime.datetime(2026, 1, 2, 3, 4, 5), {1, 2}, b""):
        assert capabilities.decode(json.loads(json.dumps(capabilities.encode(value)))) == value
    with pytest.raises(coordination.SerializationError):
        capabilities.encode(object())


@pytest.mark.parametrize("seed", range(5))
def test_the_hash_ring_places_objects_exactly_as_tooz_does(seed: int) -> None:
    real = pytest.importorskip("tooz.hashring")
    rng = random.Random(seed)
    nodes = [f"node-{rng.randrange(10**6)}".encode() for _ in range(rng.randint(1, 6))]
    ours, theirs = hashring.HashRing(nodes, partitions=8), real.HashRing(nodes, partitions=8)
    extra = b"heavy"
    ours.add_node(extra, weight=3)
    theirs.add_node(extra, weight=3)
    if len(nodes) > 1:
        ours.remove_node(nodes[0])
        theirs.remove_node(nodes[0])
    for _ in range(200):
        data = rng.randbytes(8)
        replicas = rng.randint(1, 3)
        assert ours.get_nodes(data, replicas=replicas) == theirs.get_nodes(data, replicas=replicas)
        assert ours.get_nodes(data, ignore_nodes=[extra]) == theirs.get_nodes(data, ignore_nodes=[extra])
    assert len(ours) == len(theirs)
    with pytest.raises(hashring.UnknownNode):
        ours.remove_node(b"never-added")
    with pytest.raises(ValueError):
        hashring.HashRing([], hash_function="no-such-hash")


def test_partitioned_group_members_agree_on_one_owner_per_object_and_follow_leaves() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    coords = [coordination.get_coordinator(url, f"p{i}".encode()) for i in range(3)]
    for coord in coords:
        coord.start()
    try:
        parts = [coord.join_partitioned_group(b"shards", weight=i + 1, partitions=16) for i, coord in enumerate(coords)]

        def everyone_sees_everyone() -> bool:
            for coord in coords:
                coord.run_watchers()
            return all(set(part.ring.nodes) == {b"p0", b"p1", b"p2"} for part in parts)

        wait_until(everyone_sees_everyone)
        assert parts[0].ring.nodes == {b"p0": 1, b"p1": 2, b"p2": 3}
        for obj in range(100):
            owners = [part.members_for_object(obj) for part in parts]
            assert owners[0] == owners[1] == owners[2] and len(owners[0]) == 1
            assert sum(part.belongs_to_self(obj) for part in parts) == 1
        coords[2].leave_partitioned_group(parts[2])

        def departure_seen() -> bool:
            coords[0].run_watchers()
            return set(parts[0].ring.nodes) == {b"p0", b"p1"}

        wait_until(departure_seen)
        assert all(parts[0].members_for_object(obj) <= {b"p0", b"p1"} for obj in range(50))
    finally:
        for coord in coords:
            coord.stop()


def test_a_result_not_in_within_the_timeout_raises_operation_timed_out_and_can_be_waited_for_again() -> None:
    import concurrent.futures

    from coordactors.compat.tooz.results import CoordinatorResult

    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    result = CoordinatorResult(future, lambda members: {m.encode() for m in members})
    with pytest.raises(coordination.OperationTimedOut):
        result.get(timeout=0.01)
    assert result.done() is False
    future.set_result(frozenset({"a"}))
    assert result.done() is True and result.get() == {b"a"}


COMPAT_MODULES = [
    "coordactors.compat.tooz",
    "coordactors.compat.tooz.capabilities",
    "coordactors.compat.tooz.coordination",
    "coordactors.compat.tooz.driver",
    "coordactors.compat.tooz.events",
    "coordactors.compat.tooz.exceptions",
    "coordactors.compat.tooz.hashring",
    "coordactors.compat.tooz.locking",
    "coordactors.compat.tooz.partitioner",
    "coordactors.compat.tooz.results",
    "coordactors.compat.tooz.urls",
]


@pytest.mark.parametrize("name", COMPAT_MODULES)
def test_the_facade_modules_keep_the_public_api_rules(name: str) -> None:
    import importlib
    import inspect

    from tests import test_exports

    module = importlib.import_module(name)
    checks = [fn for check, fn in inspect.getmembers(test_exports, inspect.isfunction)
              if check.startswith("test_") and list(inspect.signature(fn).parameters) == ["module"]]
    assert checks
    for check in checks:
        check(module)
