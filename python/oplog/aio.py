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
from oplog._db import aexecute
from oplog.entry import WRITE_ENTRY, Entry
from oplog.errors import TicketConflictError
from oplog.log import (
    _WRITE_ENTRY_ALONE,
    READ_METADATA,
    READ_PAGE,
    BatchItem,
    OplogBase,
    _Batch,
    _invisible_ticket,
    _Pages,
    _written,
    batch_block,
)
from oplog.operation import Operation
from oplog.tail import (
    LAG,
    SNAPSHOT,
    TAIL_METADATA,
    TAIL_PAGE,
    Checkpoint,
    ConsumerBase,
    Lag,
    TailPage,
    _Cursor,
    _listen,
    check_consume_connections,
    check_partition,
    check_tail_arguments,
    lag_of,
    lag_params,
    needs_migration_2,
    partition_consumer,
)
from oplog.ticket import INIT_TICKET, conflicts_as_ticket_errors
from oplog.transaction import backoff_seconds, check_retry_arguments

__all__ = ["AsyncConsumer", "AsyncOplog", "run_in_transaction"]

T = TypeVar("T")


async def _send_batch(conn: psycopg.AsyncConnection[Any], batch: _Batch) -> list[int]:
    """Sends the batch's statements; see ``oplog.log._send_batch``."""
    if not batch.chunked:
        ((query, params),) = batch.statements()
        rows = await (await aexecute(conn, query, params)).fetchall()
        return batch.check_ids([int(row[0]) for row in rows])
    block = batch_block(conn)
    try:
        async with conn.pipeline():
            await aexecute(conn, block.begin)
            cursors = [await aexecute(conn, query, params) for query, params in batch.statements()]
            ids = [int(row[0]) for c in cursors for row in await c.fetchall()]
            written = batch.check_ids(ids)
            await aexecute(conn, block.end)
        return written
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                for statement in block.undo:
                    await aexecute(conn, statement)
        raise


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
                row = await (await aexecute(conn, query, params)).fetchone()
            if row is not None:
                return _written(entry, row)
            if first:
                with conflicts_as_ticket_errors(f"init ticket {ticket!r}"):
                    await aexecute(conn, INIT_TICKET, (ticket,))
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
        batch = self._batch(items)
        if batch is None:
            return []
        pgarray.register(conn)
        with conflicts_as_ticket_errors("write a batch of entries"):
            return await _send_batch(conn, batch)

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
            rows = await (await aexecute(conn, READ_PAGE, params)).fetchall()
            ids = [row[0] for row in rows]
            metadata = await (await aexecute(conn, READ_METADATA, (ids,))).fetchall() if ids else []
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
        partition: tuple[int, int] | None = None,
    ) -> AsyncGenerator[tuple[Entry, Checkpoint], None]:
        """Yields every committed entry after `after` exactly once, with the checkpoint after
        it, then waits for more; see :meth:`oplog.Oplog.tail`. `stop` is an asyncio.Event."""
        start = Checkpoint.of(after)
        pages = self._pages(
            conn, start, batch_size, poll_interval, channel, stop, follow, partition
        )
        try:
            async for page in pages:
                for item in page:
                    yield item
        finally:
            await pages.aclose()

    async def checkpoint(self, conn: psycopg.AsyncConnection[Any]) -> Checkpoint:
        """The current end of the log; see :meth:`oplog.Oplog.checkpoint`."""
        row = await (await aexecute(conn, SNAPSHOT)).fetchone()
        assert row is not None
        return Checkpoint(row[0])

    async def _pages(
        self,
        conn: psycopg.AsyncConnection[Any],
        after: Checkpoint,
        batch_size: int,
        poll_interval: float,
        channel: str | None,
        stop: asyncio.Event | None,
        follow: bool,
        partition: tuple[int, int] | None = None,
    ) -> AsyncGenerator[TailPage, None]:
        """The pages of a tail; never yields an empty page (see ``oplog.tail.tail_pages``)."""
        check_tail_arguments(conn, batch_size, poll_interval, channel)
        cursor = _Cursor(after, batch_size, check_partition(partition))
        if channel is not None:
            await aexecute(conn, _listen(channel))
            if not conn.autocommit:
                await conn.commit()
        row = await (await aexecute(conn, SNAPSHOT)).fetchone()
        assert row is not None
        cursor.start(row[0])
        while stop is None or not stop.is_set():
            if cursor.needs_snapshot:
                row = await (await aexecute(conn, SNAPSHOT)).fetchone()
                assert row is not None
                cursor.begin(row[0])
            with needs_migration_2():
                found = await aexecute(conn, TAIL_PAGE, cursor.params(), prepare=False)
            rows = await found.fetchall()
            ids = [row[0] for row in rows]
            metadata = await (await aexecute(conn, TAIL_METADATA, (ids,))).fetchall() if ids else []
            if not conn.autocommit:
                await conn.commit()
            page = cursor.page(rows, metadata, self.wrapper)
            if page:
                yield page
            if cursor.caught_up:
                if not follow:
                    return
                await _wait(conn, channel, poll_interval, stop)

    async def consume(
        self,
        source: psycopg.AsyncConnection[Any],
        target: psycopg.AsyncConnection[Any],
        consumer: AsyncConsumer | str,
        apply: Callable[[psycopg.AsyncConnection[Any], Entry], Awaitable[object]],
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channel: str | None = None,
        stop: asyncio.Event | None = None,
        follow: bool = True,
        partition: tuple[int, int] | None = None,
        on_commit: Callable[[int, Checkpoint], object] | None = None,
    ) -> int:
        """Tails `source` and awaits ``apply(target, entry)`` for each entry, each page and the
        consumer's position committed together on `target`; see :meth:`oplog.Oplog.consume`."""
        partition = check_partition(partition)
        if partition is not None or not isinstance(consumer, AsyncConsumer):
            name = consumer.name if isinstance(consumer, AsyncConsumer) else consumer
            consumer = AsyncConsumer(partition_consumer(name, partition))
        check_consume_connections(source, target)
        async with target.transaction():
            position = await consumer.position(target)
        applied = 0
        while True:
            restart = False
            pages = self._pages(
                source, position, batch_size, poll_interval, channel, stop, follow, partition
            )
            try:
                async for page in pages:
                    async with target.transaction():
                        stored = await consumer.position(target, lock=True)
                        if stored != position:
                            # Another process running this consumer got further.
                            position, restart = stored, True
                            break
                        for entry, _ in page:
                            await apply(target, entry)
                        position = page[-1][1]
                        await consumer.save(target, position)
                    applied += len(page)
                    if on_commit is not None:
                        on_commit(len(page), position)
            finally:
                await pages.aclose()
            if not restart:
                return applied


