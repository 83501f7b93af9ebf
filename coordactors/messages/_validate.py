"""Validation and normalisation of message fields, run in the caller's thread.

Failures are worded as attrs words them: "'timeout' must be >= 0 or None
(got -1)", and are always :class:`~coordactors.errors.InvalidArgument`.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import re
from typing import Any, Callable

from coordactors.errors import InvalidArgument

MAX_SECONDS = 1e9
"""The longest duration (a timeout, a TTL, an option) accepted: longer ones overflow the platform's clocks."""

MAX_NAME_BYTES = 256
"""Longest group, lock or member name, in UTF-8 bytes (ZooKeeper and etcd keys stay short)."""

MAX_CAPABILITIES_BYTES = 256 * 1024
"""Largest capabilities value, as JSON (memcached's item limit is 1 MiB, etcd's request 1.5 MiB)."""

RESERVED_LOCK_PREFIX = "__leader__/"
"""Lock names with this prefix are the leader-election locks of groups."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Unicode's Cc (control) and Cs (surrogate) characters: what a name must not contain."""


def name(value: Any, what: str) -> str:
    """Return a valid name (group, lock, member id) or raise InvalidArgument.

    bytes are decoded as UTF-8; a name is 1 to 256 UTF-8 bytes without
    control characters.  Backends encode names for their own key syntax, so
    '/' and '.' are allowed.
    """
    if type(value) is not str:
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument(f"'{what}' must be UTF-8 when given as bytes (got {_describe(value)})") from None
        if not isinstance(value, str):
            raise InvalidArgument(f"'{what}' must be str or bytes (got {type(value).__name__} {_describe(value)})")
    if not value:
        raise InvalidArgument(f"'{what}' must not be empty")
    # An ASCII name's length is its size in bytes, and it always encodes.
    if not value.isascii() or len(value) > MAX_NAME_BYTES:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"'{what}' must be encodable as UTF-8 (got {_describe(value)})") from None
        if size > MAX_NAME_BYTES:
            raise InvalidArgument(f"'{what}' must be at most {MAX_NAME_BYTES} UTF-8 bytes (got {size})")
    if _FORBIDDEN.search(value) is not None:
        raise InvalidArgument(f"'{what}' must not contain control characters (got {_describe(value)})")
    return value


def lock_name(value: Any, what: str = "name") -> str:
    """Return a valid user lock name; the leader-election prefix is reserved."""
    text = name(value, what)
    if text.startswith(RESERVED_LOCK_PREFIX):
        raise InvalidArgument(f"'{what}' must not start with {RESERVED_LOCK_PREFIX!r}: that prefix names leader-election locks")
    return text


def optional_group(value: Any, what: str = "group") -> str | None:
    """A group name or None."""
    return None if value is None else name(value, what)


def timeout(value: Any, what: str = "timeout") -> float | None:
    """None (wait forever) or a finite number of seconds >= 0."""
    if value is None:
        return None
    if (type(value) is float or type(value) is int) and 0 <= value <= MAX_SECONDS:
        return float(value)  # the common case, with no NaN, infinity or overflow to rule out
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(f"'{what}' must be a number of seconds or None (got {_describe(value)})")
    try:
        value = float(value)
    except OverflowError:
        raise InvalidArgument(f"'{what}' must be >= 0 and finite, or None (got a number too large for a float)") from None
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise InvalidArgument(f"'{what}' must be >= 0 and finite, or None (got {value!r})")
    if value > MAX_SECONDS:
        raise InvalidArgument(f"'{what}' must be at most {MAX_SECONDS:.0e} seconds, or None to wait forever (got {value!r})")
    return value


def ttl(value: Any, what: str = "ttl") -> float | None:
    """None (the backend's default) or a finite number of seconds > 0."""
    seconds = timeout(value, what)
    if seconds is not None and seconds <= 0:
        raise InvalidArgument(f"'{what}' must be > 0 or None (got {seconds!r})")
    return seconds


def flag(value: Any, what: str) -> bool:
    """A real bool: a truthy string or number is a likely mistake."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"'{what}' must be True or False (got {_describe(value)})")
    return value


_CAPABILITIES_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
"""json.dumps with these options would build a new encoder per call."""


def capabilities_json(value: Any) -> str:
    """Serialise capabilities to compact JSON, or raise InvalidArgument."""
    try:
        text = _CAPABILITIES_ENCODER.encode(value)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise InvalidArgument(f"'capabilities' must be JSON-serialisable ({exc})") from None
    if size > MAX_CAPABILITIES_BYTES:
        raise InvalidArgument(f"'capabilities' must be at most {MAX_CAPABILITIES_BYTES} bytes as JSON (got {size})")
    return text


def converter(check: Callable[[Any, str], Any], what: str) -> Callable[[Any], Any]:
    """Bind a field name to a check, for use as an attrs converter."""
    return functools.partial(check, what=what)
