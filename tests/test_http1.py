"""The minimal HTTP/1.1 connection etcd v2's session talks through, against canned replies.

etcd's own tests drive it against the real server; these cover the reply
shapes etcd does not send every run: chunked bodies with extensions and
trailers, interim replies, a connection closed by the server, garbage.
"""

from __future__ import annotations

import http.client
import socket
import threading
from typing import Iterator

import pytest

from coordactors.backend_actors._http1 import HttpConnection


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """A one-connection server: answers each request with the next canned reply; records what it got."""
    listener = socket.create_server(("127.0.0.1", 0))
    replies: list[bytes] = []
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            buffer = b""
            while replies:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                received.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                reply = replies.pop(0)
                if reply == b"CLOSE":
                    return
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], replies, received
    finally:
        listener.close()
        thread.join(10)


def _connect(port: int) -> HttpConnection:
    return HttpConnection("127.0.0.1", port, connect_timeout=5, timeout=5)


def test_requests_are_written_with_length_and_headers_and_replies_read_in_order(server):
    port, replies, received = server
    replies += [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Etcd-Index: 7\r\n\r\n{}",
                b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello"]
    conn = _connect(port)
    conn.send("PUT", "/v2/keys/a?x=1", {"Content-Type": "application/x-www-form-urlencoded"}, b"value=1")
    conn.send("GET", "/v2/keys/a", {})  # sent before the first reply is read
    first, second = conn.receive("PUT"), conn.receive("GET")
    assert (first.status, first.headers["x-etcd-index"], first.body, first.will_close) == (200, "7", b"{}", False)
    assert (second.status, second.body) == (201, b"hello")
    assert received[0].startswith(b"PUT /v2/keys/a?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"Content-Length: 7\r\n" in received[0] and received[0].endswith(b"\r\n\r\nvalue=1")
    assert b"Content-Length" not in received[1]
    conn.close()


def test_a_chunked_body_with_extensions_and_trailers_after_an_interim_reply(server):
    port, replies, _ = server
    replies.append(b"HTTP/1.1 100 Continue\r\n\r\n"
                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"4;ext=1\r\n{\"a\"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\nTrailer: x\r\n\r\n")
    conn = _connect(port)
    conn.send("GET", "/", {})
    reply = conn.receive()
    assert (reply.status, reply.body, reply.will_close) == (200, b'{"a": 1}', False)
    conn.close()


def test_a_body_to_the_close_and_connection_close_mark_the_connection_done(server):
    port, replies, _ = server
    replies.append(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    conn = _connect(port)
    conn.send("GET", "/", {})
    assert conn.receive().will_close
    conn.close()


def test_a_server_that_closes_or_answers_garbage_raises_what_http_client_would(server):
    port, replies, _ = server
    replies += [b"SPDY/3 what\r\n\r\n", b"CLOSE"]
    conn = _connect(port)
    conn.send("GET", "/", {})
    with pytest.raises(http.client.HTTPException, match="not an HTTP/1.x reply"):
        conn.receive()
    conn.send("GET", "/", {})
    with pytest.raises(ConnectionError, match="closed the connection"):
        conn.receive()
    conn.close()
    with pytest.raises(ConnectionError, match="closed"):
        conn.send("GET", "/", {})


def test_an_ipv6_host_is_bracketed_in_the_host_header():
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener:
        port = listener.getsockname()[1]
        for host in ("::1", "[::1]"):
            conn = HttpConnection(host, port, connect_timeout=5, timeout=5)
            assert conn.host == f"[::1]:{port}"
            conn.close()
