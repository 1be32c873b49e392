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


def _run(dsn: str, aggregates: list[str], lock: str) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(
            workers.write_many,
            [(dsn, worker, WRITES, aggregates, lock) for worker in range(PROCESSES)],
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("aggregates", "lock"),
    [
        (["hot"], "optimistic"),
        (["hot"], "pessimistic"),
        ([f"agg{i}" for i in range(64)], "optimistic"),
        ([f"agg{i}" for i in range(64)], "pessimistic"),
    ],
    ids=["hot-optimistic", "hot-pessimistic", "64-optimistic", "64-pessimistic"],
)
def test_concurrent_writers_lose_and_duplicate_nothing(
    dsn: str, conn: psycopg.Connection[Any], aggregates: list[str], lock: str
) -> None:
    """8 processes x 500 writes: count(data) = count(entries) = sum(version - 1), every write
    logged once; pessimistic locking needs no retries."""
    conn.autocommit = True
    for name in aggregates:
        oplog.Ticketer(conn).init_ticket(name)
    stats = _run(dsn, aggregates, lock)
    print(
        f"\n{lock} over {len(aggregates)} aggregate(s): {stats['writes']:.0f} writes in "
        f"{stats['seconds']:.1f} s ({stats['writes'] / stats['seconds']:.0f}/s), "
        f"{stats['retries']:.0f} retries"
    )
    _check_log(conn, PROCESSES * WRITES)
    if lock == "pessimistic":
        assert stats["retries"] == 0
