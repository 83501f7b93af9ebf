"""Group membership and capabilities, on every backend."""

from __future__ import annotations

import pytest

from coordactors import errors
from coordactors.messages import CreateGroup, DeleteGroup, GetGroups, GetMembers, Join, Leave


def test_created_group_is_listed_and_cannot_be_created_twice(connect):
    coord = connect()
    coord.create_group("workers")
    assert "workers" in coord.groups()
    with pytest.raises(errors.GroupAlreadyExists):
        coord.create_group("workers")


def test_deleting_a_missing_group_raises_group_not_found(connect):
    with pytest.raises(errors.GroupNotFound):
        connect().delete_group("nope")


def test_a_group_with_members_cannot_be_deleted_until_empty(connect):
    coord = connect()
    coord.join("workers", create=True)
    with pytest.raises(errors.GroupNotEmpty):
        coord.delete_group("workers")
    coord.leave("workers")
    coord.delete_group("workers")
    assert "workers" not in coord.groups()


def test_joining_a_missing_group_raises_unless_create(connect):
    coord = connect()
    with pytest.raises(errors.GroupNotFound):
        coord.join("workers")
    coord.join("workers", create=True)
    assert coord.members("workers") == {coord.member_id}


def test_joining_twice_raises_member_already_joined(connect):
    coord = connect()
    coord.join("workers", create=True)
    with pytest.raises(errors.MemberAlreadyJoined):
        coord.join("workers")


def test_the_same_member_id_cannot_join_twice_from_two_coordinators(connect):
    first, second = connect("same-id"), connect("same-id")
    first.join("workers", create=True)
    with pytest.raises(errors.MemberAlreadyJoined):
        second.join("workers")


def test_leaving_a_group_not_joined_or_missing_raises(connect):
    coord = connect()
    with pytest.raises(errors.GroupNotFound):
        coord.leave("nope")
    coord.create_group("workers")
    with pytest.raises(errors.MemberNotJoined):
        coord.leave("workers")


def test_members_of_every_coordinator_are_seen_by_the_others(connect):
    a, b, c = connect("a"), connect("b"), connect("c")
    a.join("workers", create=True)
    b.join("workers")
    assert c.members("workers") == {"a", "b"}
    a.leave("workers")
    assert c.members("workers") == {"b"}


def test_members_of_a_missing_group_raise_group_not_found(connect):
    with pytest.raises(errors.GroupNotFound):
        connect().members("nope")


@pytest.mark.parametrize(
    "capabilities",
    [None, 3, "text", [1, 2.5, "x"], {"zone": "eu-1", "slots": 8, "tags": ["gpu"], "nested": {"ok": True}}, {"unicode": "héllo ✓"}],
)
def test_capabilities_round_trip_to_other_members(connect, capabilities):
    a, b = connect("a"), connect("b")
    a.join("workers", capabilities, create=True)
    assert b.capabilities("workers", "a") == capabilities


def test_updated_capabilities_are_seen_by_others(connect):
    a, b = connect("a"), connect("b")
    a.join("workers", {"load": 1}, create=True)
    a.update_capabilities("workers", {"load": 7})
    assert b.capabilities("workers", "a") == {"load": 7}


def test_capabilities_of_a_non_member_raise_member_not_joined(connect):
    coord = connect()
    coord.create_group("workers")
    with pytest.raises(errors.MemberNotJoined):
        coord.capabilities("workers", "ghost")
    with pytest.raises(errors.MemberNotJoined):
        coord.update_capabilities("workers", {"x": 1})
    with pytest.raises(errors.GroupNotFound):
        coord.capabilities("nope", "ghost")


def test_names_with_separators_and_unicode_are_kept_apart(connect):
    coord = connect("wörker/1")
    for group in ("a/b", "a", "a.b", "..", "grüppe ✓", "x" * 200):
        coord.join(group, create=True)
    assert {"a/b", "a", "a.b", "..", "grüppe ✓", "x" * 200} <= coord.groups()
    assert coord.members("a/b") == {"wörker/1"}


def test_bytes_ids_are_normalised_to_text(connect):
    coord = connect(b"member-b")
    coord.ask(Join(b"bytes-group", create=True), block=True, timeout=10)
    assert coord.member_id == "member-b"
    assert coord.ask(GetMembers("bytes-group"), block=True, timeout=10) == {"member-b"}


def test_replies_come_through_every_calling_style(connect):
    import asyncio

    coord = connect()
    coord.ask(CreateGroup("g1"), block=True, timeout=10)
    assert coord.ask(GetGroups()).get(timeout=10) >= {"g1"}
    assert coord.submit(GetGroups()).result(timeout=10) >= {"g1"}
    assert asyncio.run(coord.request(GetGroups(), timeout=10)) >= {"g1"}
    coord.tell(DeleteGroup("g1"))
    coord.ask(Join("g2", create=True), block=True, timeout=10)  # ordered after the tell
    assert "g1" not in coord.groups()


def test_errors_name_the_backend_without_secrets(connect, backend_url):
    coord = connect()
    with pytest.raises(errors.GroupNotFound) as caught:
        coord.ask(Leave("nope"), block=True, timeout=10)
    assert caught.value.backend == coord.url
    assert isinstance(caught.value.request, Leave)
    assert coord.url in str(caught.value)


def test_actor_systems_ask_the_supervisor_and_get_replies_and_errors(connect):
    coord = connect("a")
    ref = coord.actor_ref
    assert ref.ask(Join("g", {"k": 1}, create=True), block=False).get(timeout=10) is None
    assert ref.ask(GetMembers("g"), timeout=10) == {"a"}
    with pytest.raises(errors.MemberAlreadyJoined):
        ref.ask(Join("g"), timeout=10)


def test_threads_are_named_after_backend_and_member(connect):
    import threading

    coord = connect("named-member")
    assert any("[named-member]" in thread.name for thread in threading.enumerate())
    assert "named-member" in repr(coord)