class AsyncConsumer(ConsumerBase):
    """:class:`oplog.Consumer` on ``psycopg.AsyncConnection``: a named position in the
    ``oplog_consumer`` table, read and saved in the caller's transaction."""

    async def position(
        self, conn: psycopg.AsyncConnection[Any], *, lock: bool = False
    ) -> Checkpoint:
        """The saved checkpoint; see :meth:`oplog.Consumer.position`."""
        with needs_migration_2():
            row = await (await aexecute(conn, *self._read_statement(lock))).fetchone()
            if row is None and lock:
                await aexecute(conn, *self._create_statement())
                row = await (await aexecute(conn, *self._read_statement(lock))).fetchone()
        return Checkpoint.START if row is None else Checkpoint.parse(row[0])

    async def save(self, conn: psycopg.AsyncConnection[Any], checkpoint: Checkpoint | str) -> None:
        """Stores `checkpoint`, in the caller's transaction; see :meth:`oplog.Consumer.save`."""
        with needs_migration_2():
            await aexecute(conn, *self._save_statement(checkpoint))

    async def lag(
        self,
        source: psycopg.AsyncConnection[Any],
        target: psycopg.AsyncConnection[Any] | None = None,
    ) -> Lag:
        """Committed entries not yet applied; see :meth:`oplog.Consumer.lag`."""
        position = await self.position(source if target is None else target)
        with needs_migration_2():
            row = await (await aexecute(source, LAG, lag_params(position))).fetchone()
        return lag_of(row)


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
