"""The front door: write, read, replay, tail, consume and replicate an operation log on a
psycopg 3 connection, in the caller's transactions."""

# oplog/log.py, the sync front door, is generated from this module.  # sync: -

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar, cast

import psycopg
from psycopg.rows import tuple_row

from oplog import _sql, pgarray
from oplog._compat import ANO_BLOCK, AEvent, asleep, await_event
from oplog._db import aexecute, aexecute_in_order, asend_in_order
from oplog._dberrors import requiring_migration, ticket_conflicts
from oplog.batch import BatchItem, EntryBatch, batch_block
from oplog.chain import ChainCheck, SavedHeads, VerifyProblem, VerifyReport, copy_params
from oplog.checkpoint import (
    Checkpoint,
    TailCursor,
    TailPage,
    check_consume_connections,
    check_partition,
    check_tail_arguments,
    listen_statement,
    partition_consumer,
)
from oplog.consumer_async import AsyncConsumer
from oplog.entry import Entry, ReadPages, entries_from_rows, rows_plaintexts, time_loader
from oplog.errors import TicketConflictError
from oplog.operation import Operation
from oplog.replay_async import AsyncReplayer
from oplog.replay_plan import Plan, PreparedPage, decode_page, on_the_keys_index
from oplog.settings import OplogSettings, logger, warn_if_outside_a_transaction
from oplog.writer_async import AsyncWriter

__all__ = ["AsyncOplog"]

T = TypeVar("T")

_VERIFY_BATCH = 2000  # entries verify checks at a time
# Rows per chunk of verify's stream; one at a time with a libpq before 17 (no chunked mode).
_STREAM_CHUNK = 500 if psycopg.pq.version() >= 170000 else 1


def _written(entry: Entry, row: Sequence[Any]) -> Entry:
    entry.id, entry.create_time = int(row[0]), row[1]
    return entry


