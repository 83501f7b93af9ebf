"""tooz backend URLs -> coordactors URLs.

``get_coordinator`` accepts tooz's URL forms: the same schemes, and the query
options tooz's drivers document (``get_coordinator``'s keyword arguments
override options of the same name, as in tooz).  Each option is

* **translated** where it has a coordactors meaning (the table below),
* **ignored** where it only tunes tooz's own client plumbing (listed in
  :data:`IGNORED`; logged at debug level),
* **refused** with :class:`~coordactors.compat.tooz.exceptions.NotImplemented`
  where it asks for something coordactors cannot do here (TLS to memcached,
  ZooKeeper or the etcd gateway, Redis Sentinel credentials, MySQL or
  PostgreSQL unix sockets), rather than silently connecting differently.

Options tooz does not know pass through untouched, so coordactors' own
options (``session_ttl``, ``namespace``...) work too; anything neither knows
is an :class:`~coordactors.compat.tooz.exceptions.InvalidArgument`.

=================  ==========================================  ==========================
scheme             tooz option                                 coordactors option
=================  ==========================================  ==========================
redis, rediss      ``membership_timeout`` (else ``timeout``)   ``session_ttl``
                   ``lock_timeout``                            ``lease_ttl``
                   ``socket_timeout``, ``namespace``,          same name
                   ``sentinel``, ``sentinel_fallback``,
                   ``ssl_certfile``/``ssl_keyfile``/
                   ``ssl_ca_certs``
                   ``db``                                      the path (``/db``)
                   ``ssl=true``                                the ``rediss://`` scheme
                   ``socket_connect_timeout``                  ``connect_timeout``
zookeeper, kazoo   ``timeout``                                 ``session_ttl``
                   ``hosts`` (repeatable)                      more ``host:port`` in the URL
                   ``namespace``                               ``namespace``
memcached          ``membership_timeout`` (else ``timeout``)   ``session_ttl``
                   ``lock_timeout``                            ``lease_ttl``
file               ``timeout``                                 ``session_ttl``
etcd               ``timeout``                                 ``session_ttl``
                   ``lock_timeout``                            ``lease_ttl``
etcd3+http         ``membership_timeout`` (else ``timeout``)   ``session_ttl``
                   ``api_version``                             ``api_path`` (``/<v>/``)
consul             ``ttl``                                     ``session_ttl``
                   ``namespace``                               ``namespace``
                   ``acl_token``                               ``token``
postgresql         ``host``, ``port``, ``dbname``              the URL's host, port, path
=================  ==========================================  ==========================

Passwords never appear in an error message (they are shown as ``***``).
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, Callable

from coordactors.compat.tooz.exceptions import InvalidArgument, NotImplemented
from coordactors.urls import redact

logger = logging.getLogger(__name__)

__all__ = ["IGNORED", "to_coordactors_url"]

_EXECUTOR = ("executor",)
IGNORED: dict[str, tuple[str, ...]] = {
    # scheme: tooz options that tune tooz's client only and mean nothing here
    "redis": (*_EXECUTOR, "encoding", "retry_on_timeout", "socket_keepalive", "health_check_interval"),
    "zookeeper": ("randomize_hosts", "connection_retry", "command_retry", "handler"),
    "memcached": (*_EXECUTOR, "max_pool_size", "leader_timeout"),
    "file": (*_EXECUTOR,),
    "ipc": (*_EXECUTOR,),
    "etcd": (*_EXECUTOR,),
    "etcd3+http": (*_EXECUTOR, "lock_timeout"),
    "consul": (*_EXECUTOR,),
    "postgresql": (*_EXECUTOR,),
    "mysql": (*_EXECUTOR,),
    "zake": (),
    "memory": (),
}
"""Per scheme, the tooz options accepted and ignored, and why:

* ``executor``: tooz runs blocking client calls on an executor; coordactors
  runs them on its session actor and shared pool.
* redis ``encoding``, ``retry_on_timeout``, ``socket_keepalive``,
  ``health_check_interval``: redis-py connection tuning; coordactors keeps
  one supervised connection and reconnects with backoff itself.
