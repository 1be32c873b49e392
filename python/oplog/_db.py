"""The library's own cursors: tuple rows and server-side binding on every statement it runs,
whatever ``row_factory`` and ``cursor_factory`` the caller's connection has (``dict_row`` in
many applications, ``ClientCursor`` in Django's backend). One exception: a select that must
not be sorted (:func:`execute_in_order`) is bound on the client, to go with its setting.
"""

from __future__ import annotations

from typing import Any, Union

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import TupleRow, tuple_row

__all__ = ["acursor", "aexecute", "aexecute_in_order", "cursor", "execute", "execute_in_order"]

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


# Run before a statement in the same query string: PostgreSQL runs the string in one transaction
# (an implicit one on an autocommit connection, which ends with it), and the setting lasts until
# that transaction ends.
_NO_SORT = b"set local enable_sort = off;\n"


def execute_in_order(
    conn: psycopg.Connection[Any], query: str, params: Params
) -> psycopg.Cursor[TupleRow]:
    """Runs a select whose ``order by`` an index walk gives, with the planner's sorts disabled
    for it: a planner without statistics may otherwise read and sort everything the ``where``
    admits to return a few rows. The parameters are bound on the client (a ``set`` and a
    select go in one query string); inside the caller's transaction the setting lasts until it
    ends."""
    cur = psycopg.ClientCursor(conn, row_factory=tuple_row)
    cur.execute(_NO_SORT + query.encode(), params)
    cur.nextset()  # past the set's result, to the select's
    return cur


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


async def aexecute_in_order(
    conn: psycopg.AsyncConnection[Any], query: str, params: Params
) -> psycopg.AsyncCursor[TupleRow]:
    """See :func:`execute_in_order`."""
    cur = psycopg.AsyncClientCursor(conn, row_factory=tuple_row)
    await cur.execute(_NO_SORT + query.encode(), params)
    cur.nextset()  # past the set's result, to the select's
    return cur
