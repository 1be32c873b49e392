"""The batch engine (oplog/batch.py) through write_many, sync and asyncio: order, atomicity of
large batches, tickets redeemed once in name order."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import oplog
from oplog.proto.oplog_test_pb2 import TestUser
from tests.db import CATALOG, WRAPPER, batch_items, count, side_write
from tests.drivers import Connect, Driver, MakeDriver

_CREATE = oplog.Operation(TestUser(), "user", oplog.OpType.CREATE)


@pytest.mark.parametrize(
    ("n", "aggregates"),
    [(1, ["a"]), (2, ["a"]), (2, ["a", "b"]), (1000, ["a"]), (1000, [f"g{i}" for i in range(37)])],
)
def test_batches_read_back_in_input_order(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], n: int, aggregates: list[str]
) -> None:
    """Entries of a batch get ascending ids in input order and read back equal to the input;
    each aggregate's ticket is redeemed once per batch."""
    d = make_driver()
    items = batch_items(n, aggregates)
    ids = d.write_many(items)
    d.commit()
    assert ids == list(range(1, n + 1))
    entries = d.read()
    assert [e.id for e in entries] == ids
    for entry, (aggregate, ops, metadata) in zip(entries, items):
        assert entry.aggregate_name == aggregate
        assert entry.unmarshal_data(CATALOG) == ops
        assert entry.metadata == (metadata or {})
        assert entry.key_id == WRAPPER.key_id
    conn.commit()
    versions = dict(conn.execute("select name, version from oplog_ticket").fetchall())
    assert versions == {a: 2 for a in aggregates}
    d.write_many(items[:3])
    d.commit()
    conn.commit()
    assert conn.execute("select max(version) from oplog_ticket").fetchone() == (3,)


def test_an_empty_batch_writes_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any]
) -> None:
    """write_many of nothing returns [] and touches no ticket."""
    assert make_driver().write_many([]) == []
    assert count(conn, "oplog_ticket") == 0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([("a", [], None)], "needs an operation"),
        ([("", [_CREATE], None)], "aggregate"),
        ([("a",)], "expected"),
        ([("a", [oplog.Operation(TestUser(), "user", oplog.OpType.UPDATE)], None)], "UPDATE"),
        ([("a", [_CREATE], {"": ["x"]})], "metadata"),
        ([("a", [_CREATE], {"k": ["x\x00y"]})], "NUL"),
        ([("a", [_CREATE], {"k\x00": []})], "NUL"),
        ([("a\x00b", [_CREATE], None)], "NUL"),
    ],
)
def test_invalid_items_write_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], bad: Any, match: str
) -> None:
    """A bad item anywhere in the batch raises InvalidParameterError before any SQL runs."""
    d = make_driver()
    with pytest.raises(oplog.InvalidParameterError, match=match):
        d.write_many([*batch_items(3, ["a"]), *bad])
    d.commit()
    assert count(conn, "oplog_entry") == 0