class AsyncOplog(OplogSettings):
    """Writes entries in the caller's transactions, and reads and replays them.

    Args:
        wrapper: Encrypts new entries and decrypts stored ones (a MultiWrapper for rotation).
        catalog: The message types that operations may carry.
        aggregate_names: One ticket per aggregate name (default), or one for all.
        lock: ``"optimistic"`` (default) or ``"pessimistic"`` ticket reads by :meth:`ticketer`
            (the lower-level API); :meth:`write` and :meth:`write_many` redeem in one
            statement that waits for a concurrent writer at READ COMMITTED either way.
        format_version: The queue format written, ``"v2"`` (default) or ``"v1"``.
    """

    # --- writing ------------------------------------------------------------------------------

    async def _redeem_and_write(
        self,
        conn: psycopg.AsyncConnection[Any],
        entry: Entry,
        query: str | bytes,
        params: Any,
        ticket: str,
    ) -> Entry:
        """Runs a statement that redeems `ticket` and writes `entry` (returning its id and
        create time); the first time an aggregate is seen, creates its ticket and runs it
        again (the statement changes nothing without the ticket)."""
        for first in (True, False):
            row = await _write_entry(conn, entry, query, params)
            if row is not None:
                return _written(entry, row)
            if first:
                logger.debug("creating ticket %r", ticket)
                with ticket_conflicts(f"init ticket {ticket!r}"):
                    await aexecute(conn, _sql.INIT_TICKET, (ticket,))
        raise TicketConflictError(
            f"the ticket of {entry.aggregate_name} was created by a transaction this one cannot"
            " see; retry"
        )

    async def _write_chained(
        self,
        conn: psycopg.AsyncConnection[Any],
        entry: Entry,
        query: str | bytes,
        params: Any,
        ticket: str,
        chain: Callable[[dict[str, tuple[int, bytes]]], None],
    ) -> Entry:
        """Writes a chained entry: first on the head this writer last wrote (one statement,
        which checks it); when that is unknown or stale, locks the head and writes on it
        (creating the ticket if need be). `chain(heads)` puts the entry's chain values into
        `params`."""
        name = entry.aggregate_name
        heads = self.cached_head(conn, name)
        if heads is not None:
            chain(heads)
            row = await _write_entry(conn, entry, query, params)
            if row is not None:
                self.remember_head(conn, name, heads[name])
                return _written(entry, row)
            logger.debug("the head of %r moved; locking it", name)
            self.head_was_stale(conn, name)
        async with _transaction(conn):
            heads = await _lock_heads(conn, [name])
            chain(heads)
            written = await self._redeem_and_write(conn, entry, query, params, ticket)
        self.remember_head(conn, name, heads[name])
        return written

    async def write(
        self,
        conn: psycopg.AsyncConnection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None = None,
    ) -> Entry:
        """Writes one entry in the caller's transaction, in one round trip: redeems the
        aggregate's ticket (creating it the first time), and inserts the encrypted operations
        and the metadata.

        Call it in the same transaction as the data change the operations describe, and commit
        or roll back both together; :func:`run_in_transaction` retries on conflicts. At READ
        COMMITTED a concurrent writer of the same aggregate is waited for; at REPEATABLE READ
        and SERIALIZABLE it is a conflict.

        Returns:
            The written entry (its `data` encrypted, its `id` set).

        Raises:
            InvalidParameterError: Invalid arguments; nothing is written.
            TicketConflictError: Another writer of the aggregate committed first; roll back.
        """
        entry, params = self.prepare_write(aggregate_name, operations, metadata)
        warn_if_outside_a_transaction(conn, "write")
        if self.tag_key() is None:
            query = _sql.WRITE_ENTRY_METADATA if params["keys"] else _sql.WRITE_ENTRY_ALONE
            return await self._redeem_and_write(conn, entry, query, params, params["ticket"])
        query = _sql.WRITE_CHAINED if params["keys"] else _sql.WRITE_CHAINED_ALONE

        def chain(heads: dict[str, tuple[int, bytes]]) -> None:
            self.chain_entry(heads, params)

        return await self._write_chained(conn, entry, query, params, params["ticket"], chain)

    async def apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None = None,
    ) -> Entry:
        """Performs the operations on their tables and writes their entry, in one statement:
        one round trip, and in autocommit mode one transaction, for a data change and its log.

        For rows whose primary keys the caller sets: CREATE inserts every mapped column of the
        message as given (nothing is read back), UPDATE sets the field mask and nulls the null
        paths, DELETE deletes; the row is chosen by the primary key. An UPDATE or DELETE that
        finds no row changes nothing and is still logged, and replays the same way. The parts
        of one statement do not see each other's changes, so an entry may change a row only
        once. Ticket semantics are those of :meth:`write` (the data changes happen only with
        the redeem).

        Raises:
            InvalidParameterError: Another operation type, operation options, an unset primary
                key, or a row changed twice; nothing is written.
            TicketConflictError: As for :meth:`write`.
        """
        entry, query, params, chain = self.prepare_apply(conn, aggregate_name, operations, metadata)
        if chain is None:
            return await self._redeem_and_write(conn, entry, query, params, params[0])
        # The head's check and the ticket come first in a chained apply's parameters.
        ticket = params[5]

        def fill(heads: dict[str, tuple[int, bytes]]) -> None:
            chain.fill(self, heads)

        return await self._write_chained(conn, entry, query, params, ticket, fill)

    async def write_many(
        self, conn: psycopg.AsyncConnection[Any], items: Iterable[BatchItem]
    ) -> list[int]:
        """Writes many entries in the caller's transaction in one round trip.

        Every aggregate's ticket is redeemed once for the whole batch, in name order, and
        created there if it is missing (so two batches cannot deadlock each other, with new
        tickets or existing ones). Entries get ids in input order.

        A batch of 256 entries or more is sent as a few statements in one pipeline (still one
        round trip), so that encryption overlaps the server's inserts; they run in a savepoint
        of the caller's transaction (in autocommit mode, in a transaction of their own), and if
        the batch fails part-way nothing of it remains and the caller's transaction goes on.
        Smaller batches are checked and encrypted whole before anything is sent.

        Args:
            conn: The connection whose transaction the entries join.
            items: ``(aggregate_name, operations, metadata)`` per entry; metadata may be None.

        Returns:
            The entry ids, in input order.

        Raises:
            InvalidParameterError: An item is invalid; nothing of the batch is written.
            TicketConflictError: A ticket was redeemed by a concurrent transaction this one
                cannot serialize with; roll back (nothing of the batch remains).
        """
        batch = self.prepare_batch(items)
        if batch is None:
            return []
        warn_if_outside_a_transaction(conn, "write_many")
        pgarray.register(conn)
        if batch.tag_key is None:
            with ticket_conflicts("write a batch of entries"):
                return await _send_batch(conn, batch)
        async with _transaction(conn):
            batch.heads = await _lock_heads(conn, batch.head_names)
            with ticket_conflicts("write a batch of entries"):
                ids = await _send_batch(conn, batch)
        for name, head in batch.heads.items():
            self.remember_head(conn, name, head)
        return ids

    # --- reading and replaying ----------------------------------------------------------------

    async def read(
        self,
        conn: psycopg.AsyncConnection[Any],
        aggregate_name: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[Entry]:
        """Yields entries with id > `after_id` in id order, decrypted, with their metadata.

        Reads in pages, so a long log is not held in memory at once.

        Raises:
            DecryptError: An entry does not decrypt with this log's wrapper.
        """
        pages = ReadPages(aggregate_name, after_id, limit)
        times = time_loader(conn)
        async for rows, metadata in _stored_pages(conn, pages):
            for entry in entries_from_rows(rows, metadata, self.wrapper, times):
                yield entry

    async def replay(
        self, conn: psycopg.AsyncConnection[Any], table_suffix: str = "_replay", after_id: int = 0
    ) -> int:
        """Replays entries with id > `after_id`, in order, into ``<table><table_suffix>``
        tables (created like the originals when missing), in the caller's transaction.

        Returns:
            The number of entries replayed.
        """
        replayer = AsyncReplayer(AsyncWriter(conn, self.catalog), table_suffix)
        catalog, wrapper = self.catalog, self.wrapper
        stored = _stored_pages(conn, ReadPages(None, after_id, None), operations_only=True)
        count = 0
        # A page at a time, set-based: as few statements as the operations' order allows. The
        # next page is read before this one is sent, and decrypted, decoded and planned while
        # the server applies this one (one connection: its statements queue behind the page's).

        async def prepare(rows: tuple[list[Any], list[Any]] | None) -> PreparedPage | None:
            if rows is None:
                return None
            # The operations of the rows, without entries, which nothing here reads.
            stored, _ = rows
            datas = rows_plaintexts(stored, wrapper)
            operations = decode_page(stored, datas, catalog)
            return await replayer._prepare(operations, len(stored))

        # Each page's statements run on the keys' index (see on_the_keys_index).
        (scans,) = await (await aexecute(conn, _sql.SEQSCAN_SETTING)).fetchone() or ("on",)
        page = await prepare(await _anext_or_none(stored))
        while page is not None:
            ahead = Ahead(functools.partial(prepare, await _anext_or_none(stored)))
            await replayer._send(on_the_keys_index(page, scans), ahead.run)
            count += page.entries
            page = await ahead.get()
        return count

    # --- following ----------------------------------------------------------------------------

    async def verify(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        saved_heads: str | os.PathLike[str] | None = None,
        require_chain: bool = False,
        contents: bool = True,
        on_entry: Callable[[], object] | None = None,
    ) -> VerifyReport:
        """Checks every stored entry: that it decrypts and decodes (with the log's catalog;
        with an empty one, its envelopes only), that it is no copy of another, and that every
        aggregate's chain is whole, in order and ends at its head (:mod:`oplog.chain`).

        Reads in a transaction of its own on an autocommit connection, else in the caller's
        (which it leaves open). Heads are read before the entries, so entries committed
        meanwhile do not count as tampering.

        Args:
            saved_heads: A file written by :meth:`save_heads`: every chain must still reach
                the heads it holds (catches the newest entries deleted with their heads).
            require_chain: Report entries without a tag as problems (else only counted).
            contents: Also decrypt and decode every entry. Without, only the tags, chains,
                heads and copies are checked: about twice as fast, and a changed chained entry
                is still found by its tag, but an unchained one goes unchecked.
            on_entry: Called after each entry (for progress).

        Returns:
            The report; ``report.ok`` when nothing was found wrong.

        Raises:
            OplogError: `saved_heads` cannot be read or its signature does not match.
            SchemaError: The database lacks migration 5.
        """
        saved = None if saved_heads is None else SavedHeads.load(saved_heads, self.wrapper)
        async with _transaction(conn):
            with requiring_migration(5):
                rows = await (await aexecute(conn, _sql.HEADS)).fetchall()
            heads = {name: (int(seq), bytes(tag)) for name, seq, tag in rows}
            check = ChainCheck(self.wrapper, heads, saved, require_chain=require_chain)
            # Streamed: the server sends rows while the client checks the ones before.
            cursor = psycopg.AsyncCursor(conn, row_factory=tuple_row)
            batch: list[Any] = []
            async for row in cursor.stream(_sql.VERIFY_ENTRIES, size=_STREAM_CHUNK):
                batch.append(row)
                if len(batch) == _VERIFY_BATCH:
                    self._verify_rows(check, batch, contents, on_entry)
                    batch = []
            self._verify_rows(check, batch, contents, on_entry)
        return check.finish()

    def _verify_rows(
        self,
        check: ChainCheck,
        rows: list[Any],
        contents: bool,
        on_entry: Callable[[], object] | None,
    ) -> None:
        """Feeds a batch of VERIFY_ENTRIES rows to `check`, one aggregate's run at a time,
        decrypting and decoding each entry."""
        start = 0
        digests: dict[int, bytes] = {}
        for index, row in enumerate(rows):
            id_, data = row[0], bytes(row[3])
            check.blob(id_, data)
            problem = self.check_entry(data) if contents else None
            if problem is not None:
                kind, sentence = problem
                check.report.problems.append(
                    VerifyProblem(kind, id_, row[1], f"entry {id_} {sentence}")
                )
            if row[6] is not None:
                digests[id_] = check.metadata_digest(row[6], row[7])
            if on_entry is not None:
                on_entry()
            if index + 1 == len(rows) or rows[index + 1][1] != row[1]:
                run = [(r[0], r[2], r[3], r[4], r[5]) for r in rows[start : index + 1]]
                check.aggregate(row[1], run, digests)
                start = index + 1

    async def save_heads(
        self, conn: psycopg.AsyncConnection[Any], path: str | os.PathLike[str]
    ) -> VerifyReport:
        """Verifies the log and, when it is clean, writes every aggregate's head to `path`,
        signed with the log's key (:class:`oplog.chain.SavedHeads`): keep it outside the
        database and pass it to a later :meth:`verify` as `saved_heads`.

        Returns:
            The verification's report; nothing is written unless ``report.ok``.
        """
        report = await self.verify(conn)
        if report.ok:
            SavedHeads.save(path, self.wrapper, report.heads)
        return report

    async def checkpoint(self, conn: psycopg.AsyncConnection[Any]) -> Checkpoint:
        """The current end of the log: a tail from here delivers only entries of transactions
        that commit later (also those already running)."""
        row = await (await aexecute(conn, _sql.SNAPSHOT)).fetchone()
        assert row is not None
        return Checkpoint(row[0])

    async def tail(
        self,
        conn: psycopg.AsyncConnection[Any],
        after: Checkpoint | str | None = None,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channel: str | None = None,
        stop: AEvent | None = None,
        follow: bool = True,
        partition: tuple[int, int] | None = None,
    ) -> AsyncGenerator[tuple[Entry, Checkpoint], None]:
        """Yields every committed entry after checkpoint `after` exactly once, as
        ``(entry, checkpoint after it)``, in an order that keeps each aggregate's entries in
        ticket order; then waits for more (see :mod:`oplog.checkpoint` for how).

        Entries of a transaction still running are delivered once it commits (and never if it
        rolls back); a long transaction delays only its own entries.

        Args:
            conn: A connection of the tail's own, outside any transaction; each poll is one
                short transaction on it.
            after: Where to start: a checkpoint (or its text form) a previous tail yielded;
                None (default) starts before the first entry.
            batch_size: Entries read per query.
            poll_interval: Seconds to wait after a poll that found nothing new.
            channel: Also LISTEN on this channel and poll as soon as a notification arrives
                (writers then ``NOTIFY`` it; PostgreSQL serializes the commits of notifying
                transactions, so that is a latency-for-throughput choice).
            stop: Ends the tail when set, also while it waits.
            follow: False ends the tail as soon as it has caught up.
            partition: ``(k, n)``: only the entries of aggregates in partition k of n
                (:func:`oplog.partition_of`); checkpoints then count only those.

        Raises:
            InvalidParameterError: Bad arguments, or `conn` is inside a transaction.
            DecryptError: An entry does not decrypt with this log's wrapper.
        """
        pages = self._pages(
            conn, Checkpoint.of(after), batch_size, poll_interval, channel, stop, follow, partition
        )
        try:
            async for page in pages:
                for item in page:
                    yield item
        finally:
            await pages.aclose()

    async def _pages(
        self,
        conn: psycopg.AsyncConnection[Any],
        after: Checkpoint,
        batch_size: int,
        poll_interval: float,
        channel: str | None,
        stop: AEvent | None,
        follow: bool,
        partition: tuple[int, int] | None,
        idle_pages: bool = False,
        operations_only: bool = False,
    ) -> AsyncGenerator[TailPage, None]:
        """The pages of a tail (see :meth:`tail`). An empty page only with `idle_pages`: it
        says that the tail has caught up and will wait for new entries when resumed (so that
        a consumer reading ahead does not wait inside its transaction). With `operations_only`,
        the entries' times and metadata are not read (None and empty: for entries that are
        only applied)."""
        check_tail_arguments(conn, batch_size, poll_interval, channel)
        cursor = TailCursor(after, batch_size, check_partition(partition))
        if channel is not None:
            await aexecute(conn, listen_statement(channel))
            await _end_read(conn)
        cursor.start(await _snapshot(conn))
        times = None if operations_only else time_loader(conn)
        timed = not operations_only
        # With `operations_only` (the tail is oplog's own, on a connection nothing else uses
        # meanwhile), the next page of a poll is asked for before a page is given, in a
        # pipeline left open until then: the source server reads it while the consumer applies
        # the page.
        sent = contextlib.AsyncExitStack()
        asked: psycopg.AsyncCursor[Any] | None = None
        asking = False
        try:
            while stop is None or not stop.is_set():
                if cursor.needs_snapshot:
                    cursor.begin(await _snapshot(conn))
                with requiring_migration(2):
                    continued = cursor.position.after_id > 0
                    if asked is not None:
                        await sent.aclose()  # syncs: the rows asked for are in
                        found, asked, asking = asked, None, False
                    elif continued:
                        # The poll goes on: walk the primary key from the last page's end (see
                        # _sql.TAIL_PAGE_CONTINUED).
                        found = await aexecute_in_order(
                            conn, _sql.TAIL_PAGE_CONTINUED[timed], cursor.params()
                        )
                    else:
                        found = await aexecute(
                            conn, _sql.TAIL_PAGE[timed], cursor.params(), prepare=False,
                            binary=True,
                        )  # fmt: skip
                    rows = await found.fetchall()
                if continued:
                    await _end_read(conn)  # ends the no-sort setting before the metadata is read
                metadata = (
                    [] if operations_only else await _metadata(conn, [row[0] for row in rows])
                )
                await _end_read(conn)
                if operations_only:
                    page = cursor.page_to_apply(rows, self.wrapper)
                else:
                    page = cursor.page(rows, metadata, self.wrapper, times)
                if page and operations_only and not cursor.needs_snapshot:
                    asking = True
                    await sent.enter_async_context(conn.pipeline())
                    asked = await asend_in_order(
                        conn, _sql.TAIL_PAGE_CONTINUED[timed], cursor.params()
                    )
                if page:
                    yield page
                if cursor.caught_up:
                    if not follow:
                        return
                    if idle_pages:
                        yield cursor.idle()
                    await _wait(conn, channel, poll_interval, stop)
        finally:
            if asking:
                # A page asked for and not read (the consumer stopped): its pipeline is
                # synced, and its read ended (outside autocommit, its transaction).
                with contextlib.suppress(psycopg.Error):
                    await sent.aclose()
                    await _end_read(conn)

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
        stop: AEvent | None = None,
        follow: bool = True,
        on_commit: Callable[[int, Checkpoint], object] | None = None,
        partition: tuple[int, int] | None = None,
        synchronous_commit: bool = True,
    ) -> int:
        """Tails the log on `source` from the consumer's saved position and calls
        ``apply(target, entry)`` for each entry; every page of entries is applied and the
        consumer's position (in `target`'s ``oplog_consumer`` table) advanced in one
        transaction on `target`. Each entry is applied exactly once across crashes and
        restarts, also with several processes running the same consumer.

        `source` and `target` may be two connections to the same database. Arguments as in
        :meth:`tail`; `on_commit(entries, checkpoint)` is called after each committed page.

        With `partition` ``(k, n)`` this process applies only the entries of aggregates in
        partition k of n (:func:`oplog.partition_of`), under its own position
        (``<consumer>/k-of-n``): n processes, one per partition, share the work. Each
        aggregate's entries stay in order; entries of different aggregates may be applied in
        another order than they committed.

        With `synchronous_commit` False, a page's commit on `target` does not wait for its WAL
        to reach the disk (``SET LOCAL synchronous_commit = off``, the default of
        PostgreSQL's own subscriptions). A crash of `target`'s server may then undo the last
        pages committed, together with the position that records them; they are applied
        again from `source`, so nothing is lost or applied twice, but `on_commit` may have
        reported them, and any effect of `apply` outside `target` happens again. True (the
        default) leaves the session's setting.

        Returns:
            The number of entries applied (when `follow` is False or `stop` is set).
        """

        async def apply_page(
            conn: psycopg.AsyncConnection[Any], page: TailPage, _: Ahead[TailPage | None]
        ) -> None:
            for entry in page.entries:
                await apply(conn, entry)

        return await self._consume(
            source, target, _consumer(consumer, partition), apply_page, batch_size,
            poll_interval, channel, stop, follow, on_commit, partition, synchronous_commit, False,
            False,
        )  # fmt: skip

    async def replicate(
        self,
        source: psycopg.AsyncConnection[Any],
        target: psycopg.AsyncConnection[Any],
        consumer: AsyncConsumer | str = "replica",
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channel: str | None = None,
        stop: AEvent | None = None,
        follow: bool = True,
        on_commit: Callable[[int, Checkpoint], object] | None = None,
        partition: tuple[int, int] | None = None,
        copy_log: bool = False,
        synchronous_commit: bool = False,
    ) -> int:
        """Applies every entry of the log on `source` to the same tables on `target` (replay
        without a suffix), exactly once and in commit order: :meth:`consume` with a replaying
        `apply`, a page at a time and set-based. `target` needs oplog's tables
        (:func:`oplog.migrate`) and the replicated tables. Options as in :meth:`consume`.

        With `copy_log`, the entries themselves are copied too, in the same transaction: their
        blobs, key ids, metadata and chain values as the source stores them, and each
        aggregate's head, so that :meth:`verify` on `target` checks the replica's log as it
        would the source's (ids and times are the replica's own). The replica's log is then
        for verifying: write nothing else into its aggregates.

        A page's commit does not wait for the disk unless `synchronous_commit` is True (see
        :meth:`consume`): as with PostgreSQL's subscriptions, pages a crash of `target`'s
        server undoes are replicated again.

        Returns:
            The number of entries applied (when `follow` is False or `stop` is set).
        """
        catalog = self.catalog
        replayer = AsyncReplayer(AsyncWriter(target, catalog), "")
        # The next page, and its statements (or its plan, when they need I/O on the target;
        # or why it has neither), made ahead.
        ahead: list[tuple[TailPage, PreparedPage | Plan | Exception]] = []

        def plan(page: TailPage) -> Plan:
            return replayer._plan(page.operations(catalog))

        async def read_ahead(following: Ahead[TailPage | None]) -> None:
            # While the target runs this page's statements: the next page is read from the
            # source, decoded, planned and, when that needs no I/O on the target (its tables'
            # traits known), composed. What fails is raised when that page is applied, in its
            # own transaction, as if it had failed there.
            await following.run()
            page = following.result()
            if page:
                try:
                    planned = plan(page)
                    ahead.append((page, replayer._finish_ahead(planned, len(page)) or planned))
                except Exception as exc:
                    ahead.append((page, exc))

        async def replay(
            conn: psycopg.AsyncConnection[Any],
            page: TailPage,
            following: Ahead[TailPage | None],
        ) -> None:
            # The page at once, set-based (see AsyncReplayer.apply_many); `conn` is `target`.
            made = None
            if ahead:
                ((ahead_of, made),) = ahead
                ahead.clear()
                if ahead_of is not page:  # read by a run that ended (another got further)
                    made = None
            if isinstance(made, Exception):
                raise made
            if isinstance(made, PreparedPage):
                prepared = made
            else:  # planned only, or the first page (of this run, or since another got further)
                prepared = await replayer._finish(made or plan(page), len(page))
            # After the tables' traits are read (a catalog query the setting would slow).
            await aexecute(conn, _sql.INDEX_SCANS, prepare=False)
            await replayer._send(prepared, functools.partial(read_ahead, following))
            if copy_log and page:
                # The page's statements answer first (in this pipeline an error of theirs
                # would surface at the copy's statement, as if the copy had failed): a nested
                # pipeline syncs.
                async with conn.pipeline():
                    pass
                await _copy_log(source, conn, page.entries)

        return await self._consume(
            source, target, _consumer(consumer, partition), replay, batch_size, poll_interval,
            channel, stop, follow, on_commit, partition, synchronous_commit, True, not copy_log,
        )  # fmt: skip

    async def _consume(
        self,
        source: psycopg.AsyncConnection[Any],
        target: psycopg.AsyncConnection[Any],
        consumer: AsyncConsumer,
        apply_page: Callable[
            [psycopg.AsyncConnection[Any], TailPage, Ahead[TailPage | None]], Awaitable[None]
        ],
        batch_size: int,
        poll_interval: float,
        channel: str | None,
        stop: AEvent | None,
        follow: bool,
        on_commit: Callable[[int, Checkpoint], object] | None,
        partition: tuple[int, int] | None,
        synchronous_commit: bool,
        pipelined: bool,
        operations_only: bool,
    ) -> int:
        """The loop of :meth:`consume` and :meth:`replicate`: a page applied and the position
        saved per transaction on `target`; with `pipelined`, each page's transaction in
        pipeline mode (:func:`_pipelined`; for an `apply_page` of oplog's own, not the
        caller's: pipeline mode runs no COPY, and reports an error at the next sync rather
        than at its statement). With `operations_only`, the pages' entries come without their
        times and metadata (a replicator's that does not copy the log)."""
        check_consume_connections(source, target)
        async with target.transaction():
            position = await consumer.position(target)
        applied = 0
        # Whether this process locked the consumer's row for a page already: then (pipelined)
        # the next page's lock is answered with its statements, in one round trip.
        locked_before = False
        while True:
            restart = False
            pages = self._pages(
                source, position, batch_size, poll_interval, channel, stop, follow, partition,
                idle_pages=True, operations_only=operations_only,
            )  # fmt: skip
            try:
                page = await _anext_or_none(pages)
                while page is not None:
                    if not page:
                        # Caught up: the tail waits for new entries, outside any transaction.
                        page = await _anext_or_none(pages)
                        continue
                    following = Ahead(functools.partial(_anext_or_none, pages))
                    transaction = _pipelined(target) if pipelined else target.transaction()
                    try:
                        async with transaction:
                            if not synchronous_commit:
                                await aexecute(target, _sql.ASYNC_COMMIT, prepare=False)
                            if pipelined and locked_before:
                                # The lock's answer is read once the page's statements are
                                # sent, in one round trip with them; if another process got
                                # further meanwhile, the page is rolled back.
                                lock = await consumer._send_lock(target)
                                try:
                                    await apply_page(target, page, following)
                                except Exception as exc:
                                    await _check_lock(consumer, lock, position, exc)
                                    raise
                                await _check_lock(consumer, lock, position, None)
                            else:
                                # (Makes the consumer's row if it has none.)
                                stored = await consumer.position(target, lock=True)
                                if stored != position:
                                    raise _Moved(stored)
                                await apply_page(target, page, following)
                            await consumer.save(target, page.end)
                    except _Moved as moved:
                        # Another process running this consumer got further: continue from
                        # where it is (this page was its work), with a lock read first.
                        position, restart, locked_before = moved.position, True, False
                        break
                    position, locked_before = page.end, True
                    applied += len(page)
                    logger.debug(
                        "consumer %r applied %d entries; at %s", consumer.name, len(page), position
                    )
                    if on_commit is not None:
                        on_commit(len(page), position)
                    page = await following.get()
            finally:
                await pages.aclose()
            if not restart:
                return applied


