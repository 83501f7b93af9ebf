"""URL -> backend class + validated options.

Backends load lazily from :data:`SCHEMES`, one row per URL scheme, so the core
never imports a backend (or its client library) by name.  Adding a backend
means one module and one row.
"""

from __future__ import annotations

import importlib
import math
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable

import attrs

from coordactors.errors import InvalidArgument, NotSupported
from coordactors.messages._validate import MAX_SECONDS

if TYPE_CHECKING:
    from coordactors.backend_actors.base import SessionActor

__all__ = ["SCHEMES", "SessionOptions", "parse_url", "redact"]

SCHEMES: dict[str, tuple[str, str | None]] = {
    # scheme: ("module:Class", pip extra that installs its client library)
    "memory": ("coordactors.backend_actors.memory:MemorySession", None),
    "zake": ("coordactors.backend_actors.memory:MemorySession", None),
    "file": ("coordactors.backend_actors.file:FileSession", "file"),
    "ipc": ("coordactors.backend_actors.ipc:IpcSession", "ipc"),
    "memcached": ("coordactors.backend_actors.memcached:MemcachedSession", "memcached"),
    "redis": ("coordactors.backend_actors.redis:RedisSession", "redis"),
    "rediss": ("coordactors.backend_actors.redis:RedisSession", "redis"),
    "zookeeper": ("coordactors.backend_actors.zookeeper:ZooKeeperSession", "zookeeper"),
    "kazoo": ("coordactors.backend_actors.zookeeper:ZooKeeperSession", "zookeeper"),
    "etcd": ("coordactors.backend_actors.etcd:EtcdSession", "etcd"),
    "consul": ("coordactors.backend_actors.consul:ConsulSession", "consul"),
    "postgresql": ("coordactors.backend_actors.postgresql:PostgreSQLSession", "postgresql"),
    "postgres": ("coordactors.backend_actors.postgresql:PostgreSQLSession", "postgresql"),
    "mysql": ("coordactors.backend_actors.mysql:MySQLSession", "mysql"),
    "etcd3+http": ("coordactors.backend_actors.etcd3:Etcd3Session", "etcd"),
    "etcd3": ("coordactors.backend_actors.etcd3:Etcd3Session", "etcd"),
}

SECRET_OPTIONS = frozenset({"password", "token", "secret", "sasl_password", "auth"})

def redact(url: Any) -> str:
    """The URL with any password (userinfo or secret option) replaced by ``***``.

    Splits as urllib does -- the authority ends at the first '/', '?' or '#',
    and the userinfo at its LAST '@' -- whatever the scheme looks like, so
    nothing urllib would read as a password is ever shown.
    """
    text = url.decode("utf-8", "replace") if isinstance(url, (bytes, bytearray)) else str(url)
    scheme, sep, rest = text.partition("://")
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        authority, tail = rest[:end], rest[end:]
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.partition(":")[0] + ":***"
            authority = f"{userinfo}@{host}"
        text = scheme + sep + authority + tail
    if "?" in text:
        base, _, query = text.partition("?")
        query, hash_, fragment = query.partition("#")
        parts = []
        for piece in query.split("&"):
            key, eq, _value = piece.partition("=")
            name = urllib.parse.unquote_plus(key).lstrip("?").strip().lower()
            parts.append(f"{key}=***" if eq and name in SECRET_OPTIONS else piece)
        text = base + "?" + "&".join(parts) + hash_ + fragment
    return text


