"""Code that runs in worker processes of the stress and fault tests (importable after spawn)."""

from __future__ import annotations

import random
from typing import Any

import psycopg

import oplog
from oplog.proto.oplog_test_pb2 import TestUser
from tests.db import CATALOG, WRAPPER


def write_many(
    dsn: str, worker: int, writes: int, aggregates: list[str], lock: str, style: str = "oplog"
) -> dict[str, int]:
    """Writes `writes` (data row + entry) units through run_in_transaction; returns counts.

    `style` "oplog" writes the entry with Oplog.write (one statement, after the data);
    "ticket-first" reads the ticket first, as the Go original does, writes the data, then the
    entry with that ticket, so a concurrent writer makes the redeem conflict (optimistic mode).
    """
    log = oplog.Oplog(WRAPPER, CATALOG, lock=lock)  # type: ignore[arg-type]
    rng = random.Random(worker)
    retries = 0

    def count_retry(attempt: int, conflict: oplog.TicketConflictError) -> None:
        nonlocal retries
        retries += 1

    with psycopg.connect(dsn) as conn:
        for i in range(writes):
            name = f"w{worker}-{i}"
            aggregate = rng.choice(aggregates)

            def unit(
                c: psycopg.Connection[Any], name: str = name, aggregate: str = aggregate
            ) -> None:
                ticketer = log.ticketer(c)
                ticket = ticketer.get_ticket(aggregate) if style == "ticket-first" else None
                user = TestUser(name=name)
                writer = oplog.Writer(c, CATALOG)
                writer.create(user)
                op = oplog.Operation(user, "user", oplog.OpType.CREATE)
                if ticket is None:
                    log.write(c, aggregate, [op])
                else:
                    entry = oplog.Entry(aggregate, wrapper=WRAPPER, ticketer=ticketer)
                    entry.write_entry_with(writer, ticket, op)

            oplog.run_in_transaction(
                conn, unit, retries=1000, backoff=0.001, max_backoff=0.05, on_retry=count_retry
            )
    return {"writes": writes, "retries": retries}
