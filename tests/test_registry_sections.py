"""file:// and ipc:// keep the registry's groups and event log apart from its core.

A lock operation must neither read nor rewrite a big group; a change to a
group must reach every process; the directory must hold no leftovers; a
registry written by an earlier version (one document) must still be read.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

import coordactors
from coordactors import errors
from coordactors.backend_actors import _sections
from coordactors.messages import Acquire, Release


def _sections_of(directory: Any) -> dict[str, str]:
    """Section name -> the file holding it, read from the stored core."""
    core = json.loads((directory / "registry.json").read_text())
    return {name: f"registry.{name}.{stamp}.json" for name, stamp in core["sections"].items()}


def _count_section_reads(monkeypatch: Any) -> list[str]:
    """Record every section a codec parses from storage (not from its cache)."""
    parsed: list[str] = []
    loads = json.loads

    def counting(data: Any, *args: Any, **kwargs: Any) -> Any:
        value = loads(data, *args, **kwargs)
        if isinstance(value, (list, dict)) and not (isinstance(value, dict) and "format" in value):
            parsed.append(type(value).__name__)
        return value

    monkeypatch.setattr(_sections.json, "loads", counting)
    return parsed


def test_a_lock_operation_leaves_the_groups_and_events_untouched(tmp_path: Any, coordinators: Any) -> None:
    directory = tmp_path / "coord"
    coord = coordinators("a", f"file://{directory}")
    coord.join("big", create=True)
    before = _sections_of(directory)
    stats = {name: os.stat(directory / path).st_mtime_ns for name, path in before.items()}
    for _ in range(5):
        coord.ask(Release(coord.ask(Acquire("jobs"), block=True, timeout=10)), block=True, timeout=10)
    assert _sections_of(directory) == before
    assert {name: os.stat(directory / path).st_mtime_ns for name, path in before.items()} == stats
    coord.leave("big")
    after = _sections_of(directory)
    assert after["groups"] != before["groups"] and after["events"] != before["events"]
    # Nothing but the core, its lock and the sections it names is left behind.
    assert sorted(os.listdir(directory)) == sorted(["registry.json", "registry.lock", *after.values()])


def test_a_lock_operation_parses_no_section(cross_process_url: str, coordinators: Any, monkeypatch: Any) -> None:
    coord = coordinators("a", cross_process_url)
    coord.join("big", create=True)
    parsed = _count_section_reads(monkeypatch)
    for _ in range(5):
        coord.ask(Release(coord.ask(Acquire("jobs"), block=True, timeout=10)), block=True, timeout=10)
    assert coord.members("big") == {"a"}  # cached: still parses nothing
    assert parsed == []


def test_a_change_by_another_coordinator_is_read_anew(cross_process_url: str, coordinators: Any) -> None:
    # Two coordinators: two storages, each with its own cache of parsed sections.
    first, second = coordinators("first", cross_process_url), coordinators("second", cross_process_url)
    first.join("g", {"v": 1}, create=True)
    assert second.members("g") == {"first"}
    second.join("g")
    first.update_capabilities("g", {"v": 2})
    assert first.members("g") == {"first", "second"}
    assert second.capabilities("g", "first") == {"v": 2}
    first.leave("g")
    assert second.members("g") == {"second"}


def test_a_registry_of_format_1_is_read_and_carried_over(tmp_path: Any, coordinators: Any) -> None:
    directory = tmp_path / "coord"
    directory.mkdir()
    old = {"format": "coordactors-registry/1", "boot": "an earlier boot", "seq": 1, "events": [[1, "g", "join", "gone"]],
           "owners": {}, "groups": {"g": {}, "h": {}}, "locks": {}, "fences": {"jobs": 41}}
    (directory / "registry.json").write_text(json.dumps(old))
    coord = coordinators("a", f"file://{directory}")
    assert coord.groups() == {"g", "h"}
    lease = coord.ask(Acquire("jobs"), block=True, timeout=10)
    assert lease.fence == 42
    coord.join("g")
    core = json.loads((directory / "registry.json").read_text())
    assert core["format"] == "coordactors-registry/2" and "groups" not in core
    assert json.loads((directory / _sections_of(directory)["groups"]).read_text()) == {"g": {"a": {"caps": "null", "owner": core["locks"]["jobs"]["owner"]}}, "h": {}}


def test_a_core_naming_a_missing_section_is_refused_and_left_untouched(tmp_path: Any, coordinators: Any) -> None:
    directory = tmp_path / "coord"
    coord = coordinators("a", f"file://{directory}")
    coord.join("g", create=True)
    coord.stop()
    named = _sections_of(directory)
    os.unlink(directory / named["groups"])
    with pytest.raises(errors.InvalidArgument, match="damaged registry.*'groups' section"), \
            coordactors.connect(f"file://{directory}", "b") as other:
        other.members("g")
    # Never replaced by an empty section: the core still names the lost one.
    assert _sections_of(directory) == named
    assert not (directory / named["groups"]).exists()
