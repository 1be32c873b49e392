"""The front door: write, read and replay an operation log on a psycopg 3 connection."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Optional, Union

import psycopg

from oplog import _core, pgarray
from oplog._db import execute
from oplog.catalog import TypeCatalog
from oplog.entry import (
    WRITE_ENTRY,
    Entry,
    entries_from_rows,
    metadata_rows,
    normalize_metadata,
)
from oplog.errors import InvalidParameterError, OplogError, TicketConflictError, UnknownTypeError
from oplog.operation import Operation
from oplog.queue import Version, check_classes
from oplog.replay import Replayer
from oplog.tail import (
    SNAPSHOT,
    Checkpoint,
    Consumer,
    check_partition,
    consume,
    partition_consumer,
    tail_pages,
)
from oplog.ticket import (
    INIT_TICKET,
    LockMode,
    Ticketer,
    check_lock_mode,
    conflicts_as_ticket_errors,
    ticket_name,
)
from oplog.wrapping import Wrapper
from oplog.writer import Writer

__all__ = ["BatchItem", "Oplog", "OplogBase"]

_PAGE = 500

# A batch in one round trip: redeem each of the batch's tickets once, in name order, creating
# the missing ones on the way (a new ticket starts at version 1, so redeemed it is 2); then
# insert the entries in input order (so their ids ascend with it) and their metadata. The upsert
# takes each ticket's row lock (or, for a new one, its key) in name order and nothing else
# first, so two batches cannot deadlock, with new tickets or existing ones. Parameters are
# binary, and the large arrays arrive packed by the Rust core (see pgarray.py): dumping them
# element by element cost a fifth of a batch.
_BATCH_TICKETS = """
with redeemed as (
  insert into oplog_ticket (name, version)
  select t.name, 2 from unnest(%(tickets)b::text[]) as t (name) order by t.name
  on conflict (name) do update
    set version = oplog_ticket.version + 1, update_time = current_timestamp
  returning id
), """
_BATCH_ENTRIES = """entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id)
  select %(version)b::text, u.aggregate_name, u.data, %(key_id)b::text
  from unnest(%(aggregates)b::text[], %(datas)b::bytea[])
    with ordinality as u (aggregate_name, data, ord)
  where {gate}
  order by u.ord
  returning id
), numbered as (
  select id, row_number() over (order by id) as ord from entry
), metadata as (
  insert into oplog_metadata (entry_id, key, value)
  select n.id, m.key, m.value
  from unnest(%(meta_ord)b::bigint[], %(keys)b::text[], %(values)b::text[]) as m (ord, key, value)
  join numbered n on n.ord = m.ord
)
select id from numbered order by ord
"""
WRITE_MANY = _BATCH_TICKETS + _BATCH_ENTRIES.format(
    gate="(select count(*) from redeemed) = %(ticket_count)b::bigint"
)

# A large batch goes in chunks through one pipeline (one round trip still), so that the
# client encrypts a chunk while the server inserts the one before. The first chunk redeems
# every ticket of the batch and, only then, sets a transaction-local token that the other
# chunks require: they insert nothing unless this batch's redeem succeeded in this transaction.
_WRITE_MANY_FIRST = (
    _BATCH_TICKETS
    + """armed as (
  select set_config('oplog.batch', %(token)b::text, true)
  where (select count(*) from redeemed) = %(ticket_count)b::bigint
), """
    + _BATCH_ENTRIES.format(gate="exists (select from armed)")
)
_WRITE_MANY_NEXT = "with " + _BATCH_ENTRIES.format(
    gate="current_setting('oplog.batch', true) = %(token)b::text"
)
_CHUNKED_FROM = 256  # entries; smaller batches are one statement, prepared before it is sent
_FIRST_CHUNK = 128  # the server starts on these while the client prepares the rest
_CHUNK_GROWTH = 3


# WRITE_ENTRY for an entry without metadata: two parameters fewer to adapt and send.
_WRITE_ENTRY_ALONE = """
with ticket as (
  update oplog_ticket set version = version + 1, update_time = current_timestamp
  where name = %(ticket)b::text
  returning id
), entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id)
  select %(version)b::text, %(aggregate_name)b::text, %(data)b, %(key_id)b::text from ticket
  returning id, create_time
)
select id, create_time from entry
"""

# Oplog.apply: after the data CTEs (each changes nothing unless `ticket` returned a row), the
# entry and its metadata, as in WRITE_ENTRY; positional parameters, after the data's.
_APPLY_TICKET = b"""ticket as (
  update oplog_ticket set version = version + 1, update_time = current_timestamp
  where name = %b::text returning id
)"""
_APPLY_ENTRY = b""", entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id)
  select %b::text, %b::text, %b, %b::text from ticket
  returning id, create_time
)"""
_APPLY_METADATA = b""", metadata as (
  insert into oplog_metadata (entry_id, key, value)
  select entry.id, m.key, m.value
  from entry, unnest(%b::text[], %b::text[]) as m (key, value)
)"""
_APPLY_RESULT = b"""
select id, create_time from entry
"""


BatchItem = tuple[str, Iterable[Operation], Optional[Mapping[str, Union[Sequence[str], str]]]]
"""One entry of a batch: ``(aggregate_name, operations, metadata or None)``."""

READ_PAGE = """
select id, create_time, version, aggregate_name, data, key_id from oplog_entry
where id > %s and (%s::text is null or aggregate_name = %s)
order by id limit %s
"""

READ_METADATA = """
select entry_id, key, value from oplog_metadata where entry_id = any(%s) order by id
"""


def _consumer(consumer: Consumer | str, partition: tuple[int, int] | None) -> Consumer:
    """The consumer whose position a (partition's) run keeps."""
    partition = check_partition(partition)
    name = consumer.name if isinstance(consumer, Consumer) else consumer
    if partition is None and isinstance(consumer, Consumer):
        return consumer
    return Consumer(partition_consumer(name, partition))


def _written(entry: Entry, row: Sequence[Any]) -> Entry:
    entry.id, entry.create_time = int(row[0]), row[1]
    return entry


def _invisible_ticket(names: str) -> TicketConflictError:
    return TicketConflictError(
        f"the ticket of {names} was created by a transaction this one cannot see; retry"
    )


class _Pages:
    """The paging state of a read: which page to ask for next, and its entries."""

    def __init__(self, aggregate_name: str | None, after_id: int, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise InvalidParameterError(f"limit must be >= 0, not {limit}")
        self.aggregate_name = aggregate_name
        self.last = after_id
        self.remaining = limit
        self.done = False

    def next_query(self) -> tuple[Any, ...] | None:
        if self.done or (self.remaining is not None and self.remaining <= 0):
            return None
        self.page = _PAGE if self.remaining is None else min(_PAGE, self.remaining)
        return (self.last, self.aggregate_name, self.aggregate_name, self.page)

    def entries(self, rows: list[Any], metadata_rows: list[Any], wrapper: Wrapper) -> list[Entry]:
        out = entries_from_rows(rows, metadata_rows, wrapper)
        if rows:
            self.last = rows[-1][0]
        if self.remaining is not None:
            self.remaining -= len(rows)
        self.done = len(rows) < self.page
        return out


class OplogBase:
    """The configuration and the I/O-free half of :class:`Oplog` and ``oplog.aio.AsyncOplog``:
    encoding, encryption and statement parameters."""

    def __init__(
        self,
        wrapper: Wrapper,
        catalog: TypeCatalog,
        *,
        aggregate_names: bool = True,
        lock: LockMode = "optimistic",
        version: Version = "v2",
    ) -> None:
        if not isinstance(catalog, TypeCatalog):
            raise InvalidParameterError(f"catalog must be a TypeCatalog, not {catalog!r}")
        if version not in ("v1", "v2"):
            raise InvalidParameterError(f"unknown entry version {version!r}: use 'v1' or 'v2'")
        self.wrapper = wrapper
        self.catalog = catalog
        self.aggregate_names = aggregate_names
        self.lock: LockMode = check_lock_mode(lock)
        self.version: Version = version

    def ticket_name(self, aggregate_name: str) -> str:
        """The ticket an aggregate name uses."""
        return ticket_name(aggregate_name, self.aggregate_names)

    def _prepare_write(
        self,
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None,
    ) -> tuple[Entry, dict[str, Any]]:
        ticket = self.ticket_name(aggregate_name)
        entry = Entry(aggregate_name, metadata=metadata, wrapper=self.wrapper, version=self.version)
        ops = tuple(operations)
        check_classes(self.catalog, ops)
        entry.set_operations(ops)
        entry.encrypt_data()
        keys, values = metadata_rows(entry.metadata)
        return entry, {
            "ticket": ticket,
            "ticket_version": None,
            "version": entry.version,
            "aggregate_name": aggregate_name,
            "data": entry.data,
            "key_id": entry.key_id,
            "keys": keys,
            "values": values,
        }

    def _prepare_apply(
        self,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None,
    ) -> tuple[Entry, bytes, list[Any]]:
        ops = tuple(operations)
        check_classes(self.catalog, ops)
        # Composing needs only the connection's encoding; nothing is executed here.
        writer = Writer(conn, self.catalog)  # type: ignore[arg-type]
        parts = [b"with ", _APPLY_TICKET]
        data_params: list[Any] = []
        touched: set[tuple[Any, ...]] = set()
        for op in ops:
            query, params, identity = writer.gated(op)
            if identity in touched:
                # The parts of one statement do not see each other's changes.
                raise InvalidParameterError(
                    f"apply changes each row once; {identity[0]} {identity[1:]} appears twice"
                )
            touched.add(identity)
            parts += [b", d%d as (" % len(touched), query, b")"]
            data_params += params
        entry, p = self._prepare_write(aggregate_name, ops, metadata)
        params = [
            p["ticket"], *data_params, p["version"], p["aggregate_name"], p["data"], p["key_id"],
        ]  # fmt: skip
        parts.append(_APPLY_ENTRY)
        if p["keys"]:  # metadata rows, only when there are any (fewer parameters to adapt)
            parts.append(_APPLY_METADATA)
            params += [p["keys"], p["values"]]
        parts.append(_APPLY_RESULT)
        return entry, b"".join(parts), params

    def _batch(self, items: Iterable[BatchItem]) -> _Batch | None:
        """Checks a batch's items (None for an empty batch); see :class:`_Batch`."""
        batch = _Batch(self, items)
        return batch if batch.size else None


class _Batch:
    """A batch of entries to write: checked whole up front (item shape, operations present,
    aggregate and metadata), then encoded and encrypted chunk by chunk as it is sent.

    A batch smaller than ``_CHUNKED_FROM`` is one statement (`statements` yields one), fully
    prepared before it is sent. A larger one is several: the first redeems the tickets of the
    whole batch, the others are gated on it; the caller sends them in one pipeline and one
    transaction or savepoint, since an item may still fail to encode after the first is sent.
    """

    def __init__(self, log: OplogBase, items: Iterable[BatchItem]) -> None:
        self.log = log
        self.aggregates: list[str] = []
        self.operations: list[list[Operation]] = []
        # Per item, its metadata rows; batches often repeat one mapping, normalized once.
        self.metadata: list[tuple[list[str], list[str | None]]] = []
        tickets: set[str] = set()
        last: object = None
        rows: tuple[list[str], list[str | None]] = ([], [])
        for index, item in enumerate(items):
            try:
                aggregate_name, operations, metadata = item
            except (TypeError, ValueError):
                raise InvalidParameterError(
                    f"item {index}: expected (aggregate_name, operations, metadata)"
                ) from None
            tickets.add(log.ticket_name(aggregate_name))
            ops = list(operations)
            if not ops:
                raise InvalidParameterError(f"item {index}: an entry needs an operation")
            try:
                check_classes(log.catalog, ops)
            except (InvalidParameterError, UnknownTypeError) as exc:
                raise type(exc)(f"item {index}: {exc.args[0]}") from None
            if metadata is not last or index == 0:
                rows = metadata_rows(normalize_metadata(metadata))
                last = metadata
            self.aggregates.append(aggregate_name)
            self.operations.append(ops)
            self.metadata.append(rows)
        self.size = len(self.aggregates)
        self.tickets = sorted(tickets)
        self.chunked = self.size >= _CHUNKED_FROM
        self.token = secrets.token_hex(8) if self.chunked else ""
        self._prepared: list[tuple[str, dict[str, Any]]] = []
        if not self.chunked and self.size:
            # Every item encodes before anything is sent.
            self._prepared.append((WRITE_MANY, self._params(0, self.size)))

    def bounds(self) -> Iterator[tuple[int, int]]:
        """The chunks' [start, end) item ranges."""
        if not self.chunked:
            yield 0, self.size
            return
        start, size = 0, _FIRST_CHUNK
        while start < self.size:
            end = min(start + size, self.size)
            # A short tail joins the chunk before it.
            if self.size - end < _FIRST_CHUNK:
                end = self.size
            yield start, end
            start, size = end, size * _CHUNK_GROWTH

    def statements(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(query, params) per chunk, in order, prepared as they are asked for."""
        for index, (start, end) in enumerate(self.bounds()):
            if index == len(self._prepared):
                query = _WRITE_MANY_FIRST if index == 0 else _WRITE_MANY_NEXT
                self._prepared.append((query, self._params(start, end)))
            yield self._prepared[index]

    def _params(self, start: int, end: int) -> dict[str, Any]:
        encrypt = self.log.wrapper.encrypt
        version = self.log.version
        encode = _core.encode_operations
        blobs = [encrypt(encode(ops, version)) for ops in self.operations[start:end]]
        meta_ord: list[int] = []
        meta_keys: list[str] = []
        meta_values: list[str | None] = []
        for ord_, (keys, values) in enumerate(self.metadata[start:end], start=1):
            if keys:
                meta_ord += [ord_] * len(keys)
                meta_keys += keys
                meta_values += values
        params: dict[str, Any] = {
            "version": version,
            "key_id": self.log.wrapper.key_id,
            "aggregates": pgarray.TextArray.of(self.aggregates[start:end]),
            "datas": pgarray.ByteaArray.of(blobs),
            "meta_ord": pgarray.Int8Array.of(meta_ord),
            "keys": pgarray.TextArray.of(meta_keys),
            "values": pgarray.TextArray.of(meta_values),
        }
        if start == 0:
            params["tickets"] = self.tickets
            params["ticket_count"] = len(self.tickets)
        if self.chunked:
            params["token"] = self.token
        return params

    def check_ids(self, ids: list[int]) -> list[int]:
        """The batch's ids; an error (the batch rolled back) unless there is one per item."""
        if len(ids) != self.size:
            raise OplogError(f"a batch of {self.size} entries wrote {len(ids)}; it was rolled back")
        return ids


def batch_block(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> _Block:
    """How a chunked batch is made atomic on `conn`: its own transaction in autocommit mode,
    else a savepoint in the caller's transaction (which stays usable if the batch fails)."""
    status = conn.info.transaction_status
    in_block = status in (
        psycopg.pq.TransactionStatus.INTRANS,
        psycopg.pq.TransactionStatus.INERROR,
    )
    if conn.autocommit and not in_block:
        return _Block(b"begin", b"commit", (b"rollback",))
    return _Block(
        b"savepoint oplog_write_many",
        b"release savepoint oplog_write_many",
        (b"rollback to savepoint oplog_write_many", b"release savepoint oplog_write_many"),
    )


class _Block(NamedTuple):
    begin: bytes
    end: bytes
    undo: tuple[bytes, ...]


def _send_batch(conn: psycopg.Connection[Any], batch: _Batch) -> list[int]:
    """Sends the batch's statements; returns its ids."""
    if not batch.chunked:
        ((query, params),) = batch.statements()
        return batch.check_ids([int(row[0]) for row in execute(conn, query, params).fetchall()])
    block = batch_block(conn)
    try:
        with conn.pipeline():
            execute(conn, block.begin)
            cursors = [execute(conn, query, params) for query, params in batch.statements()]
            written = batch.check_ids([int(row[0]) for c in cursors for row in c.fetchall()])
            execute(conn, block.end)
        return written
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(psycopg.Error):
                for statement in block.undo:
                    execute(conn, statement)
        raise


class Oplog(OplogBase):
    """Writes entries in the caller's transactions, and reads and replays them.

    Args:
        wrapper: Encrypts new entries and decrypts stored ones (a MultiWrapper for rotation).
        catalog: The message types that operations may carry.
        aggregate_names: One ticket per aggregate name (default), or one for all.
        lock: ``"optimistic"`` (default) or ``"pessimistic"`` ticket reads by :meth:`ticketer`
            (the lower-level API); :meth:`write` and :meth:`write_many` redeem in one
            statement that waits for a concurrent writer at READ COMMITTED either way.
        version: The queue format written, ``"v2"`` (default) or ``"v1"``.
    """

    def _redeem_and_write(
        self,
        conn: psycopg.Connection[Any],
        entry: Entry,
        query: str | bytes,
        params: Any,
        ticket: str,
    ) -> Entry:
        """Runs a statement that redeems `ticket` and writes `entry` (returning its id and
        create time); the first time an aggregate is seen, creates its ticket and runs it
        again (the statement changes nothing without the ticket)."""
        for first in (True, False):
            with conflicts_as_ticket_errors(f"write entry for {entry.aggregate_name!r}"):
                row = execute(conn, query, params).fetchone()
            if row is not None:
                return _written(entry, row)
            if first:
                with conflicts_as_ticket_errors(f"init ticket {ticket!r}"):
                    execute(conn, INIT_TICKET, (ticket,))
        raise _invisible_ticket(entry.aggregate_name)

    def ticketer(self, conn: psycopg.Connection[Any]) -> Ticketer:
        """A ticketer on `conn` with this log's ticket settings."""
        return Ticketer(conn, aggregate_names=self.aggregate_names, lock=self.lock)

    def write(
        self,
        conn: psycopg.Connection[Any],
        aggregate_name: str,
        operations: Iterable[Operation],
        metadata: Mapping[str, Sequence[str] | str] | None = None,
    ) -> Entry:
        """Writes one entry in the caller's transaction, in one round trip: redeems the
        aggregate's ticket (creating it the first time), and inserts the encrypted operations
        and the metadata.

        Call it in the same transaction as the data change the operations describe, and commit
        or roll back both together; :func:`oplog.run_in_transaction` retries on conflicts. At
        READ COMMITTED a concurrent writer of the same aggregate is waited for; at REPEATABLE
        READ and SERIALIZABLE it is a conflict.

        Returns:
            The written entry (its `data` encrypted, its `id` set).

        Raises:
            InvalidParameterError: Invalid arguments; nothing is written.
            TicketConflictError: Another writer of the aggregate committed first; roll back.
        """
        entry, params = self._prepare_write(aggregate_name, operations, metadata)
        query = WRITE_ENTRY if params["keys"] else _WRITE_ENTRY_ALONE
        return self._redeem_and_write(conn, entry, query, params, params["ticket"])

    def apply(
        self,
        conn: psycopg.Connection[Any],
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
        entry, query, params = self._prepare_apply(conn, aggregate_name, operations, metadata)
        return self._redeem_and_write(conn, entry, query, params, params[0])

    def write_many(self, conn: psycopg.Connection[Any], items: Iterable[BatchItem]) -> list[int]:
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
        batch = self._batch(items)
        if batch is None:
            return []
        pgarray.register(conn)
        with conflicts_as_ticket_errors("write a batch of entries"):
            return _send_batch(conn, batch)

    def read(
        self,
        conn: psycopg.Connection[Any],
        aggregate_name: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> Iterator[Entry]:
        """Yields entries with id > `after_id` in id order, decrypted, with their metadata.

        Reads in pages, so a long log is not held in memory at once.

        Raises:
            DecryptError: An entry does not decrypt with this log's wrapper.
        """
        pages = _Pages(aggregate_name, after_id, limit)
        while (params := pages.next_query()) is not None:
            rows = execute(conn, READ_PAGE, params).fetchall()
            ids = [row[0] for row in rows]
            metadata = execute(conn, READ_METADATA, (ids,)).fetchall() if ids else []
            yield from pages.entries(rows, metadata, self.wrapper)

    def replay(
        self, conn: psycopg.Connection[Any], table_suffix: str = "_replay", after_id: int = 0
    ) -> int:
        """Replays entries with id > `after_id`, in order, into ``<table><table_suffix>``
        tables (created like the originals when missing), in the caller's transaction.

        Returns:
            The number of entries replayed.
        """
        replayer = Replayer(Writer(conn, self.catalog), table_suffix)
        entries = self.read(conn, after_id=after_id)
        count = 0
        # A page at a time, set-based: as few statements as the operations' order allows.
        while page := list(itertools.islice(entries, _PAGE)):
            count += replayer.apply_entries(page, self.catalog)
        return count

    def tail(
        self,
        conn: psycopg.Connection[Any],
        after: Checkpoint | str | None = None,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channel: str | None = None,
        stop: threading.Event | None = None,
        follow: bool = True,
        partition: tuple[int, int] | None = None,
    ) -> Iterator[tuple[Entry, Checkpoint]]:
        """Yields every committed entry after checkpoint `after` exactly once, as
        ``(entry, checkpoint after it)``, in an order that keeps each aggregate's entries in
        ticket order; then waits for more (see :mod:`oplog.tail` for how).

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
        for page in tail_pages(
            conn, self.wrapper, Checkpoint.of(after), batch_size=batch_size,
            poll_interval=poll_interval, channel=channel, stop=stop, follow=follow,
            partition=partition,
        ):  # fmt: skip
            yield from page

    def consume(
        self,
        source: psycopg.Connection[Any],
        target: psycopg.Connection[Any],
        consumer: Consumer | str,
        apply: Callable[[psycopg.Connection[Any], Entry], object],
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        channel: str | None = None,
        stop: threading.Event | None = None,
        follow: bool = True,
        on_commit: Callable[[int, Checkpoint], object] | None = None,
        partition: tuple[int, int] | None = None,
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

        Returns:
            The number of entries applied (when `follow` is False or `stop` is set).
        """
        return consume(
            source, target, self.wrapper, _consumer(consumer, partition), apply,
            batch_size=batch_size, poll_interval=poll_interval, channel=channel, stop=stop,
            follow=follow, on_commit=on_commit, partition=partition,
        )  # fmt: skip

    def replicate(
        self,
        source: psycopg.Connection[Any],
        target: psycopg.Connection[Any],
        consumer: Consumer | str = "replica",
        **options: Any,
    ) -> int:
        """Applies every entry of the log on `source` to the same tables on `target` (replay
        without a suffix), exactly once and in commit order: :meth:`consume` with a replaying
        `apply`. `target` needs oplog's tables (:func:`oplog.migrate`) and the replicated
        tables. Options as in :meth:`consume`.

        Returns:
            The number of entries applied (when `follow` is False or `stop` is set).
        """
        catalog = self.catalog
        replayer = Replayer(Writer(target, catalog), "")

        def replay(conn: psycopg.Connection[Any], entries: list[Entry]) -> None:
            # The page at once, set-based (see Replayer.apply_many); `conn` is `target`.
            replayer.apply_entries(entries, catalog)

        partition = options.get("partition")
        return consume(
            source, target, self.wrapper, _consumer(consumer, partition), None,
            apply_page=replay, **options,
        )  # fmt: skip

    def checkpoint(self, conn: psycopg.Connection[Any]) -> Checkpoint:
        """The current end of the log: a tail from here delivers only entries of transactions
        that commit later (also those already running)."""
        row = execute(conn, SNAPSHOT).fetchone()
        assert row is not None
        return Checkpoint(row[0])
