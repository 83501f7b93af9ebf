"""Leader election, on every backend."""

from __future__ import annotations

import pytest

from coordactors import errors
from coordactors.events import LeaderElected


def test_nobody_leads_a_group_without_campaigners(connect):
    coord = connect()
    coord.create_group("g")
    assert coord.leader("g") is None


def test_campaigning_or_reading_the_leader_of_a_missing_group_raises(connect):
    coord = connect()
    with pytest.raises(errors.GroupNotFound):
        coord.campaign("nope")
    with pytest.raises(errors.GroupNotFound):
        coord.leader("nope")


def test_first_campaigner_leads_and_others_see_it(connect, recorder):
    a, b = connect("a"), connect("b")
    a.join("g", create=True)
    b.join("g")
    b.watch("g", recorder)
    a.campaign("g")
    b.campaign("g")
    recorder.wait_for_event(LeaderElected("g", "a"))
    assert a.leader("g") == b.leader("g") == "a"


def test_leadership_passes_on_stand_down(connect, recorder):
    a, b = connect("a"), connect("b")
    a.join("g", create=True)
    b.join("g")
    a.campaign("g")
    b.watch("g", recorder)
    b.campaign("g")
    assert b.leader("g") == "a"
    a.stand_down("g")
    recorder.wait_for_event(LeaderElected("g", "b"))
    assert a.leader("g") == "b"


def test_leadership_passes_on_leave(connect, recorder):
    a, b = connect("a"), connect("b")
    a.join("g", create=True)
    b.join("g")
    a.campaign("g")
    b.campaign("g")
    b.watch("g", recorder)
    a.leave("g")
    recorder.wait_for_event(LeaderElected("g", "b"))
    assert b.leader("g") == "b"


def test_leadership_passes_on_stop(connect, recorder):
    a, b, observer = connect("a"), connect("b"), connect("observer")
    a.join("g", create=True)
    b.join("g")
    a.campaign("g")
    b.campaign("g")
    observer.watch("g", recorder)
    a.stop()
    recorder.wait_for_event(LeaderElected("g", "b"))
    assert observer.leader("g") == "b"


def test_a_member_that_stood_down_does_not_lead_again_by_itself(connect, recorder):
    a, b = connect("a"), connect("b")
    a.join("g", create=True)
    a.campaign("g")
    a.stand_down("g")
    assert b.leader("g") is None
    b.join("g")
    b.watch("g", recorder)
    b.campaign("g")
    recorder.wait_for_event(LeaderElected("g", "b"))
