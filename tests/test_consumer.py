"""Consumers (oplog/consumer.py; Oplog.consume): positions saved with what they apply, each
entry applied once, lag."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import oplog
from tests.db import CATALOG, WRAPPER, commit_entry, user_create
from tests.drivers import Connect, MakeDriver

LOG = oplog.Oplog(WRAPPER, CATALOG)


def _record(target: psycopg.Connection[Any], entry: oplog.Entry) -> None:
    for op in entry.unmarshal_data(CATALOG):
        target.execute(
            "insert into consumed values (%s, %s)",
            (entry.id, op.message.name),  # type: ignore[attr-defined]
        )


def test_a_consumer_position_is_saved_in_the_callers_transaction(
    conn: psycopg.Connection[Any],
) -> None:
    """A consumer's position is saved in the caller's transaction: rolled back with it,
    committed with it, and kept per consumer name."""
    consumer = oplog.Consumer("c1")
    assert consumer.position(conn) == oplog.Checkpoint.START
    checkpoint = oplog.Checkpoint("5:9:6")
    consumer.save(conn, checkpoint)
    conn.rollback()
    assert consumer.position(conn) == oplog.Checkpoint.START
    consumer.save(conn, str(checkpoint))
    conn.commit()
    assert consumer.position(conn) == checkpoint
    assert oplog.Consumer("other").position(conn) == oplog.Checkpoint.START
    with pytest.raises(oplog.InvalidParameterError):
        oplog.Consumer("")


def test_consume_applies_each_entry_once_across_runs(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], connect: Connect, consumed: str
) -> None:
    """consume applies each entry once, a page per transaction, and a later run continues where
    the last one stopped."""
    writer = connect()
    for i in range(5):
        commit_entry(writer, f"a{i % 2}", f"u{i}")
    driver = make_driver()
    committed: list[tuple[int, oplog.Checkpoint]] = []
    seen = lambda n, cp: committed.append((n, cp))  # noqa: E731
    assert driver.consume("c", follow=False, batch_size=2, on_commit=seen) == 5
    assert [n for n, _ in committed] == [2, 2, 1]
    assert oplog.Consumer("c").position(conn) == committed[-1][1]
    conn.rollback()
    assert driver.consume("c", follow=False) == 0
    for i in range(5, 8):
        commit_entry(writer, "a0", f"u{i}")
    assert driver.consume("c", follow=False) == 3
    rows = conn.execute("select name from consumed order by entry_id").fetchall()
    assert [r[0] for r in rows] == [f"u{i}" for i in range(8)]


def test_consume_waits_for_the_disk_unless_told_not_to(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], connect: Connect, consumed: str
) -> None:
    """A consumer's page commits as the session's setting says (synchronous_commit on), or
    with synchronous_commit=False without waiting for its WAL to reach the disk (SET LOCAL:
    the page's transaction only)."""
    conn.execute(
        "alter table consumed add column commit_mode text"
        " default current_setting('synchronous_commit')"
    )
    conn.commit()
    writer = connect()
    for i in range(3):
        commit_entry(writer, "a", f"u{i}")
    driver = make_driver()
    assert driver.consume("waits", follow=False, batch_size=2) == 3
    assert driver.consume("does-not", follow=False, batch_size=2, synchronous_commit=False) == 3
    assert driver.consume("waits-again", follow=False, batch_size=2) == 3
    modes = "select commit_mode, count(*) from consumed group by 1 order by 1"
    assert conn.execute(modes).fetchall() == [("off", 3), ("on", 6)]


def test_consume_needs_two_connections_and_an_idle_target(connect: Connect) -> None:
    """consume refuses one connection for both sides, and a target inside a transaction."""
    source, target = connect(), connect()
    with pytest.raises(oplog.InvalidParameterError, match="two connections"):
        LOG.consume(source, source, "c", _record, follow=False)
    target.execute("select 1")
    with pytest.raises(oplog.InvalidParameterError, match="inside a transaction"):
        LOG.consume(source, target, "c", _record, follow=False)


def test_consume_rolls_back_a_page_whose_apply_fails(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], connect: Connect, consumed: str
) -> None:
    """A page whose apply fails is rolled back with its position; the next run applies it."""
    writer = connect()
    for i in range(3):
        commit_entry(writer, "a", f"u{i}")
    driver = make_driver()
    with pytest.raises(RuntimeError, match="apply failed"):
        driver.consume("c", fail_on="u1", follow=False, batch_size=2)
    assert [r[0] for r in conn.execute("select name from consumed").fetchall()] == []
    assert driver.consume("c", follow=False) == 3
    assert conn.execute("select count(*) from consumed").fetchone() == (3,)


def test_two_processes_of_one_consumer_apply_each_entry_once(
    conn: psycopg.Connection[Any], connect: Connect, consumed: str
) -> None:
    """Two runners of consumer "c" at once: the position lock makes them take turns, and one
    that finds the position moved continues from there."""
    writer = connect()
    for i in range(300):
        LOG.write(writer, f"a{i % 5}", [user_create(f"u{i}")])
        if i % 10 == 9:
            writer.commit()
    writer.commit()
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(LOG.consume, connect(), connect(), "c", _record, follow=False, batch_size=7)
            for _ in range(2)
        ]
        applied = [run.result() for run in runs]
    assert sum(applied) == 300
    assert conn.execute("select count(*), count(distinct entry_id) from consumed").fetchone() == (
        300,
        300,
    )


def test_consumer_lag_counts_committed_entries_not_yet_applied(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], connect: Connect
) -> None:
    """Consumer.lag: how many committed entries lie after the consumer's position (also one
    inside a poll) and how old the oldest is; entries of open transactions do not count."""
    writer = connect()
    for i in range(5):
        commit_entry(writer, f"a{i % 2}", f"u{i}")
    open_writer = connect()
    LOG.write(open_writer, "a0", [user_create("uncommitted")])
    driver = make_driver()
    driver.set_autocommit(True)
    items = driver.tail(follow=False, batch_size=2)
    consumer = oplog.Consumer("c")
    fresh = driver.lag("c")
    assert fresh.entries == 5
    assert fresh.oldest is not None
    assert fresh.age is not None
    assert fresh.age.total_seconds() >= 0
    for done, (_, checkpoint) in enumerate(items, start=1):
        consumer.save(conn, checkpoint)
        conn.commit()
        lag = driver.lag("c")
        assert lag.entries == 5 - done, (done, str(checkpoint))
    assert driver.lag("c").oldest is None
    assert driver.lag("c").age is None
    open_writer.commit()
    assert driver.lag("c").entries == 1
