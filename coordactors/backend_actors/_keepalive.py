"""One kept-alive HTTP/1.1 connection, for the backends that speak JSON over HTTP.

etcd3gw and py-consul send their requests through a ``requests.Session``.
requests (with urllib3 under it) spends about half a millisecond of Python
per call -- as much as etcd's gateway takes to answer (py-consul's list of
a thousand keys from the fake agent: 577 µs through requests, 148 µs by
hand) -- so the etcd3 and Consul sessions give their client a
:class:`KeepAliveSession` instead: the part of the ``requests.Session``
interface they use (``get``, ``put``, ``delete``, ``post``, ``headers``,
``close``), over one :class:`~coordactors.backend_actors._http1.HttpConnection`
(``http.client`` parsed every reply's headers with the ``email`` package),
failing with the same ``requests`` exceptions (and messages) the clients
already map to their own.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import urllib.parse
from typing import Any

import requests

from coordactors.backend_actors._http1 import HttpConnection

__all__ = ["KeepAliveSession", "closed_by_peer"]

CONNECT_FAILED = "Failed to establish a new connection"
"""What requests says when a connection could not even be made (nothing was sent)."""


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle kept-alive socket was closed (or reset) by the server: readable means EOF or error."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Reply:
    """What etcd3gw and py-consul read of a response."""

    __slots__ = ("_headers", "content", "encoding", "reason", "status_code")

    def __init__(self, status_code: int, reason: str, content: bytes, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.reason = reason
        self.content = content
        self._headers = headers  # lower-case names
        self.encoding = "utf-8"  # (py-consul sets it; the text is UTF-8 anyway)

    @property
    def headers(self) -> requests.structures.CaseInsensitiveDict[str]:
        return requests.structures.CaseInsensitiveDict(self._headers)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class KeepAliveSession:
    """A ``requests.Session`` stand-in for one thread at a time: POSTs JSON on
    one kept-alive connection, re-made (to the URL's host) when the server
    closed it or the host changed."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self._conn: HttpConnection | None = None
        self._host: tuple[str, int] | None = None

    def post(self, url: str, json: Any = None, timeout: Any = None, data: Any = None, headers: dict[str, str] | None = None,
             **_tls: Any) -> _Reply:  # noqa: A002 - requests' names
        """POST ``json`` (or ``data``) to ``url``; ``timeout`` is (connect, read) or one number."""
        return self.request("POST", url, headers=headers, data=data if json is None else _dumps(json), timeout=timeout)

    def get(self, url: str, headers: dict[str, str] | None = None, timeout: Any = None, **_tls: Any) -> _Reply:
        """GET ``url``."""
        return self.request("GET", url, headers=headers, timeout=timeout)

    def put(self, url: str, data: Any = None, headers: dict[str, str] | None = None, timeout: Any = None, **_tls: Any) -> _Reply:
        """PUT ``data`` to ``url``."""
        return self.request("PUT", url, headers=headers, data=data, timeout=timeout)

    def delete(self, url: str, data: Any = None, headers: dict[str, str] | None = None, timeout: Any = None, **_tls: Any) -> _Reply:
        """DELETE ``url``."""
        return self.request("DELETE", url, headers=headers, data=data, timeout=timeout)

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, data: Any = None, timeout: Any = None) -> _Reply:
        """Send one request (``data``: bytes or text) and read its reply.
        (``verify``/``cert``, which the clients pass along, mean nothing
        over plain HTTP, the only scheme these sessions are given.)"""
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "localhost", parts.port or 80)
        conn = self._conn
        if conn is not None and (host != self._host or conn.sock is None or closed_by_peer(conn.sock)):
            conn.close()  # nothing was sent on it: safe to send on a new one
            conn = self._conn = None
        if conn is None:
            conn = self._connect(host, connect_timeout, read_timeout)
        body = data.encode("utf-8") if isinstance(data, str) else data
        sent = {**self.headers, **headers} if headers else self.headers
        if method == "POST":
            sent = {"Content-Type": "application/json", **sent}
        path = parts.path + ("?" + parts.query if parts.query else "")
        try:
            conn.send(method, path, sent, body)
            response = conn.receive(method)
        except TimeoutError as exc:
            self.close()
            raise requests.exceptions.ReadTimeout(f"{host[0]}:{host[1]}: read timed out ({exc})") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise requests.exceptions.ConnectionError(f"{host[0]}:{host[1]}: connection broken: {type(exc).__name__}: {exc}") from exc
        if response.will_close:
            self.close()
        return _Reply(response.status, response.reason, response.body, response.headers)

    def _connect(self, host: tuple[str, int], connect_timeout: float | None, read_timeout: float | None) -> HttpConnection:
        try:
            conn = HttpConnection(host[0], host[1], connect_timeout=connect_timeout, timeout=read_timeout)
        except TimeoutError as exc:
            raise requests.exceptions.ConnectTimeout(f"{host[0]}:{host[1]}: connect timed out ({exc})") from exc
        except OSError as exc:
            raise requests.exceptions.ConnectionError(f"{host[0]}:{host[1]}: {CONNECT_FAILED}: {exc}") from exc
        self._conn, self._host = conn, host
        return conn

    def close(self) -> None:
        """Close the connection (the next request makes a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")