class _Moved(Exception):
    """A consumer's page found the consumer's row at another `position` than it started from
    (or found no row, which the next attempt makes): the page is rolled back."""

    def __init__(self, position: Checkpoint) -> None:
        super().__init__(str(position))
        self.position = position


async def _check_lock(
    consumer: AsyncConsumer,
    lock: psycopg.AsyncCursor[Any],
    expected: Checkpoint,
    error: Exception | None,
) -> None:
    """Raises :class:`_Moved` unless the consumer's row that `lock` locked holds `expected`;
    then the first error of the statements after the lock, if one is in already. In pipeline
    mode an error is raised at the next read of results, not at its statement: when the lock
    has no answer, the lock is what failed, and its error (`error`, if the page raised one)
    is raised, as a SchemaError on a database without migration 2."""
    later: psycopg.Error | None = None
    try:
        stored = await consumer._locked(lock)
    except psycopg.Error as exc:
        # Results are read in order: if the lock answered, its answer is in.
        later = exc
        try:
            stored = await consumer._locked(lock)
        except psycopg.ProgrammingError:  # no answer: the lock failed
            with requiring_migration(2):
                raise (exc if error is None else error) from None
    if stored is None:
        raise _Moved(expected)  # no row to lock: the next attempt makes it
    if stored != expected:
        raise _Moved(stored)
    if later is not None:
        raise later


