"""The library's own cursors: tuple rows and server-side binding on every statement it runs,
whatever ``row_factory`` and ``cursor_factory`` the caller's connection has (``dict_row`` in
many applications, ``ClientCursor`` in Django's backend)."""

from __future__ import annotations

from typing import Any, Union

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import TupleRow, tuple_row

__all__ = ["acursor", "aexecute", "cursor", "execute"]

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
) -> psycopg.Cursor[TupleRow]:
    """``conn.execute`` on a cursor of :func:`cursor`'s kind."""
    return psycopg.Cursor(conn, row_factory=tuple_row).execute(query, params, prepare=prepare)


def acursor(conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[TupleRow]:
    """A server-binding cursor on `conn` that returns tuples."""
    return psycopg.AsyncCursor(conn, row_factory=tuple_row)


async def aexecute(
    conn: psycopg.AsyncConnection[Any],
    query: Query,
    params: Params | None = None,
    *,
    prepare: bool | None = None,
) -> psycopg.AsyncCursor[TupleRow]:
    """``await conn.execute`` on a cursor of :func:`acursor`'s kind."""
    cur = psycopg.AsyncCursor(conn, row_factory=tuple_row)
    return await cur.execute(query, params, prepare=prepare)