def seconds(value: str, what: str) -> float:
    """A query option holding a positive, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise InvalidArgument(f"option '{what}' must be a number of seconds (got {value!r})") from None
    if not math.isfinite(number) or number <= 0:
        raise InvalidArgument(f"option '{what}' must be > 0 and finite (got {value!r})")
    if number > MAX_SECONDS:
        # Timers and waits of that length overflow the platform's clocks.
        raise InvalidArgument(f"option '{what}' must be at most {MAX_SECONDS:.0e} seconds, about 31 years (got {value!r})")
    return number


def optional_seconds(value: str, what: str) -> float | None:
    """Seconds, or ``none`` for no limit."""
    return None if value.lower() in ("none", "never", "0") else seconds(value, what)


def positive_int(value: str, what: str) -> int:
    """A query option holding a whole number > 0."""
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"option '{what}' must be a whole number (got {value!r})") from None
    if number <= 0:
        raise InvalidArgument(f"option '{what}' must be > 0 (got {value!r})")
    return number


def boolean(value: str, what: str) -> bool:
    """A query option holding true/false, yes/no, 1/0."""
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"option '{what}' must be true or false (got {value!r})")


def text(value: str, what: str) -> str:
    """A query option holding a non-empty string."""
    if not value:
        raise InvalidArgument(f"option '{what}' must not be empty")
    return value


Converter = Callable[[str, str], Any]

COMMON_OPTIONS: dict[str, Converter] = {
    "session_ttl": optional_seconds,
    "lease_ttl": optional_seconds,
    "heartbeat_interval": seconds,
    "poll_interval": seconds,
    "connect_timeout": seconds,
    "backoff_initial": seconds,
    "backoff_max": seconds,
}


@attrs.frozen
class SessionOptions:
    """A parsed, validated backend URL.  Build it with :meth:`from_url`.

    Attributes:
        scheme, host, port, path, username: the URL's parts.
        password: never shown in repr.
        redacted: the URL with secrets replaced by ``***``.
        session_ttl: seconds a silent session lives (None: tied to the connection or process).
        lease_ttl: default TTL of a lease (None: held for the life of the session).
        heartbeat_interval: seconds between heartbeats.
        poll_interval: seconds between polls, for backends that cannot push.
        connect_timeout: seconds ``connect()`` waits for the first connection.
        backoff_initial, backoff_max: the supervisor's reconnect backoff.
        extra: backend-specific options, converted.
    """

    scheme: str
    host: str | None
    port: int | None
    path: str
    username: str | None
    password: str | None = attrs.field(repr=False)
    redacted: str
    session_ttl: float | None
    lease_ttl: float | None
    heartbeat_interval: float
    poll_interval: float
    connect_timeout: float
    backoff_initial: float
    backoff_max: float
    extra: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_url(cls, url: Any, defaults: dict[str, Any], options: dict[str, Converter]) -> SessionOptions:
        """Parse ``url`` with a backend's ``defaults`` and extra ``options``."""
        shown = redact(url)
        try:
            split = urllib.parse.urlsplit(url)
            if "," in split.netloc.rpartition("@")[2]:
                # Several servers (zookeeper://h1:1,h2:2): the backend parses
                # the list; urllib would reject the "port" "1,h2:2".
                host, port = split.netloc.rpartition("@")[2], None
            else:
                port = split.port
                host = split.hostname
            query = urllib.parse.parse_qsl(split.query, keep_blank_values=True, strict_parsing=bool(split.query))
        except ValueError as exc:
            # urllib quotes the raw netloc (password included) in some of its
            # messages, unescaped: say the reason in our own words instead.
            raise InvalidArgument(f"malformed URL {shown!r}: {_url_error_reason(str(exc))}") from None
        if split.fragment:
            raise InvalidArgument(f"URL {shown!r} must not have a fragment ('#...')")
        values: dict[str, Any] = dict(defaults)
        extra: dict[str, Any] = {}
        seen: set[str] = set()
        accepted = {**COMMON_OPTIONS, **options}
        for key, raw in query:
            if key in seen:
                raise InvalidArgument(f"option {key!r} is given twice in {shown!r}")
            seen.add(key)
            convert = accepted.get(key)
            if convert is None:
                raise InvalidArgument(
                    f"unknown option {key!r} in {shown!r}; {split.scheme}:// accepts: {', '.join(sorted(accepted))}"
                )
            value = convert(raw, key)
            if key in COMMON_OPTIONS:
                values[key] = value
            else:
                extra[key] = value
        if "heartbeat_interval" not in seen:
            values["heartbeat_interval"] = _default_heartbeat(values)
        if values["backoff_initial"] > values["backoff_max"]:
            raise InvalidArgument(f"option 'backoff_initial' must not exceed 'backoff_max' in {shown!r}")
        ttls = [t for t in (values["session_ttl"], values["lease_ttl"]) if t is not None]
        if ttls and values["heartbeat_interval"] >= min(ttls):
            raise InvalidArgument(f"option 'heartbeat_interval' must be shorter than every TTL in {shown!r}")
        return cls(
            scheme=split.scheme.lower(),
            host=host,
            port=port,
            path=urllib.parse.unquote(split.path),
            username=urllib.parse.unquote(split.username) if split.username else None,
            password=urllib.parse.unquote(split.password) if split.password else None,
            redacted=shown,
            extra=extra,
            **values,
        )


def _url_error_reason(message: str) -> str:
    if "NFKC" in message:
        return "its host part has characters that normalise (NFKC) into URL delimiters"
    if "IPv6" in message:
        return "its IPv6 host is malformed"
    if "Port" in message or "port" in message:
        return "its port is not a number from 0 to 65535"
    return "it cannot be parsed"


def _default_heartbeat(values: dict[str, Any]) -> float:
    ttls = [t for t in (values["session_ttl"], values["lease_ttl"]) if t is not None]
    return min(ttls) / 3 if ttls else 1.0


BASE_DEFAULTS: dict[str, Any] = {
    "session_ttl": 30.0,
    "lease_ttl": None,
    "poll_interval": 0.05,
    "connect_timeout": 10.0,
    "backoff_initial": 0.1,
    "backoff_max": 5.0,
}


def load_backend(scheme: str) -> type[SessionActor]:
    """Import the session class for ``scheme``, or raise with what to install."""
    target, extra = SCHEMES[scheme]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'coordactors[{extra}]'" if extra else "reinstall coordactors"
        raise NotSupported(f"the {scheme}:// backend needs a client library that is missing ({exc.name}): {hint}") from exc
    return getattr(module, class_name)  # type: ignore[no-any-return]


def parse_url(url: Any) -> tuple[type[SessionActor], SessionOptions]:
    """Parse a backend URL into its session class and validated options.

    Raises:
        InvalidArgument: the URL is malformed, names an unknown scheme, or has
            an unknown or malformed option.
        NotSupported: the backend's client library is not installed.
    """
    if isinstance(url, (bytes, bytearray)):
        try:
            url = bytes(url).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("the URL must be UTF-8 when given as bytes") from None
    if not isinstance(url, str):
        raise InvalidArgument(f"the URL must be a string (got {type(url).__name__})")
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidArgument(f"the URL must not contain control characters (got {redact(url)!r})")
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidArgument(f"malformed URL {redact(url)!r}: expected scheme://..., e.g. memory://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidArgument(f"unknown backend {scheme!r} in {redact(url)!r}; available: {', '.join(sorted(SCHEMES))}")
    session_class = load_backend(scheme)
    options = SessionOptions.from_url(url, {**BASE_DEFAULTS, **session_class.DEFAULTS}, session_class.OPTIONS)
    session_class.check_location(options)
    return session_class, options
