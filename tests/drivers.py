"""One synchronous face over the sync and the asyncio front doors, so that each correctness
test has one body and runs against both (``oplog.Oplog`` and ``oplog.aio.AsyncOplog``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import psycopg

import oplog
from oplog import BatchItem, Checkpoint, aio
from tests.db import CATALOG, WRAPPER


class _Tally:
    """Attempts and retries of one run_in_transaction call."""

    def __init__(self) -> None:
        self.attempts = 0
        self.retries = 0

    def retried(self, attempt: int, conflict: oplog.TicketConflictError) -> None:
        self.retries += 1


def _user_names(entry: oplog.Entry) -> list[str]:
    return [
        op.message.name  # type: ignore[attr-defined]
        for op in entry.unmarshal_data(CATALOG)
    ]


class SyncDriver:
    """The sync API on a psycopg Connection."""

    kind = "sync"

    def __init__(
        self, dsn: str, isolation: psycopg.IsolationLevel | None = None, **connect: Any
    ) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, **connect)
        if isolation is not None:
            self.conn.isolation_level = isolation
        self.log = oplog.Oplog(WRAPPER, CATALOG)
        self.target: psycopg.Connection[Any] | None = None

    def write(
        self, aggregate: str, ops: list[oplog.Operation], metadata: Any = None
    ) -> oplog.Entry:
        return self.log.write(self.conn, aggregate, ops, metadata)

    def apply(
        self, aggregate: str, ops: list[oplog.Operation], metadata: Any = None
    ) -> oplog.Entry:
        return self.log.apply(self.conn, aggregate, ops, metadata)

    def write_many(self, items: list[BatchItem]) -> list[int]:
        return self.log.write_many(self.conn, items)

    def read(self, **kwargs: Any) -> list[oplog.Entry]:
        return list(self.log.read(self.conn, **kwargs))

    def tail(self, n: int | None = None, **kwargs: Any) -> list[tuple[oplog.Entry, Checkpoint]]:
        """Up to `n` items of log.tail(conn, **kwargs) (all of them when `n` is None)."""
        out: list[tuple[oplog.Entry, Checkpoint]] = []
        if n == 0:
            return out
        for item in self.log.tail(self.conn, **kwargs):
            out.append(item)
            if len(out) == n:
                break
        return out

    def checkpoint(self) -> Checkpoint:
        return self.log.checkpoint(self.conn)

    def lag(self, consumer: str) -> oplog.Lag:
        """Consumer(consumer).lag with this connection as source and target."""
        return oplog.Consumer(consumer).lag(self.conn)

    def execute(self, query: str) -> None:
        self.conn.execute(query.encode())

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def set_autocommit(self, value: bool) -> None:
        self.conn.autocommit = value

    def run_in_transaction(
        self, items: list[BatchItem], before_write: Callable[[int], None]
    ) -> tuple[list[int], int]:
        """write_many(items) in run_in_transaction, calling before_write(attempt) first."""
        tally = _Tally()

        def unit(conn: psycopg.Connection[Any]) -> list[int]:
            tally.attempts += 1
            conn.execute("select 1")  # take the snapshot before the side effect
            before_write(tally.attempts)
            return self.log.write_many(conn, items)

        ids = oplog.run_in_transaction(self.conn, unit, on_retry=tally.retried)
        return ids, tally.retries

    def consume(self, consumer: str, fail_on: str | None = None, **kwargs: Any) -> int:
        """log.consume from this driver's connection into a second one, recording each
        operation's user name in table ``consumed``; raises RuntimeError (after recording)
        at the entry naming `fail_on`."""
        if self.target is None:
            self.target = psycopg.connect(self.dsn)

        def apply(target: psycopg.Connection[Any], entry: oplog.Entry) -> None:
            names = _user_names(entry)
            for name in names:
                target.execute("insert into consumed values (%s, %s)", (entry.id, name))
            if fail_on in names:
                raise RuntimeError("apply failed")

        return self.log.consume(self.conn, self.target, consumer, apply, **kwargs)

    def replay(self, table_suffix: str) -> int:
        """log.replay of the whole log into ``<table><table_suffix>`` tables, committed."""
        with self.conn.transaction():
            return self.log.replay(self.conn, table_suffix)

    def replicate(self, target_dsn: str, consumer: str) -> int:
        """log.replicate from this driver's connection into database `target_dsn`, until
        caught up."""
        with psycopg.connect(target_dsn) as target:
            return self.log.replicate(self.conn, target, consumer, follow=False, batch_size=7)

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        self.conn.close()


class AsyncDriver:
    """The asyncio API on a psycopg AsyncConnection, driven by a private event loop."""

    kind = "async"

    def __init__(
        self, dsn: str, isolation: psycopg.IsolationLevel | None = None, **connect: Any
    ) -> None:
        self.dsn = dsn
        self.target: psycopg.AsyncConnection[Any] | None = None
        self.loop = asyncio.new_event_loop()
        if connect.get("cursor_factory") is psycopg.ClientCursor:
            connect["cursor_factory"] = psycopg.AsyncClientCursor
        self.conn = self.loop.run_until_complete(psycopg.AsyncConnection.connect(dsn, **connect))
        if isolation is not None:
            self.loop.run_until_complete(self.conn.set_isolation_level(isolation))
        self.log = aio.AsyncOplog(WRAPPER, CATALOG)

    def write(
        self, aggregate: str, ops: list[oplog.Operation], metadata: Any = None
    ) -> oplog.Entry:
        return self.loop.run_until_complete(self.log.write(self.conn, aggregate, ops, metadata))

    def apply(
        self, aggregate: str, ops: list[oplog.Operation], metadata: Any = None
    ) -> oplog.Entry:
        return self.loop.run_until_complete(self.log.apply(self.conn, aggregate, ops, metadata))

    def write_many(self, items: list[BatchItem]) -> list[int]:
        return self.loop.run_until_complete(self.log.write_many(self.conn, items))

    def read(self, **kwargs: Any) -> list[oplog.Entry]:
        async def collect() -> list[oplog.Entry]:
            return [e async for e in self.log.read(self.conn, **kwargs)]

        return self.loop.run_until_complete(collect())

    def tail(self, n: int | None = None, **kwargs: Any) -> list[tuple[oplog.Entry, Checkpoint]]:
        """Up to `n` items of log.tail(conn, **kwargs) (all of them when `n` is None); a
        threading.Event `stop` is bridged to an asyncio.Event."""
        stop = kwargs.pop("stop", None)

        async def collect() -> list[tuple[oplog.Entry, Checkpoint]]:
            out: list[tuple[oplog.Entry, Checkpoint]] = []
            if n == 0:
                return out
            astop = asyncio.Event()
            if stop is not None:
                loop = asyncio.get_running_loop()

                def relay() -> None:
                    stop.wait()
                    with contextlib.suppress(RuntimeError):  # the loop may be closed by then
                        loop.call_soon_threadsafe(astop.set)

                threading.Thread(target=relay, daemon=True).start()
            items = self.log.tail(self.conn, stop=astop if stop is not None else None, **kwargs)
            try:
                async for item in items:
                    out.append(item)
                    if len(out) == n:
                        break
            finally:
                await items.aclose()
            return out

        return self.loop.run_until_complete(collect())

    def checkpoint(self) -> Checkpoint:
        return self.loop.run_until_complete(self.log.checkpoint(self.conn))

    def lag(self, consumer: str) -> oplog.Lag:
        """AsyncConsumer(consumer).lag with this connection as source and target."""
        return self.loop.run_until_complete(aio.AsyncConsumer(consumer).lag(self.conn))

    def execute(self, query: str) -> None:
        self.loop.run_until_complete(self.conn.execute(query.encode()))

    def commit(self) -> None:
        self.loop.run_until_complete(self.conn.commit())

    def rollback(self) -> None:
        self.loop.run_until_complete(self.conn.rollback())

    def set_autocommit(self, value: bool) -> None:
        self.loop.run_until_complete(self.conn.set_autocommit(value))

    def run_in_transaction(
        self, items: list[BatchItem], before_write: Callable[[int], None]
    ) -> tuple[list[int], int]:
        """write_many(items) in aio.run_in_transaction, calling before_write(attempt) first."""
        tally = _Tally()

        async def unit(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            tally.attempts += 1
            await conn.execute("select 1")
            before_write(tally.attempts)
            return await self.log.write_many(conn, items)

        ids = self.loop.run_until_complete(
            aio.run_in_transaction(self.conn, unit, on_retry=tally.retried)
        )
        return ids, tally.retries

    def consume(self, consumer: str, fail_on: str | None = None, **kwargs: Any) -> int:
        """AsyncOplog.consume from this driver's connection into a second one; as
        SyncDriver.consume."""

        async def apply(target: psycopg.AsyncConnection[Any], entry: oplog.Entry) -> None:
            names = _user_names(entry)
            for name in names:
                await target.execute("insert into consumed values (%s, %s)", (entry.id, name))
            if fail_on in names:
                raise RuntimeError("apply failed")

        async def run() -> int:
            if self.target is None:
                self.target = await psycopg.AsyncConnection.connect(self.dsn)
            return await self.log.consume(self.conn, self.target, consumer, apply, **kwargs)

        return self.loop.run_until_complete(run())

    def replay(self, table_suffix: str) -> int:
        """AsyncOplog.replay; as SyncDriver.replay."""

        async def run() -> int:
            async with self.conn.transaction():
                return await self.log.replay(self.conn, table_suffix)

        return self.loop.run_until_complete(run())

    def replicate(self, target_dsn: str, consumer: str) -> int:
        """AsyncOplog.replicate; as SyncDriver.replicate."""

        async def run() -> int:
            async with await psycopg.AsyncConnection.connect(target_dsn) as target:
                return await self.log.replicate(
                    self.conn, target, consumer, follow=False, batch_size=7
                )

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        if self.target is not None:
            self.loop.run_until_complete(self.target.close())
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


Driver = SyncDriver | AsyncDriver
MakeDriver = Callable[..., Driver]
"""The `make_driver` fixture: opens a driver of the test's kind (sync or async)."""
Connect = Callable[..., psycopg.Connection[Any]]
"""The `connect` fixture: opens a connection to the test database."""
DRIVERS: dict[str, type[SyncDriver] | type[AsyncDriver]] = {
    "sync": SyncDriver,
    "async": AsyncDriver,
}