@contextlib.asynccontextmanager
async def _pipelined(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A transaction on idle `conn` in pipeline mode: its BEGIN goes with the block's first
    statements, its COMMIT with the block's last, in one round trip each (a replicator's page:
    the lock of its position with the page's statements, then the save and the commit).
    ``conn.transaction()`` in pipeline mode syncs on entering and twice on leaving, to raise
    each error where it happened; and outside autocommit, psycopg's own BEGIN syncs too. So
    `conn` is in autocommit mode for the block, and the BEGIN is oplog's, with the
    connection's isolation level, read-only and deferrable settings. An error anywhere rolls
    the whole transaction back."""
    begin = _sql.begin_statement(conn.isolation_level, conn.read_only, conn.deferrable)
    switched = not conn.autocommit
    if switched:
        await conn.set_autocommit(True)
    try:
        async with conn.pipeline():
            await aexecute(conn, begin, prepare=False)
            yield
            await aexecute(conn, _sql.COMMIT, prepare=False)
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.rollback()
        raise
    finally:
        # (A broken connection, in no transaction status, is left as it is.)
        if switched and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            await conn.set_autocommit(False)


async def _stored_pages(
    conn: psycopg.AsyncConnection[Any], pages: ReadPages, operations_only: bool = False
) -> AsyncIterator[tuple[list[Any], list[Any]]]:
    """The ``(rows, metadata rows)`` of each page of a read, encrypted still; with
    `operations_only`, no metadata rows, and each row's time None (for entries that are only
    applied)."""
    while (params := pages.next_query()) is not None:
        with requiring_migration(1):
            found = await aexecute(conn, _sql.READ_PAGE[not operations_only], params, binary=True)
        rows = await found.fetchall()
        metadata = [] if operations_only else await _metadata(conn, [row[0] for row in rows])
        pages.advance(rows)
        if rows:
            yield rows, metadata


async def _anext_or_none(items: AsyncIterator[T]) -> T | None:
    """The next item of `items`, or None at their end."""
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return None


class Ahead(Generic[T]):
    """Work done ahead, once: the next page read (a consumer) or prepared (a replay) while
    the server runs the current page's statements. :meth:`run` does it (the current page's
    `meanwhile`); :meth:`get` gives its result, doing it first if nothing did, and raises its
    error only then, once the current page is done, where it would have been raised without
    working ahead. The tail gives an empty page instead of waiting for new entries, so a
    consumer reading ahead never waits inside its page's transaction."""

    def __init__(self, work: Callable[[], Awaitable[T]]) -> None:
        self._work = work
        self._done = False
        self._result: T | None = None
        self._error: Exception | None = None

    async def run(self) -> None:
        """Does the work (once)."""
        if self._done:
            return
        self._done = True
        try:
            self._result = await self._work()
        except Exception as exc:  # raised by get(), once the current page is done
            self._error = exc

    async def get(self) -> T:
        """The work's result."""
        await self.run()
        if self._error is not None:
            raise self._error
        return cast(T, self._result)

    def result(self) -> T | None:
        """The work's result if it is done and did not fail, else None."""
        return self._result


