"""The library's own cursors: tuple rows and server-side binding on every statement it runs,
whatever ``row_factory`` and ``cursor_factory`` the caller's connection has (``dict_row`` in
many applications, ``ClientCursor`` in Django's backend).
"""

from __future__ import annotations

from typing import Any, Union

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import TupleRow, tuple_row

__all__ = [
    "acursor",
    "aexecute",
    "aexecute_in_order",
    "asend_in_order",
    "cursor",
    "execute",
    "execute_in_order",
    "send_in_order",
]

Query = Union[str, bytes, sql.SQL, sql.Composed]


def cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[TupleRow]:
    """A server-binding cursor on `conn` that returns tuples."""
    return psycopg.Cursor(conn, row_factory=tuple_row)


def execute(
    conn: psycopg.Connection[Any],
    query: Query,
    params: Params | None = None,
    *,
    prepare: bool | None = None,
    binary: bool = False,
) -> psycopg.Cursor[TupleRow]:
    """``conn.execute`` on a cursor of :func:`cursor`'s kind; with `binary`, the rows come in
    binary (a page of entries: their blobs as bytes, not hex to decode)."""
    cur = psycopg.Cursor(conn, row_factory=tuple_row)
    return cur.execute(query, params, prepare=prepare, binary=binary)


def execute_in_order(
    conn: psycopg.Connection[Any], query: str, params: Params
) -> psycopg.Cursor[TupleRow]:
    """Runs a select whose ``order by`` an index walk gives, with the planner's sorts disabled
    for it: a planner without statistics may otherwise read and sort everything the ``where``
    admits to return a few rows. The setting (:data:`_NO_SORT`) and the select go in one
    pipeline, in one round trip and one transaction: on an autocommit connection the implicit
    one of the statements up to the pipeline's sync, which the setting does not outlive; inside
    the caller's transaction, the setting lasts until that ends. The rows come in binary."""
    with conn.pipeline():
        cur = send_in_order(conn, query, params)
    return cur


def send_in_order(
    conn: psycopg.Connection[Any], query: str, params: Params
) -> psycopg.Cursor[TupleRow]:
    """:func:`execute_in_order`'s statements, sent in the caller's pipeline: the rows are
    read once the caller syncs it (or fetches them)."""
    execute(conn, _NO_SORT)
    return execute(conn, query, params, prepare=False, binary=True)


# A local setting without SET LOCAL, which warns (in the server's log too) when it is not in
# an explicit transaction, though the pipeline's implicit one keeps it for the select after it.
_NO_SORT = "select set_config('enable_sort', 'off', true)"


def acursor(conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[TupleRow]:
    """A server-binding cursor on `conn` that returns tuples."""
    return psycopg.AsyncCursor(conn, row_factory=tuple_row)


async def aexecute(
    conn: psycopg.AsyncConnection[Any],
    query: Query,
    params: Params | None = None,
    *,
    prepare: bool | None = None,
    binary: bool = False,
) -> psycopg.AsyncCursor[TupleRow]:
    """``await conn.execute`` on a cursor of :func:`acursor`'s kind (see :func:`execute`)."""
    cur = psycopg.AsyncCursor(conn, row_factory=tuple_row)
    return await cur.execute(query, params, prepare=prepare, binary=binary)


async def aexecute_in_order(
    conn: psycopg.AsyncConnection[Any], query: str, params: Params
) -> psycopg.AsyncCursor[TupleRow]:
    """See :func:`execute_in_order`."""
    async with conn.pipeline():
        cur = await asend_in_order(conn, query, params)
    return cur


async def asend_in_order(
    conn: psycopg.AsyncConnection[Any], query: str, params: Params
) -> psycopg.AsyncCursor[TupleRow]:
    """See :func:`send_in_order`."""
    await aexecute(conn, _NO_SORT)
    return await aexecute(conn, query, params, prepare=False, binary=True)
