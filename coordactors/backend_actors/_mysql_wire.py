"""Queries pipelined on one PyMySQL connection: sent now, answered later.

A MySQL server reads a connection's commands one after another and answers
each in full before it reads the next, so a client may send a second query
before it has read the first one's answer and read both answers in order
afterwards.  PyMySQL only does one at a time: ``Connection.query`` sends,
then reads (and before sending, reads whatever a previous query left).  The
two halves here use PyMySQL's own packet writer and result reader
(``_write_bytes``, ``MySQLResult``); what they rely on -- a command's answer
packets are numbered from 1, the reader checks that numbering -- is the
protocol's, not PyMySQL's choice.

Nothing else may use the connection while an answer is due on it.
"""

from __future__ import annotations

import struct
from typing import Any

from pymysql.connections import MAX_PACKET_LEN, MySQLResult  # type: ignore[import-untyped]
from pymysql.constants import COMMAND  # type: ignore[import-untyped]

__all__ = ["read_answers", "send_query"]


def send_query(conn: Any, sql: str) -> None:
    """Send ``sql`` (one packet's worth) as a query, without reading anything."""
    data = sql.encode(conn.encoding)
    if len(data) + 1 >= MAX_PACKET_LEN:
        raise ValueError(f"a pipelined query must fit one packet ({len(data)} bytes)")
    conn._write_bytes(struct.pack("<iB", len(data) + 1, COMMAND.COM_QUERY) + data)  # noqa: SLF001


def read_answers(conn: Any, statements: int) -> list[Any]:
    """Read the answer to the oldest query sent and not yet answered: one
    ``MySQLResult`` per statement (``rows`` for a result set).  An error
    answer raises it; the server ran none of the query's later statements,
    so the query's answer ends there."""
    conn._next_seq_id = 1  # noqa: SLF001 - an answer's packets are numbered from 1
    results = []
    for _ in range(statements):
        result = MySQLResult(conn)
        result.read()
        results.append(result)
        if not result.has_next:
            break
    if len(results) != statements or results[-1].has_next:
        conn._force_close()  # noqa: SLF001 - answers out of step with the queries: nobody may read them
        raise RuntimeError(f"expected the answers of {statements} statement(s), got {len(results)}{' and more' if results[-1].has_next else ''}")
    return results
