"""Many processes writing at once: nothing lost, nothing duplicated, tickets account for all."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import psycopg
import pytest

import oplog
from tests import workers
from tests.db import CATALOG, WRAPPER, count

PROCESSES = 8
WRITES = 500


def _run(dsn: str, aggregates: list[str], lock: str, style: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            workers.write_many,
            [(dsn, worker, WRITES, aggregates, lock, style) for worker in range(PROCESSES)],
        )
    elapsed = time.perf_counter() - start
    return {
        "writes": sum(r["writes"] for r in results),
        "retries": sum(r["retries"] for r in results),
        "seconds": elapsed,
    }


def _check_log(conn: psycopg.Connection[Any], expected: int) -> None:
    data = [r[0] for r in conn.execute("select name from users").fetchall()]
    assert len(data) == expected, "lost data rows"
    assert len(set(data)) == expected, "duplicated data rows"
    assert count(conn, "oplog_entry") == expected
    row = conn.execute("select coalesce(sum(version - 1), 0) from oplog_ticket").fetchone()
    assert row == (expected,), "ticket versions do not account for every entry"
    logged = [
        op.message.name  # type: ignore[attr-defined]
        for entry in oplog.Oplog(WRAPPER, CATALOG).read(conn)
        for op in entry.unmarshal_data(CATALOG)
    ]
    assert sorted(logged) == sorted(data), "the log and the data disagree"
    report = oplog.Oplog(WRAPPER, CATALOG).verify(conn)
    assert report.problems == [], "the chains are not whole"
    conn.rollback()


HOT = ["hot"]
SPREAD = [f"agg{i}" for i in range(64)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("aggregates", "lock", "style"),
    [
        (HOT, "optimistic", "ticket-first"),
        (HOT, "pessimistic", "ticket-first"),
        (HOT, "optimistic", "oplog"),
        (SPREAD, "optimistic", "ticket-first"),
        (SPREAD, "optimistic", "oplog"),
    ],
    ids=[
        "hot-optimistic-ticket-first",
        "hot-pessimistic-ticket-first",
        "hot-oplog-write",
        "64-optimistic-ticket-first",
        "64-oplog-write",
    ],
)
def test_concurrent_writers_lose_and_duplicate_nothing(
    dsn: str, conn: psycopg.Connection[Any], aggregates: list[str], lock: str, style: str
) -> None:
    """8 processes x 500 writes: count(data) = count(entries) = sum(version - 1), every write
    logged once; pessimistic tickets and the one-statement Oplog.write need no retries."""
    conn.autocommit = True
    for name in aggregates:
        oplog.Ticketer(conn).init_ticket(name)
    stats = _run(dsn, aggregates, lock, style)
    print(
        f"\n{style} {lock} over {len(aggregates)} aggregate(s): {stats['writes']:.0f} writes in "
        f"{stats['seconds']:.1f} s ({stats['writes'] / stats['seconds']:.0f}/s), "
        f"{stats['retries']:.0f} retries"
    )
    _check_log(conn, PROCESSES * WRITES)
    if lock == "pessimistic" or style == "oplog":
        assert stats["retries"] == 0


def test_concurrent_batches_creating_tickets_never_deadlock(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """8 processes x 60 batches over overlapping aggregates whose tickets do not exist yet:
    every batch is written and none meets a deadlock (each cost deadlock_timeout)."""
    conn.autocommit = True
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            workers.batches_with_new_tickets, [(dsn, w, 60, 3) for w in range(PROCESSES)]
        )
    assert sum(r["written"] for r in results) == PROCESSES * 60
    assert [r["deadlocks"] for r in results] == [0] * PROCESSES
    assert count(conn, "oplog_entry") == PROCESSES * 60 * 16
    row = conn.execute("select coalesce(sum(version - 1), 0) from oplog_ticket").fetchone()
    assert row is not None
    assert row[0] == sum(r["redeems"] for r in results)  # one redeem per ticket per batch
