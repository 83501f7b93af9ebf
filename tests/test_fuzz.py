"""Bad input, generated: only coordactors.errors, no hang, nothing broken for other users.

URLs and options are fuzzed without a network; names, member ids and
capabilities are fuzzed on every backend row, with a bystander group whose
state must survive every example.
"""

from __future__ import annotations

import json
import math
import string
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import coordactors
from coordactors import errors
from coordactors.messages import Acquire, Release
from coordactors.urls import SCHEMES, parse_url

CALL = 20.0  # every call's own bound: a hang fails the example instead of the whole run
FIXTURE_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text with what breaks key schemes and protocols: separators, control characters, quotes,
# non-BMP characters, lone surrogates, and long strings.
NASTY = st.sampled_from(["", " ", "/", "//", "a/b", "/a", "a/", ".", "..", "../x", "\x00", "a\x00b", "\n", "\r\n", "\t",
                         "\x1f", "\x7f", "%2F", "%", "*", "?", "#", "&", "=", ":", "@", "\\", "'", '"', "`", "$(x)", ";",
                         "é", "İ", "\u200b", "\ufeff", "🙂", "\ud800", "a" * 300, "/" * 100, "x" * 5000])
TEXT = st.one_of(NASTY, st.text(max_size=60), st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
                 st.text(alphabet=string.printable, max_size=40))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(alphabet=st.characters(codec="utf-8"), max_size=10), children, max_size=5),
    max_leaves=20,
)


def _allowed(exc: BaseException) -> bool:
    """A refusal the API promises: a coordactors error that says the input was wrong or unsupported."""
    return isinstance(exc, (errors.InvalidArgument, errors.NotSupported))


# -- URLs and options: parsed without any network ----------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.one_of(TEXT, st.binary(max_size=80), st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(sorted(SCHEMES)), TEXT),
                 st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)))
@example("redis://h:notaport")
@example("redis://[::1")
@example("memory://?session_ttl=nan")
@example("memory://?session_ttl=-1")
@example("memory://?heartbeat_interval=5&session_ttl=1")
@example("memory://?backoff_initial=5&backoff_max=1")
@example("redis://h:1?namespace=a&namespace=b")
@example(b"\xff\xfe")
def test_any_url_is_parsed_or_refused_with_invalid_argument(url: Any) -> None:
    try:
        parse_url(url)
    except errors.CoordinationError as exc:
        assert _allowed(exc), repr(exc)


@settings(max_examples=200, deadline=None)
@given(user=st.text(alphabet=string.ascii_letters, min_size=1, max_size=8),
       secret=st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=20).map(lambda s: "Pw" + s),
       scheme=st.sampled_from(sorted(s for s in SCHEMES if s not in ("memory", "zake", "file", "ipc"))),
       tail=TEXT)
def test_a_malformed_url_never_shows_its_password(user: str, secret: str, scheme: str, tail: str) -> None:
    for url in (f"{scheme}://{user}:{secret}@{tail}", f"{scheme}://{user}:{secret}@127.0.0.1:1{tail}",
                f"{scheme}://h:1?password={secret}&{tail}", f"{scheme}://h:1?token={secret}&{tail}"):
        try:
            parse_url(url)
        except errors.CoordinationError as exc:
            assert _allowed(exc)
            assert secret not in str(exc) and secret not in repr(exc)


OPTION_NAMES = st.sampled_from(["session_ttl", "lease_ttl", "heartbeat_interval", "poll_interval", "connect_timeout",
                                "backoff_initial", "backoff_max", "namespace", "nope", ""])
OPTION_VALUES = st.one_of(NASTY, st.sampled_from(["0", "-1", "1e309", "nan", "inf", "0.0001", "1e-300", "none", "1", "3.5",
                                                  "true", "86400", "99999999999999999999", "1e10", "9e9"]),
                          st.text(max_size=12), st.floats(min_value=1e6, max_value=1e300).map(repr))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(OPTION_NAMES, OPTION_VALUES), max_size=4))
def test_any_options_connect_or_are_refused_with_invalid_argument(options: list[tuple[str, str]]) -> None:
    url = f"memory://f{uuid.uuid4().hex[:8]}?" + "&".join(f"{key}={value}" for key, value in options)  # raw: '&', '=' and all
    try:
        coord = coordactors.connect(url, "a")
    except errors.CoordinationError as exc:
        # Refused, or (connect_timeout=1e-300...) given up on as asked: a coordactors error either way.
        assert _allowed(exc) or isinstance(exc, (errors.BackendUnavailable, errors.OperationTimedOut)), repr(exc)
        return
    try:
        coord.join("g", create=True, timeout=CALL)
    finally:
        coord.stop()


@settings(max_examples=100, deadline=None)
@given(st.one_of(TEXT, st.binary(max_size=40), st.integers(), st.none(), st.floats(), st.lists(st.integers(), max_size=2)))
def test_any_member_id_connects_or_is_refused_on_memory(member: Any) -> None:
    try:
        coord = coordactors.connect(f"memory://f{uuid.uuid4().hex[:8]}", member)
    except errors.CoordinationError as exc:
        assert _allowed(exc), repr(exc)
        return
    with coord:
        coord.join("g", create=True, timeout=CALL)
        assert coord.members("g", timeout=CALL) == {coord.member_id}


NOT_JSON = st.sampled_from([object(), float("nan"), float("inf"), {1: 2}, {(1,): 2}, b"bytes", {1, 2}, [float("-inf")],
                            {"a": object()}, 2**80, "\ud800"])


