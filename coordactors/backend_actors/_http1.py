"""A minimal HTTP/1.1 client connection, for etcd's v2 keys API and v3 gateway.

``http.client`` parses every reply's headers with the ``email`` package:
a fifth of the Python time of an etcd v2 request went there.  This
connection writes requests by hand and parses replies from its own buffer
(status line, headers, a ``Content-Length`` or chunked body), which also
lets a caller send requests on several connections before reading any
reply (see ``EtcdSession._at_once``) -- without a thread per connection.

Errors are those ``http.client`` raises: ``OSError`` for the socket
(``ConnectionError`` when the server closed it), ``http.client.HTTPException``
for a reply that is not HTTP/1.x.
"""

from __future__ import annotations

import http.client
import socket

__all__ = ["HttpConnection", "Reply"]

MAX_HEAD = 65536
"""Bytes a reply's status line and headers may take."""

_NO_BODY = (204, 304)


class Reply:
    """One HTTP reply: ``status``, ``reason``, ``headers`` (lower-case names), ``body``."""

    __slots__ = ("body", "headers", "reason", "status", "will_close")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes, will_close: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.will_close = will_close
        """The server closes the connection after this reply."""


class HttpConnection:
    """One HTTP/1.1 connection to ``host:port``, kept alive between requests.

    ``send`` writes a request, ``receive`` reads the next reply; requests
    may be sent before earlier replies are read (they are answered in
    order).  ``timeout`` bounds each wait on the socket (None: no bound)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float | None, timeout: float | None) -> None:
        bare = host.strip("[]")
        self.host = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
        """The Host header's value (an IPv6 address in brackets)."""
        self.sock: socket.socket | None = socket.create_connection((bare, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self._buffer = bytearray()

    def send(self, method: str, target: str, headers: dict[str, str], body: bytes | None = None) -> None:
        """Write one request: ``target`` is the path and query, already encoded."""
        if self.sock is None:
            raise ConnectionError("the connection is closed")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if body is not None or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head + body if body else head)

    def receive(self, method: str = "GET") -> Reply:
        """Read the next reply (to a request of ``method``)."""
        while True:
            status, reason, version, headers = self._read_head()
            if not 100 <= status < 200:
                break  # an interim reply (100 Continue) is followed by the real one
        if method == "HEAD" or status in _NO_BODY:
            body, until_close = b"", False
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, until_close = self._read_chunked(), False
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise http.client.HTTPException(f"a bad Content-Length: {headers['content-length']!r}") from None
            body, until_close = self._take(length), False
        else:
            body, until_close = self._read_to_close(), True
        connection = headers.get("connection", "").lower()
        will_close = until_close or "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        return Reply(status, reason, headers, body, will_close)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    # -- reading ------------------------------------------------------------------

    def _fill(self) -> None:
        if self.sock is None:
            raise ConnectionError("the connection is closed")
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buffer += data

    def _read_head(self) -> tuple[int, str, str, dict[str, str]]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise http.client.HTTPException(f"a reply's headers took more than {MAX_HEAD} bytes")
            self._fill()
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise http.client.HTTPException(f"not an HTTP/1.x reply: {status_line[:100]!r}")
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise http.client.HTTPException(f"a malformed header line: {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return int(code), rest[4:], version, headers

    def _take(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._fill()
        data = bytes(self._buffer[:length])
        del self._buffer[:length]
        return data

    def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise http.client.HTTPException("a chunk's size line is too long")
            self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.HTTPException(f"a bad chunk size: {size_text[:20]!r}") from None
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._take(size))
            if self._take(2) != b"\r\n":
                raise http.client.HTTPException("a chunk did not end with CRLF")

    def _read_to_close(self) -> bytes:
        while True:
            try:
                self._fill()
            except ConnectionError:
                data = bytes(self._buffer)
                self._buffer.clear()
                return data
