"""The front door: write, read and replay an operation log on a psycopg 3 connection."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg

from oplog.catalog import TypeCatalog
from oplog.entry import Entry, Metadata
from oplog.errors import InvalidParameterError, TicketNotFoundError
from oplog.operation import Operation
from oplog.queue import Version
from oplog.replay import Replayer
from oplog.ticket import LockMode, Ticketer, check_lock_mode
from oplog.wrapping import Wrapper
from oplog.writer import Writer

__all__ = ["Oplog"]

_PAGE = 500


class Oplog:
    """Writes entries in the caller's transactions, and reads and replays them.

    Args:
        wrapper: Encrypts new entries and decrypts stored ones (a MultiWrapper for rotation).
        catalog: The message types that operations may carry.
        aggregate_names: One ticket per aggregate name (default), or one for all.
        lock: ``"optimistic"`` (default) or ``"pessimistic"`` ticket reads; see Ticketer.
        version: The queue format written, ``"v2"`` (default) or ``"v1"``.
    """

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
        self.wrapper = wrapper
        self.catalog = catalog
        self.aggregate_names = aggregate_names
        self.lock: LockMode = check_lock_mode(lock)
        self.version: Version = version

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
        """Writes one entry in the caller's transaction: takes the aggregate's ticket (creating
        it the first time), encodes and encrypts the operations, redeems the ticket and inserts
        the entry with its metadata.

        Call it in the same transaction as the data change the operations describe, and commit
        or roll back both together; :func:`oplog.run_in_transaction` retries on conflicts.

        Returns:
            The written entry (its `data` encrypted, its `id` set).

        Raises:
            InvalidParameterError: Invalid arguments; nothing is written.
            TicketConflictError: Another writer of the aggregate committed first; roll back.
        """
        ticketer = self.ticketer(conn)
        entry = Entry(
            aggregate_name,
            metadata=metadata,
            wrapper=self.wrapper,
            ticketer=ticketer,
            version=self.version,
        )
        ops = tuple(operations)
        try:
            ticket = ticketer.get_ticket(aggregate_name)
        except TicketNotFoundError:
            ticketer.init_ticket(aggregate_name)
            ticket = ticketer.get_ticket(aggregate_name)
        entry.write_entry_with(Writer(conn, self.catalog), ticket, *ops)
        return entry

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
        if limit is not None and limit < 0:
            raise InvalidParameterError(f"limit must be >= 0, not {limit}")
        remaining = limit
        last = after_id
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            rows = conn.execute(
                "select id, create_time, version, aggregate_name, data, key_id"
                " from oplog_entry where id > %s and (%s::text is null or aggregate_name = %s)"
                " order by id limit %s",
                (last, aggregate_name, aggregate_name, page),
            ).fetchall()
            if not rows:
                return
            metadata = _metadata_of(conn, [row[0] for row in rows])
            for id_, create_time, version, name, data, key_id in rows:
                entry = Entry.from_row(
                    id=id_,
                    create_time=create_time,
                    version=version,
                    aggregate_name=name,
                    data=bytes(data),
                    key_id=key_id,
                    metadata=metadata.get(id_, {}),
                    wrapper=self.wrapper,
                )
                entry.decrypt_data()
                yield entry
            last = rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < page:
                return

    def replay(
        self, conn: psycopg.Connection[Any], table_suffix: str = "_replay", after_id: int = 0
    ) -> int:
        """Replays entries with id > `after_id`, in order, into ``<table><table_suffix>``
        tables (created like the originals when missing), in the caller's transaction.

        Returns:
            The number of entries replayed.
        """
        replayer = Replayer(Writer(conn, self.catalog), table_suffix)
        count = 0
        for entry in self.read(conn, after_id=after_id):
            replayer.apply(entry.unmarshal_data(self.catalog))
            count += 1
        return count


def _metadata_of(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, Metadata]:
    out: dict[int, Metadata] = defaultdict(dict)
    rows = conn.execute(
        "select entry_id, key, value from oplog_metadata where entry_id = any(%s) order by id",
        (ids,),
    ).fetchall()
    for entry_id, key, value in rows:
        values = out[entry_id].setdefault(key, [])
        if value is not None:
            values.append(value)
    return out
