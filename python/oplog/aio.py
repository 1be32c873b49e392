"""The asyncio API: :class:`AsyncOplog` and :func:`run_in_transaction` on
``psycopg.AsyncConnection``, with the semantics of their synchronous twins.

Encoding, encryption and the statements are shared with :class:`oplog.Oplog`; only the waiting
differs. Replay and the lower-level pieces (Writer, Ticketer, Entry) are synchronous only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

import psycopg

from oplog import pgarray
from oplog.entry import WRITE_ENTRY, Entry
from oplog.errors import TicketConflictError
from oplog.log import (
    _WRITE_ENTRY_ALONE,
    READ_METADATA,
    READ_PAGE,
    WRITE_MANY,
    BatchItem,
    OplogBase,
    _invisible_ticket,
    _Pages,
    _written,
)
from oplog.operation import Operation
from oplog.tail import (
    SNAPSHOT,
    TAIL_METADATA,
    TAIL_PAGE,
    Checkpoint,
    _Cursor,
    _listen,
    check_tail_arguments,
    needs_migration_2,
)
from oplog.ticket import INIT_TICKET, conflicts_as_ticket_errors
from oplog.transaction import backoff_seconds, check_retry_arguments

__all__ = ["AsyncOplog", "run_in_transaction"]

T = TypeVar("T")


class AsyncOplog(OplogBase):
    """:class:`oplog.Oplog` for ``psycopg.AsyncConnection``: the same arguments, the same
    statements, the same errors."""

    async def _redeem_and_write(
        self,
        conn: psycopg.AsyncConnection[Any],
        entry: Entry,
        query: str | bytes,
        params: Any,
        ticket: str,
    ) -> Entry:
        """See ``Oplog._redeem_and_write``."""
        for first in (True, False):
            with conflicts_as_ticket_errors(f"write entry for {entry.aggregate_name!r}"):
                row = await (await conn.execute(query, params)).fetchone()
            if row is not None:
                return _written(entry, row)
            if first:
                with conflicts_as_ticket_errors(f"init ticket {ticket!r}"):
                    await conn.execute(INIT_TICKET, (ticket,))
        raise _invisible_ticket(entry.aggregate_name)

    async def write(
        self,
        conn: psycopg.AsyncConnection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None = None,
    ) -> Entry:
        """Writes one entry in the caller's transaction; see :meth:`oplog.Oplog.write`."""
        entry, params = self._prepare_write(aggregate_name, operations, metadata)
        query = WRITE_ENTRY if params["keys"] else _WRITE_ENTRY_ALONE
        return await self._redeem_and_write(conn, entry, query, params, params["ticket"])

    async def apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None = None,
    ) -> Entry:
        """Performs the operations and writes their entry in one statement; see
        :meth:`oplog.Oplog.apply`."""
        entry, query, params = self._prepare_apply(conn, aggregate_name, operations, metadata)
        return await self._redeem_and_write(conn, entry, query, params, params[0])

    async def write_many(
        self, conn: psycopg.AsyncConnection[Any], items: Iterable[BatchItem]
    ) -> list[int]:
        """Writes a batch of entries in one round trip; see :meth:`oplog.Oplog.write_many`."""
        params = self._prepare_batch(items)
        if params is None:
            return []
        pgarray.register(conn)
        for first in (True, False):
            with conflicts_as_ticket_errors("write a batch of entries"):
                rows = await (await conn.execute(WRITE_MANY, params)).fetchall()
            if rows:
                return [int(row[0]) for row in rows]
            if first:
                with conflicts_as_ticket_errors("init the batch's tickets"):
                    for name in params["tickets"]:
                        await conn.execute(INIT_TICKET, (name,))
        raise _invisible_ticket(", ".join(params["tickets"]))

    async def read(
        self,
        conn: psycopg.AsyncConnection[Any],
        aggregate_name: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[Entry]:
        """Yields entries in id order, decrypted; see :meth:`oplog.Oplog.read`."""
        pages = _Pages(aggregate_name, after_id, limit)
        while (params := pages.next_query()) is not None:
            rows = await (await conn.execute(READ_PAGE, params)).fetchall()
            ids = [row[0] for row in rows]
            metadata = await (await conn.execute(READ_METADATA, (ids,))).fetchall() if ids else []
            for entry in pages.entries(rows, metadata, self.wrapper):
                yield entry

    async def tail(
        self,
        conn: psycopg.AsyncConnection[Any],
        after: Checkpoint | str | None = None,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channel: str | None = None,
        stop: asyncio.Event | None = None,
        follow: bool = True,
    ) -> AsyncGenerator[tuple[Entry, Checkpoint], None]:
        """Yields every committed entry after `after` exactly once, with the checkpoint after
        it, then waits for more; see :meth:`oplog.Oplog.tail`. `stop` is an asyncio.Event."""
        check_tail_arguments(conn, batch_size, poll_interval, channel)
        cursor = _Cursor(Checkpoint.of(after), batch_size)
        if channel is not None:
            await conn.execute(_listen(channel))
            if not conn.autocommit:
                await conn.commit()
        while stop is None or not stop.is_set():
            if cursor.needs_snapshot:
                row = await (await conn.execute(SNAPSHOT)).fetchone()
                assert row is not None
                cursor.begin(row[0])
            with needs_migration_2():
                page = await conn.execute(TAIL_PAGE, cursor.params(), prepare=False)
            rows = await page.fetchall()
            ids = [row[0] for row in rows]
            metadata = await (await conn.execute(TAIL_METADATA, (ids,))).fetchall() if ids else []
            if not conn.autocommit:
                await conn.commit()
            for item in cursor.page(rows, metadata, self.wrapper):
                yield item
            if cursor.caught_up:
                if not follow:
                    return
                await _wait(conn, channel, poll_interval, stop)


async def _wait(
    conn: psycopg.AsyncConnection[Any],
    channel: str | None,
    seconds: float,
    stop: asyncio.Event | None,
) -> None:
    """Waits up to `seconds` for a notification on `channel` (if any), or for `stop`."""
    waits: list[asyncio.Task[Any]] = []
    if channel is not None:
        waits.append(asyncio.ensure_future(_notified(conn)))
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    if not waits:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _notified(conn: psycopg.AsyncConnection[Any]) -> None:
    async for _ in conn.notifies(stop_after=1):
        return


async def run_in_transaction(
    conn: psycopg.AsyncConnection[Any],
    fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    *,
    retries: int = 10,
    backoff: float = 0.005,
    max_backoff: float = 0.5,
    on_retry: Callable[[int, TicketConflictError], None] | None = None,
) -> T:
    """Awaits ``fn(conn)`` in a transaction and commits, retrying on TicketConflictError only;
    see :func:`oplog.run_in_transaction`."""
    check_retry_arguments(conn, retries, backoff, max_backoff)
    attempt = 0
    while True:
        try:
            async with conn.transaction():
                return await fn(conn)
        except TicketConflictError as conflict:
            attempt += 1
            if attempt > retries:
                raise
            if on_retry is not None:
                on_retry(attempt, conflict)
            await asyncio.sleep(backoff_seconds(attempt, backoff, max_backoff))
