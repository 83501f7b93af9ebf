"""A reversible encoding of tooz capabilities into coordactors' JSON capabilities.

tooz stores capabilities with msgpack (oslo.serialization's msgpackutils), so
a member may advertise bytes (the default is ``b""``), tuples, sets, dicts
with bytes keys or datetimes.  coordactors stores JSON.  Values JSON cannot
carry are wrapped in a one-key-tagged object ``{"__tooz__": kind, "v": ...}``
and unwrapped on the way back, so ``get_member_capabilities`` returns exactly
what was given.  A dict that itself has a ``"__tooz__"`` key is wrapped too,
so no user value is ever mistaken for a tag.
"""

from __future__ import annotations

import base64
import datetime
import math
from typing import Any

from coordactors.compat.tooz.exceptions import SerializationError

__all__ = ["decode", "encode"]

TAG = "__tooz__"


def _tagged(kind: str, value: Any) -> dict[str, Any]:
    return {TAG: kind, "v": value}


def encode(value: Any) -> Any:
    """``value`` as JSON-serialisable data; SerializationError if msgpack could not store it either."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _tagged("float", repr(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _tagged("bytes", base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, tuple):
        return _tagged("tuple", [encode(item) for item in value])
    if isinstance(value, (set, frozenset)):
        return _tagged("frozenset" if isinstance(value, frozenset) else "set", [encode(item) for item in value])
    if isinstance(value, datetime.datetime):
        return _tagged("datetime", value.isoformat())
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value) and TAG not in value:
            return {key: encode(item) for key, item in value.items()}
        return _tagged("dict", [[encode(key), encode(item)] for key, item in value.items()])
    raise SerializationError(f"capabilities of type {type(value).__name__} cannot be serialised ({value!r:.80})")


def decode(data: Any) -> Any:
    """The value :func:`encode` was given."""
    if isinstance(data, list):
        return [decode(item) for item in data]
    if not isinstance(data, dict):
        return data
    if TAG not in data:
        return {key: decode(item) for key, item in data.items()}
    kind, inner = data[TAG], data.get("v")
    if kind == "bytes":
        return base64.b64decode(inner)
    if kind == "tuple":
        return tuple(decode(item) for item in inner)
    if kind == "set":
        return {decode(item) for item in inner}
    if kind == "frozenset":
        return frozenset(decode(item) for item in inner)
    if kind == "datetime":
        return datetime.datetime.fromisoformat(inner)
    if kind == "float":
        return float(inner)
    if kind == "dict":
        return {decode(key): decode(item) for key, item in inner}
    raise SerializationError(f"unknown tagged capabilities value {kind!r}")