@settings(max_examples=40, deadline=None)
@given(NOT_JSON)
def test_capabilities_that_are_not_json_are_invalid_argument(capabilities: Any) -> None:
    with coordactors.connect(f"memory://f{uuid.uuid4().hex[:8]}", "a") as coord:
        try:
            coord.join("g", capabilities, create=True, timeout=CALL)
        except errors.CoordinationError as exc:
            assert _allowed(exc), repr(exc)
        else:
            # Accepted: then it must come back as it went in (2**80 is valid JSON, for instance).
            assert json.dumps(coord.capabilities("g", "a", timeout=CALL)) == json.dumps(capabilities)


# -- names, member ids and capabilities on every backend ---------------------------------------------


class _Bystander:
    """Another user of the same backend place, whose state every example must leave alone."""

    def __init__(self, connect: Any) -> None:
        self.coord = connect("bystander")
        self.coord.join("stable", {"keep": [1, "two", None]}, create=True, timeout=CALL)
        self.lease = self.coord.ask(Acquire("stable-lock"), block=True, timeout=CALL)

    def assert_intact(self, observer: coordactors.Coordinator) -> None:
        assert observer.members("stable", timeout=CALL) == {"bystander"}
        assert observer.capabilities("stable", "bystander", timeout=CALL) == {"keep": [1, "two", None]}
        assert "stable" in observer.groups(timeout=CALL)
        self.lease.check()
        with pytest.raises(errors.LockTimeout):
            observer.ask(Acquire("stable-lock", timeout=0), block=True, timeout=CALL)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return bool(a == b) and type(a) is type(b) or (isinstance(a, bool) is isinstance(b, bool) and a == b)


def test_fuzzed_group_and_lock_names_and_capabilities_on_every_backend(backend_url: str, connect: Any) -> None:
    bystander = _Bystander(connect)
    actor, observer = connect("actor"), connect("observer")

    @settings(FIXTURE_SETTINGS, max_examples=12)
    @given(name=TEXT, capabilities=JSON)
    def run(name: str, capabilities: Any) -> None:
        try:
            actor.join(name, capabilities, create=True, timeout=CALL)
        except errors.CoordinationError as exc:
            assert _allowed(exc), repr(exc)
        else:
            try:
                assert observer.members(name, timeout=CALL) == {"actor"}
                assert _same_json(observer.capabilities(name, "actor", timeout=CALL), capabilities)
                assert name in observer.groups(timeout=CALL)
            finally:
                actor.leave(name, timeout=CALL)
                actor.delete_group(name, timeout=CALL)
        try:
            lease = actor.ask(Acquire(name, timeout=0), block=True, timeout=CALL)
        except errors.CoordinationError as exc:
            assert _allowed(exc), repr(exc)
        else:
            assert lease.name == name
            actor.ask(Release(lease), block=True, timeout=CALL)
        bystander.assert_intact(observer)

    run()


def test_fuzzed_member_ids_on_every_backend(backend_url: str, connect: Any) -> None:
    bystander = _Bystander(connect)
    observer = connect("observer")
    observer.create_group("fuzz", timeout=CALL)

    @settings(FIXTURE_SETTINGS, max_examples=6)
    @given(member=st.one_of(TEXT, st.binary(max_size=20)))
    def run(member: Any) -> None:
        assume(member not in ("bystander", "observer", b"bystander", b"observer"))
        try:
            coord = coordactors.connect(backend_url, member)
        except errors.CoordinationError as exc:
            assert _allowed(exc), repr(exc)
            return
        with coord:
            try:
                coord.join("fuzz", {"m": 1}, timeout=CALL)
            except errors.CoordinationError as exc:
                assert _allowed(exc), repr(exc)
            else:
                assert coord.member_id in observer.members("fuzz", timeout=CALL)
                coord.leave("fuzz", timeout=CALL)
        bystander.assert_intact(observer)

    run()


@pytest.mark.parametrize("option", ["session_ttl=99999999999999999999", "connect_timeout=1e10", "heartbeat_interval=1e300",
                                    "lease_ttl=9.3e9", "backoff_max=1e12"])
def test_a_duration_too_long_for_the_clock_is_invalid_argument_and_the_longest_allowed_works(option: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="at most"):
        coordactors.connect(f"memory://f{uuid.uuid4().hex[:8]}?{option}", "a")
    name, _, _ = option.partition("=")
    extra = "&backoff_initial=1" if name == "backoff_max" else ""
    with coordactors.connect(f"memory://f{uuid.uuid4().hex[:8]}?{name}=1e9{extra}", "a") as coord:  # the process's ticker lives on
        coord.join("g", create=True, timeout=CALL)
        assert coord.members("g", timeout=CALL) == {"a"}


def test_a_name_with_any_control_or_surrogate_character_is_refused_and_every_other_character_is_taken() -> None:
    # The check is a regular expression; Unicode's categories Cc and Cs are
    # the rule it stands for, checked here against every character.
    import unicodedata

    for code in [*range(0x10000), 0x1F600, 0xE0001, 0x10FFFF]:
        char = chr(code)
        refused = unicodedata.category(char) in ("Cc", "Cs")
        try:
            Acquire("lock-" + char)
        except errors.InvalidArgument as exc:
            assert refused, f"U+{code:04X} refused: {exc}"
        else:
            assert not refused, f"U+{code:04X} taken"


@pytest.mark.parametrize("timeout", [0, 0.5, 7, 1e9, 1e9 + 1, -1, -0.0, float("nan"), float("inf"), True, 10**400, "1"], ids=lambda v: repr(v)[:12])
def test_a_timeout_is_taken_as_float_seconds_or_refused(timeout: Any) -> None:
    valid = type(timeout) in (int, float) and 0 <= timeout <= 1e9  # NaN compares false
    if valid:
        assert Acquire("x", timeout).timeout == float(timeout)
        assert type(Acquire("x", timeout).timeout) is float
    else:
        with pytest.raises(errors.InvalidArgument, match="'timeout' must be"):
            Acquire("x", timeout)
