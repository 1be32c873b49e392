"""Consumers: named positions in the log, kept in the ``oplog_consumer`` table of the database a
consumer applies entries to, and how far behind the log each one is."""

# oplog/consumer.py, the sync consumer, is generated from this module.  # sync: -

from __future__ import annotations

from typing import Any

import psycopg

from oplog import _sql
from oplog._db import aexecute
from oplog._dberrors import requiring_migration
from oplog.checkpoint import Checkpoint, Lag, lag_of, lag_params
from oplog.errors import InvalidParameterError

__all__ = ["AsyncConsumer", "lag_behind"]


async def lag_behind(source: psycopg.AsyncConnection[Any], position: Checkpoint) -> Lag:
    """How far `position` is behind the log on `source`: one count over the entries after it,
    cheap while a consumer keeps up, a scan of the backlog when it does not."""
    with requiring_migration(2):
        row = await (await aexecute(source, _sql.LAG, lag_params(position))).fetchone()
    return lag_of(row)


class AsyncConsumer:
    """A named reader of the log whose checkpoint is stored in the ``oplog_consumer`` table,
    in the consumer's own transactions.

    Apply what the tail delivers and :meth:`save` the checkpoint in one transaction, and each
    entry is processed exactly once across crashes and restarts (:meth:`AsyncOplog.consume`
    does this loop).

    Raises:
        InvalidParameterError: `name` is not a non-empty str.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(f"a consumer name is a non-empty str, not {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    async def position(
        self, conn: psycopg.AsyncConnection[Any], *, lock: bool = False
    ) -> Checkpoint:
        """The consumer's saved checkpoint (:attr:`Checkpoint.START` for a new consumer).

        With `lock`, the consumer's row is created if missing and locked until the caller's
        transaction ends, so two processes running the same consumer take turns instead of
        both applying the same entries.
        """
        query = _sql.CONSUMER_LOCK if lock else _sql.CONSUMER_GET
        with requiring_migration(2):
            row = await (await aexecute(conn, query, (self.name,))).fetchone()
            if row is None and lock:
                # A new consumer: make the row that the lock needs (once), then take it.
                start = str(Checkpoint.START)
                await aexecute(conn, _sql.CONSUMER_CREATE, (self.name, start))
                row = await (await aexecute(conn, query, (self.name,))).fetchone()
        return Checkpoint.START if row is None else Checkpoint.parse(row[0])

    async def _send_lock(self, conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[Any]:
        """Sends the lock of :meth:`position` without waiting for its answer (in pipeline mode,
        it goes with the statements after it); :meth:`_locked` reads the answer."""
        return await aexecute(conn, _sql.CONSUMER_LOCK, (self.name,))

    @staticmethod
    async def _locked(cursor: psycopg.AsyncCursor[Any]) -> Checkpoint | None:
        """The position the lock :meth:`_send_lock` sent found; None when the consumer has no
        row yet (:meth:`position` with `lock` makes it)."""
        row = await cursor.fetchone()
        return None if row is None else Checkpoint.parse(row[0])

    async def save(self, conn: psycopg.AsyncConnection[Any], checkpoint: Checkpoint | str) -> None:
        """Stores `checkpoint` as the consumer's position, in the caller's transaction."""
        with requiring_migration(2):
            params = (self.name, str(Checkpoint.of(checkpoint)))
            await aexecute(conn, _sql.CONSUMER_SAVE, params)

    async def lag(
        self,
        source: psycopg.AsyncConnection[Any],
        target: psycopg.AsyncConnection[Any] | None = None,
    ) -> Lag:
        """How many committed entries of the log on `source` the consumer has not applied,
        and how old the oldest of them is. The consumer's position is read from `target`
        (where it applies entries; default `source`).

        One count over the entries after the position: cheap while the consumer keeps up,
        a scan of the backlog when it does not.
        """
        position = await self.position(source if target is None else target)
        return await lag_behind(source, position)
