"""Commands on one redis-py connection, without the client's per-command machinery.

``redis.Redis.execute_command`` checks a connection out of the pool and back
in, wraps the call in a retry helper and (redis-py 8) records observability
metrics, for every command: on a session actor serving requests one at a
time that was about half of its CPU per request.  A session serves one
request at a time, so it keeps one connection of its client's pool for
itself and talks to it directly: the connection still does the socket, the
handshake (auth, db, TLS, Sentinel's master lookup) and the RESP parsing.

No response callbacks run: replies come as the server sent them (with
``decode_responses``, bulk strings as ``str``), which is what Lua scripts'
replies are anyway.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
import redis.exceptions

__all__ = ["Script", "Wire"]


class Script:
    """A Lua script known by its SHA1, loaded on first NOSCRIPT."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


class Wire:
    """One connection taken from ``client``'s pool for the session's own use."""

    __slots__ = ("connection",)

    def __init__(self, client: redis.Redis) -> None:
        self.connection = client.connection_pool.get_connection()

    def call(self, *args: Any) -> Any:
        """Send one command and return its reply (an error reply raises ``ResponseError``)."""
        connection = self.connection
        connection.send_packed_command(connection.pack_command(*args), check_health=False)
        return connection.read_response()

    def many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies in order;
        an error reply is returned as its ``ResponseError``, not raised."""
        connection = self.connection
        connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        replies: list[Any] = []
        for _command in commands:
            try:
                replies.append(connection.read_response())
            except redis.exceptions.ResponseError as exc:
                replies.append(exc)
        return replies

    def evalsha(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run ``script`` (loading it first if the server does not have it)."""
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.call("SCRIPT", "LOAD", script.source)
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Close the connection (the pool's ``disconnect`` would too)."""
        self.connection.disconnect()