def _bad_update(i: int) -> oplog.Operation:
    return oplog.Operation(TestUser(id=i), "user", oplog.OpType.UPDATE)  # no paths: invalid


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-transaction", "autocommit"])
@pytest.mark.parametrize("failure", ["client", "server"])
def test_a_large_batch_failing_late_leaves_nothing(
    make_driver: MakeDriver, conn: psycopg.Connection[Any], autocommit: bool, failure: str
) -> None:
    """A batch large enough to go in chunks fails after its first chunk was sent: on the client
    (an item that does not encode) or on the server (a row a constraint refuses). Nothing of it
    remains, and in a transaction what came before it is kept and the transaction goes on."""
    conn.execute("alter table oplog_metadata add constraint no_boom check (value <> 'boom')")
    conn.commit()
    d = make_driver()
    try:
        d.set_autocommit(autocommit)
        before = d.write_many(batch_items(2, ["a", "b"]))  # both tickets exist: the batch redeems
        items = batch_items(1000, ["a", "b"])
        if failure == "client":
            items[990] = ("a", [_bad_update(990)], None)
            error: type[Exception] = oplog.InvalidParameterError
        else:
            items[990] = ("a", items[990][1], {"n": ["boom"]})
            error = psycopg.errors.CheckViolation
        with pytest.raises(error):
            d.write_many(items)
        after = d.write_many(batch_items(3, ["b"]))
        d.commit()
        assert [e.id for e in d.read()] == before + after
        versions = dict(conn.execute("select name, version from oplog_ticket").fetchall())
        assert versions == {"a": 2, "b": 3}
    finally:
        d.rollback()  # the constraint goes when nothing holds the table
        conn.rollback()
        conn.execute("alter table oplog_metadata drop constraint no_boom")
        conn.commit()


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-transaction", "autocommit"])
def test_a_large_batch_redeems_only_its_own_tickets(
    make_driver: MakeDriver, autocommit: bool
) -> None:
    """Two chunked batches in one transaction, the second with an aggregate never seen: its
    first run finds a ticket missing and writes nothing (no chunk of it may ride on the first
    batch's redeem), then it creates the ticket and writes everything once."""
    d = make_driver()
    d.set_autocommit(autocommit)
    first = d.write_many(batch_items(600, ["a"]))
    second = d.write_many(batch_items(700, ["a", "new"]))
    d.commit()
    assert first + second == list(range(1, 1301))
    assert len(d.read()) == 1300


@pytest.mark.parametrize("autocommit", [False, True], ids=["in-transaction", "autocommit"])
def test_a_large_batch_inside_the_callers_pipeline(connect: Connect, autocommit: bool) -> None:
    """write_many of a chunked batch inside a pipeline the caller opened, between two of the
    caller's statements, writes the batch once."""
    c = connect(autocommit=autocommit)
    log = oplog.Oplog(WRAPPER, CATALOG)
    with c.pipeline():
        c.execute("select 1")
        ids = log.write_many(c, batch_items(600, ["a", "b"]))
        c.execute("select 2")
    c.commit()
    assert ids == list(range(1, 601))
    assert count(c, "oplog_entry") == 600


def test_a_conflict_on_one_aggregate_rolls_back_the_whole_batch(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """At REPEATABLE READ, a concurrent commit on one of the batch's tickets makes the batch
    raise TicketConflictError; after rollback nothing of it remains."""
    setup = connect(autocommit=True)
    oplog.Oplog(WRAPPER, CATALOG).write_many(setup, batch_items(3, ["a", "b", "c"]))
    d = make_driver(psycopg.IsolationLevel.REPEATABLE_READ)
    d.execute("select 1")  # the snapshot
    side_write(setup, "b")
    with pytest.raises(oplog.TicketConflictError):
        d.write_many(batch_items(10, ["a", "b", "c"]))
    d.rollback()
    assert count(setup, "oplog_entry") == 4
    versions = dict(setup.execute("select name, version from oplog_ticket").fetchall())
    assert versions == {"a": 2, "b": 3, "c": 2}


def test_concurrent_batches_in_opposite_orders_do_not_deadlock(
    make_driver: MakeDriver, connect: Connect
) -> None:
    """Two transactions writing batches over the same aggregates, listed in opposite orders,
    both finish: tickets are locked in name order."""
    names = [f"agg{i:02d}" for i in range(20)]
    setup = connect(autocommit=True)
    oplog.Oplog(WRAPPER, CATALOG).write_many(setup, batch_items(20, names))
    drivers = [make_driver(), make_driver()]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(d: Driver, order: list[str]) -> None:
        try:
            for _ in range(15):
                barrier.wait(timeout=30)
                d.run_in_transaction(batch_items(40, order), lambda attempt: None)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(d, o)) for d, o in zip(drivers, (names, names[::-1]))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert count(setup, "oplog_entry") == 20 + 2 * 15 * 40
    row = setup.execute("select min(version), max(version) from oplog_ticket").fetchone()
    assert row == (32, 32)