def _consumer(consumer: AsyncConsumer | str, partition: tuple[int, int] | None) -> AsyncConsumer:
    """The consumer whose position a (partition's) run keeps."""
    partition = check_partition(partition)
    if partition is None and isinstance(consumer, AsyncConsumer):
        return consumer
    name = consumer.name if isinstance(consumer, AsyncConsumer) else consumer
    return AsyncConsumer(partition_consumer(name, partition))


async def _send_batch(conn: psycopg.AsyncConnection[Any], batch: EntryBatch) -> list[int]:
    """Sends the batch's statements; returns its ids."""
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


async def _write_entry(
    conn: psycopg.AsyncConnection[Any], entry: Entry, query: str | bytes, params: Any
) -> Any:
    """Runs a statement that writes `entry`; its (id, create_time) row, or None when it wrote
    nothing (no ticket, or a stale head)."""
    with ticket_conflicts(f"write entry for {entry.aggregate_name!r}"):
        return await (await aexecute(conn, query, params)).fetchone()


async def _copy_log(
    source: psycopg.AsyncConnection[Any], target: psycopg.AsyncConnection[Any], entries: list[Entry]
) -> None:
    """Copies a page of entries read from `source` into `target`'s log (replicate's
    copy_log), with their chain values read from `source`."""
    with requiring_migration(5):
        found = await aexecute(source, _sql.CHAIN_OF, ([e.id for e in entries],))
        rows = await found.fetchall()
    chain = {int(id_): (seq, tag) for id_, seq, tag in rows}
    pgarray.register(target)
    with requiring_migration(5):
        # Fetched: in a pipelined page an error would otherwise surface at the commit.
        await (await aexecute(target, _sql.COPY_ENTRIES, copy_params(entries, chain))).fetchone()