* zookeeper ``randomize_hosts``, ``connection_retry``, ``command_retry``,
  ``handler``: kazoo tuning; the session is supervised and restored.
* memcached ``max_pool_size``: one connection per session; ``leader_timeout``:
  leadership is a lock held with the session's lease (``lock_timeout``).
* etcd3 ``lock_timeout``: a lock lives exactly as long as the session's etcd
  lease (``membership_timeout``/``timeout``).
"""

_UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "redis": ("sentinel_username", "sentinel_password", "sentinel_ssl"),
    "zookeeper": ("use_ssl", "ca", "certfile", "keyfile", "keyfile_password", "verify_certs"),
    "memcached": ("use_ssl", "ca_cert", "ssl_key", "ssl_cert", "ssl_key_password", "ssl_ciphers", "ssl_check_hostname"),
    "etcd3+http": ("ca_cert", "cert_key", "cert_cert"),
    "mysql": ("unix_socket", "ssl_ca", "ssl_cert", "ssl_key", "ssl_capath", "ssl_cipher", "ssl_check_hostname"),
}
_FALSE = ("", "0", "false", "no", "off")

_SCHEMES = {
    # tooz scheme -> the key of the tables above
    "redis": "redis", "rediss": "redis", "zookeeper": "zookeeper", "kazoo": "zookeeper",
    "memcached": "memcached", "file": "file", "ipc": "ipc", "etcd": "etcd",
    "etcd3+http": "etcd3+http", "etcd3": "etcd3+http", "consul": "consul",
    "postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "zake": "zake", "memory": "memory",
}


class _Url:
    """A URL being rewritten: scheme, netloc, path, and ordered options."""

    def __init__(self, scheme: str, netloc: str, path: str, options: dict[str, list[str]], shown: str) -> None:
        self.scheme, self.netloc, self.path, self.options, self.shown = scheme, netloc, path, options, shown
        self.out: dict[str, str] = {}

    def take(self, name: str) -> str | None:
        """Remove option ``name`` and return its last value (tooz's ``collapse``), or None."""
        values = self.options.pop(name, None)
        return values[-1] if values else None

    def rename(self, name: str, target: str) -> None:
        value = self.take(name)
        if value is not None:
            self.out[target] = value

    def text(self) -> str:
        query = urllib.parse.urlencode(self.out, safe="/,:")
        return f"{self.scheme}://{self.netloc}{self.path}" + (f"?{query}" if query else "")


def _ttl_from(url: _Url, specific: str, general: str = "timeout") -> None:
    specific_value, general_value = url.take(specific), url.take(general)
    value = specific_value if specific_value is not None else general_value
    if value is not None:
        url.out["session_ttl"] = value


def _redis(url: _Url) -> None:
    _ttl_from(url, "membership_timeout")
    url.rename("lock_timeout", "lease_ttl")
    url.rename("socket_connect_timeout", "connect_timeout")
    for name in ("socket_timeout", "namespace", "sentinel", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
        url.rename(name, name)
    fallback = url.options.pop("sentinel_fallback", None)
    if fallback:
        url.out["sentinel_fallback"] = ",".join(fallback)
    db = url.take("db")
    if db is not None:
        url.path = "/" + db
    ssl = url.take("ssl")
    if ssl is not None and ssl.lower() not in _FALSE:
        url.scheme = "rediss"


def _zookeeper(url: _Url) -> None:
    url.rename("timeout", "session_ttl")
    url.rename("namespace", "namespace")
    hosts = url.options.pop("hosts", None)
    if hosts:
        credentials, at, netloc = url.netloc.rpartition("@")
        url.netloc = credentials + at + ",".join(filter(None, [netloc, *hosts]))


def _memcached(url: _Url) -> None:
    _ttl_from(url, "membership_timeout")
    url.rename("lock_timeout", "lease_ttl")


def _file(url: _Url) -> None:
    url.rename("timeout", "session_ttl")


def _etcd(url: _Url) -> None:
    url.rename("timeout", "session_ttl")
    url.rename("lock_timeout", "lease_ttl")
    protocol = url.take("protocol")
    if protocol not in (None, "http"):
        raise NotImplemented(f"etcd:// over {protocol!r} is not supported here, only http (in {url.shown!r})")


def _etcd3(url: _Url) -> None:
    _ttl_from(url, "membership_timeout")
    version = url.take("api_version")
    if version is not None:
        url.out["api_path"] = "/" + version.strip("/") + "/"
    url.scheme = "etcd3+http"


def _consul(url: _Url) -> None:
    url.rename("ttl", "session_ttl")
    url.rename("namespace", "namespace")
    url.rename("acl_token", "token")


def _postgresql(url: _Url) -> None:
    host, port, dbname = url.take("host"), url.take("port"), url.take("dbname")
    if host is not None and host.startswith("/"):
        raise NotImplemented(f"postgresql:// over a unix socket ({host}) is not supported here, only TCP (in {url.shown!r})")
    if host is not None or port is not None:
        credentials, at, netloc = url.netloc.rpartition("@")
        old_host, _, old_port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
        netloc = f"{host or old_host}" + (f":{port or old_port}" if (port or old_port) else "")
        url.netloc = credentials + at + netloc
    if dbname is not None:
        url.path = "/" + dbname


_RULES: dict[str, Callable[[_Url], None]] = {
    "redis": _redis, "zookeeper": _zookeeper, "memcached": _memcached, "file": _file,
    "etcd": _etcd, "etcd3+http": _etcd3, "consul": _consul, "postgresql": _postgresql,
}


def to_coordactors_url(url: Any, kwargs: dict[str, Any] | None = None) -> str:
    """Translate a tooz backend URL (plus ``get_coordinator`` keyword options) to a coordactors URL.

    Raises:
        InvalidArgument: the URL is malformed.
        NotImplemented: the scheme or an option asks for what coordactors cannot do.
    """
    if isinstance(url, (bytes, bytearray)):
        url = bytes(url).decode("utf-8", "replace")
    if not isinstance(url, str):
        raise InvalidArgument(f"the backend URL must be a string (got {type(url).__name__})")
    shown = redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidArgument(f"malformed backend URL {shown!r}: expected scheme://..., e.g. redis://127.0.0.1:6379")
    scheme = scheme.lower()
    if scheme == "etcd3+https":
        raise NotImplemented(f"etcd3+https:// is not supported here: use etcd3+http:// to the gateway (in {shown!r})")
    if scheme == "kubernetes":
        raise NotImplemented(f"kubernetes:// (tooz's Lease-based driver) has no coordactors backend (in {shown!r})")
    family = _SCHEMES.get(scheme)
    if family is None:
        # Not a tooz scheme: coordactors says which schemes exist.
        return url
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    end = rest.find("/")
    netloc, path = (rest, "") if end < 0 else (rest[:end], rest[end:])
    try:
        options = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InvalidArgument(f"malformed query string in {shown!r}") from None
    for key, value in (kwargs or {}).items():
        options[key] = [value if isinstance(value, str) else str(value)]
    target = _Url(scheme, netloc, path, options, shown)
    use_ssl = target.options.get("use_ssl")
    if use_ssl is not None and use_ssl[-1].lower() in _FALSE:
        del target.options["use_ssl"]  # asking for no TLS is what we do anyway
    for name in _UNSUPPORTED.get(family, ()):
        if name in target.options:
            raise NotImplemented(f"tooz option {name!r} is not supported by the coordactors {family} backend (in {shown!r})")
    for name in IGNORED.get(family, ()):
        if target.options.pop(name, None) is not None:
            logger.debug("ignoring tooz option %r (no meaning in coordactors) in %s", name, shown)
    rule = _RULES.get(family)
    if rule is not None:
        rule(target)
    for key, values in target.options.items():
        target.out[key] = values[-1]
    text = target.text()
    return text + ("#" + fragment if fragment else "")