def _transaction(conn: psycopg.AsyncConnection[Any]) -> AbstractAsyncContextManager[Any]:
    """A transaction of its own for a chained write on an autocommit connection outside one
    (the heads it locks must stay locked until its entries commit); else nothing."""
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return conn.transaction()
    return ANO_BLOCK


async def _lock_heads(
    conn: psycopg.AsyncConnection[Any], names: list[str]
) -> dict[str, tuple[int, bytes]]:
    """Locks the chain heads of `names` (creating missing ones) until the transaction ends;
    returns each one's (sequence, tag)."""
    with ticket_conflicts("lock the chain heads"), requiring_migration(5):
        cursor = await aexecute(conn, _sql.LOCK_HEADS, (sorted(names),))
        rows = await cursor.fetchall()
    return {name: (int(seq), bytes(tag)) for name, seq, tag in rows}


async def _metadata(conn: psycopg.AsyncConnection[Any], ids: list[int]) -> list[Any]:
    """The metadata rows of the entries `ids` (none asked, none read)."""
    if not ids:
        return []
    pgarray.register(conn)
    found = await aexecute(conn, _sql.ENTRY_METADATA, (pgarray.Int8Array.of(ids),), binary=True)
    return await found.fetchall()


async def _snapshot(conn: psycopg.AsyncConnection[Any]) -> str:
    row = await (await aexecute(conn, _sql.SNAPSHOT)).fetchone()
    assert row is not None
    return str(row[0])


async def _end_read(conn: psycopg.AsyncConnection[Any]) -> None:
    """Ends a poll's read: each poll is one short transaction on the tail's connection."""
    if not conn.autocommit:
        await conn.commit()


async def _wait(
    conn: psycopg.AsyncConnection[Any], channel: str | None, seconds: float, stop: AEvent | None
) -> None:
    """Waits up to `seconds` for a notification on `channel` (if any), or for `stop`."""
    deadline = time.monotonic() + seconds
    # With a stop event, wake up often enough to notice it while waiting on the socket.
    step = 0.2 if stop is not None else seconds
    while (left := deadline - time.monotonic()) > 0:
        if stop is not None and stop.is_set():
            return
        if channel is None:
            if stop is not None:
                await await_event(stop, left)
            else:
                await asleep(left)
            return
        async for _ in conn.notifies(timeout=min(step, left), stop_after=1):
            return
